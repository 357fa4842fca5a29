"""Needle in a Video Haystack: grids, insertion points, overlays at exactly the expected times, the haystack, the
file cache (the same frames as in memory), the runner (scoring modes, resume, two processes), the heatmap, the
judge's `[[rating]]` parsing against a local stub server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import VIDEOS, run_launched

from videollamb_hf.evaluation.niavh import (
    DEFAULT_NEEDLE_DESCRIPTION,
    Haystack,
    Needle,
    compose,
    compose_to_file,
    composed_times,
    composition_key,
    depth_grid,
    insertion_point,
    judge,
    parse_rating,
    sample_indices,
    text_font_size,
)


def test_grids_and_insertion_points_are_the_originals():
    assert length_grid_default() == np.round(np.linspace(1, 320, 40)).astype(int).tolist()
    assert depth_grid() == [0, 9, 18, 27, 36, 45, 55, 64, 73, 82, 91, 100]
    # The original logistic as written, 100 / (1 + exp(0.1 (x - 50))), between the fixed ends: it decreases.
    sigmoid = depth_grid(num=5, spacing="sigmoid")
    assert (
        sigmoid[0] == 0 and sigmoid[-1] == 100 and sigmoid[2] == 50.0 and sigmoid[1] == pytest.approx(92.414, abs=1e-3)
    )
    assert [insertion_point(300, d) for d in (0, 9, 55, 100)] == [0, 27, 165, 300]
    assert insertion_point(1, 55) == 0 and insertion_point(33, 45) == 14
    with pytest.raises(ValueError, match="linear"):
        depth_grid(spacing="log")


def length_grid_default():
    from videollamb_hf.evaluation.niavh import length_grid

    return length_grid()


@pytest.fixture(scope="module")
def haystack():
    return Haystack([VIDEOS / "sample_demo_1.mp4", VIDEOS / "dance.mp4"])


def test_haystack_concatenates_and_repeats(haystack):
    first = haystack.durations[0]
    assert haystack.locate(0.0) == (0, 0)
    assert haystack.locate(first + 0.01)[0] == 1
    assert haystack.locate(haystack.period + 0.01) == haystack.locate(0.01)  # repeated
    frames = haystack.frames_at([0.0, first + 0.5, haystack.period * 3 + 0.2])
    assert frames.shape[1:] == (haystack.size[1], haystack.size[0], 3)


@pytest.mark.parametrize("modality", ["text", "image", "video"])
def test_needle_appears_exactly_at_the_insertion_time(haystack, modality):
    content = {"text": "THE NEEDLE IS A BOOK", "image": str(VIDEOS / "readingsky.png"),
               "video": str(VIDEOS / "readingsky.mp4")}[modality]  # fmt: skip
    needle = Needle(modality, content)
    length, depth = 12, 50
    start = insertion_point(length, depth)  # 6 s
    times = composed_times(length)
    composed = compose(haystack, needle, length, depth)
    plain = haystack.frames_at(times.tolist())
    assert composed.shape == plain.shape == (length * 5, plain.shape[1], plain.shape[2], 3)
    changed = [bool((composed[k] != plain[k]).any()) for k in range(len(times))]
    inside = [start <= t < start + needle.duration for t in times]
    assert changed == inside  # overlaid at the expected frames and nowhere else
    k = int(np.argmax(inside))
    diff = (composed[k] != plain[k]).any(-1)
    rows, cols = np.nonzero(diff)
    height, width = diff.shape
    if modality == "text":
        assert rows.min() > height * 0.6  # subtitles at the bottom
        assert abs((cols.min() + cols.max()) / 2 - width / 2) < width * 0.1  # centred
        assert (composed[k][diff] >= 200).all(-1).mean() > 0.5  # white text
    else:
        assert (
            abs((rows.min() + rows.max()) / 2 - height / 2) <= 2
            and abs((cols.min() + cols.max()) / 2 - width / 2) <= 2
        )
    # Sampling only some frames (what a model sees) gives the very same frames as composing everything.
    indices = [0, k, len(times) - 1]
    assert np.array_equal(compose(haystack, needle, length, depth, indices=indices), composed[indices])


def test_text_font_size_rule():
    assert text_font_size("x", 1000) == 70  # clamped up
    assert text_font_size("a very long needle sentence " * 8, 64) == 10  # clamped down
    size = text_font_size(DEFAULT_NEEDLE_DESCRIPTION, 640)
    assert 10 <= size <= 70
    with pytest.raises(ValueError, match="modality"):
        Needle("audio", "x")


class _Judge(BaseHTTPRequestHandler):
    replies = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.requests.append((self.path, self.headers.get("Authorization"), body))
        reply = _Judge.replies.pop(0)
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_judge_client_parses_ratings_from_a_local_stub_server():
    _Judge.requests, _Judge.replies = [], ["The answer matches. Rating: [[7]]", "I cannot rate this."]
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        first = judge("What is he doing?", "reading a book", DEFAULT_NEEDLE_DESCRIPTION, url, "judge-model", "key")
        second = judge("What is he doing?", "dancing", DEFAULT_NEEDLE_DESCRIPTION, url, "judge-model")
    finally:
        server.shutdown()
    assert first == {"score": 7.0, "reply": "The answer matches. Rating: [[7]]"}
    assert second["score"] is None  # unparseable, reported as such
    path, auth, body = _Judge.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer key" and body["model"] == "judge-model"
    assert body["temperature"] == 0 and DEFAULT_NEEDLE_DESCRIPTION in body["messages"][0]["content"]
    assert "[[rating]]" in body["messages"][0]["content"]
    assert parse_rating("Rating: [[ 10 ]]") == 10.0 and parse_rating("[[0]]") is None and parse_rating("") is None


def test_a_three_by_three_grid_runs_resumes_and_draws_a_heatmap(haystack, tmp_path):
    from PIL import Image
    from transformers import pipeline

    import videollamb_hf  # noqa: F401
    from videollamb_hf.evaluation.niavh import heatmap, multiple_choice, run_grid, sample_indices
    from videollamb_hf.testing_utils import save_tiny_repo

    pipe = pipeline("video-text-to-text", model=save_tiny_repo(tmp_path / "model"))
    needle = Needle("image", str(VIDEOS / "readingsky.png"))
    lengths, depths = [4, 8, 12], [0, 50, 100]
    out = tmp_path / "cells.jsonl"
    run_grid(pipe, haystack, needle, lengths, depths, out, max_new_tokens=3, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["length"], r["depth"]) for r in records] == [(l, float(d)) for l in lengths for d in depths]  # noqa: E741
    for r in records:
        assert r["frames"] == len(sample_indices(r["length"], pipe.processor.video_processor)) == 16
        assert r["insertion_s"] == insertion_point(r["length"], r["depth"])
        assert r["score"] in (0.0, 1.0) and r["gold"] in "ABCD" and DEFAULT_NEEDLE_DESCRIPTION in r["options"]
        assert r["score"] == float(r["letter"] == r["gold"])
    # Seeded option order: the same cell gets the same order.
    assert multiple_choice(DEFAULT_NEEDLE_DESCRIPTION, 5) == multiple_choice(DEFAULT_NEEDLE_DESCRIPTION, 5)
    # Interrupted after 4 cells (the 5th cut mid-line): resuming redoes only what is missing.
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])
    run_grid(pipe, haystack, needle, lengths, depths, out, resume=True, max_new_tokens=3, progress=False)
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(resumed) == strip(records)
    summary = heatmap(resumed, tmp_path / "heatmap.png", tmp_path / "heatmap.pdf")
    assert summary["cells"] == 9 and summary["mean"] == pytest.approx(np.mean([r["score"] for r in records]))
    image = np.asarray(Image.open(tmp_path / "heatmap.png").convert("RGB"))
    assert image.shape[0] >= 300 and image.shape[1] >= 500
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # not blank
    assert (tmp_path / "heatmap.pdf").stat().st_size > 1000
    with pytest.raises(ValueError, match="text needles only"):
        run_grid(pipe, haystack, needle, [4], [0], tmp_path / "x.jsonl", scoring="recall")


def test_text_needles_score_by_exact_recall(haystack, tmp_path):
    from transformers import pipeline

    import videollamb_hf  # noqa: F401
    from videollamb_hf.evaluation.niavh import run_grid
    from videollamb_hf.testing_utils import save_tiny_repo

    pipe = pipeline("video-text-to-text", model=save_tiny_repo(tmp_path / "model"))
    needle = Needle("text", "the secret word is pepper")
    out = run_grid(pipe, haystack, needle, [4, 8], [50], tmp_path / "text.jsonl", scoring="recall",
                   question="What is the secret word?", max_new_tokens=3, progress=False)  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["score"] == float("the secret word is pepper" in r["answer"].lower())
        assert r["question"] == "What is the secret word?" and r["modality"] == "text"


def test_the_command_line_writes_cells_heatmap_and_summary(tmp_path):
    import os
    import subprocess
    import sys

    from videollamb_hf.testing_utils import save_tiny_repo

    repo = save_tiny_repo(tmp_path / "model")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "videollamb_hf", "niavh", "--model", repo, "--haystack",
               str(VIDEOS / "sample_demo_1.mp4"), "--needle", str(VIDEOS / "readingsky.png"), "--lengths", "4 8",
               "--depths", "0,100,3", "--output-dir", str(out), "--quiet", "--max-new-tokens", "2"]  # fmt: skip
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    assert run.returncode == 0, run.stderr[-2000:]
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert sorted({(c["length"], c["depth"]) for c in cells}) == [(l, d) for l in (4, 8) for d in (0.0, 50.0, 100.0)]  # noqa: E741
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"] == 6 and summary["mean"] == pytest.approx(np.mean([c["score"] for c in cells]))
    assert (out / "heatmap.png").exists() and "mean score" in (out / "summary.md").read_text()
    # Data-parallel: two processes share the cells and give the same records, merged in grid order.
    root = Path(__file__).resolve().parents[1]
    two = run_launched([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                        str(root / "examples" / "accelerate" / "cpu_ddp_2proc.yaml"), "-m",
                        "videollamb_hf.evaluation.niavh", *command[4:-5], "--output-dir", str(tmp_path / "two"),
                        "--quiet", "--max-new-tokens", "2"], env=dict(os.environ, HF_HUB_OFFLINE="1"))  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    merged = [json.loads(line) for line in (tmp_path / "two" / "cells.jsonl").read_text().splitlines()]
    assert strip(merged) == strip(cells)
    shards = [len((tmp_path / "two" / f"cells.rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert shards == [3, 3]
    bad = subprocess.run(command[:-7] + ["--scoring", "judge", "--output-dir", str(tmp_path / "j")],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "--judge-url" in bad.stderr


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from transformers import pipeline

    import videollamb_hf  # noqa: F401
    from videollamb_hf.testing_utils import save_tiny_repo

    return pipeline("video-text-to-text", model=save_tiny_repo(tmp_path_factory.mktemp("niavh-model")))


def test_the_file_cache_holds_exactly_the_composed_frames(haystack, tiny_pipe, tmp_path):
    import os

    from videollamb_hf.video_decoding import VideoReader

    video_processor = tiny_pipe.processor.video_processor
    for needle, length, depth in [(Needle("image", str(VIDEOS / "readingsky.png")), 12, 50),
                                  (Needle("text", "the secret word is pepper"), 9, 100)]:  # fmt: skip
        path = compose_to_file(haystack, needle, length, depth, tmp_path / "cache", chunk_frames=7)
        with VideoReader(path) as reader:
            assert reader.index.num_frames == len(composed_times(length)) and reader.index.fps == pytest.approx(5)
            decoded = reader.get_frames(list(range(reader.index.num_frames)))
        assert np.array_equal(decoded, compose(haystack, needle, length, depth))  # lossless, every frame
        # What the processor samples from the file (1 fps) is what the in-memory route composes.
        indices = sample_indices(length, video_processor, fps=1)
        from_file = video_processor(videos=[str(path)], fps=1, max_frames=512, return_metadata=True,
                                    return_tensors="pt")  # fmt: skip
        assert from_file["video_metadata"][0].frames_indices == indices.tolist()
        in_memory = video_processor(videos=[compose(haystack, needle, length, depth, indices=indices)],
                                    num_frames=len(indices), return_tensors="pt")  # fmt: skip
        assert torch_equal(from_file["pixel_values_videos"], in_memory["pixel_values_videos"])
        # Written once: a second call returns the same file untouched; the key follows every input.
        stamp = os.stat(path).st_mtime_ns
        assert compose_to_file(haystack, needle, length, depth, tmp_path / "cache") == path
        assert os.stat(path).st_mtime_ns == stamp
        assert composition_key(haystack, needle, length, depth) != composition_key(haystack, needle, length, 0)
        assert composition_key(haystack, needle, length, depth) != composition_key(
            haystack, Needle(needle.modality, needle.content + "!") if needle.modality == "text" else
            Needle("video", str(VIDEOS / "readingsky.mp4")), length, depth)  # fmt: skip
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".mkv", ".mkv"]  # no partial files left


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and torch.equal(a, b)


def test_file_and_memory_routes_and_likelihood_scoring_agree(haystack, tiny_pipe, tmp_path):
    from videollamb_hf.evaluation.niavh import run_grid

    needle = Needle("image", str(VIDEOS / "readingsky.png"))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    runs = {}
    for scoring in ("multiple_choice", "likelihood"):
        for via in ("memory", "file"):
            out = run_grid(tiny_pipe, haystack, needle, [9, 17], [50], tmp_path / f"{scoring}-{via}.jsonl",
                           scoring=scoring, compose_via=via, cache_dir=tmp_path / "cache", fps=1, max_new_tokens=3,
                           progress=False)  # fmt: skip
            runs[scoring, via] = [json.loads(line) for line in out.read_text().splitlines()]
        assert strip(runs[scoring, "file"]) == strip(runs[scoring, "memory"])  # the same frames, the same answers
    assert [r["frames"] for r in runs["likelihood", "memory"]] == [8, 16]  # 1 fps, the fps rule (multiple of 8)
    for r in runs["likelihood", "memory"]:
        scores = r["letter_scores"]
        assert len(scores) == 4 and all(s <= 0 for s in scores) and r["answer"] is None
        assert r["letter"] == "ABCD"[int(np.argmax(scores))] and r["score"] == float(r["letter"] == r["gold"])
    with pytest.raises(ValueError, match="cache_dir"):
        run_grid(tiny_pipe, haystack, needle, [4], [0], tmp_path / "x.jsonl", compose_via="file")
    with pytest.raises(ValueError, match="scoring"):
        run_grid(tiny_pipe, haystack, needle, [4], [0], tmp_path / "x.jsonl", scoring="bleu")


def test_the_papers_niavh_model_runs_the_grid_at_one_frame_per_second(haystack, tmp_path, monkeypatch):
    """VideoLLaMB_Mem (the model the authors evaluate here), from a tiny checkpoint in their layout: its processor
    samples 1 fps without rounding to a multiple of 8, and both composition routes give it the same frames."""
    from transformers import pipeline

    from videollamb_hf.evaluation.niavh import run_grid
    from videollamb_hf.testing_utils import save_tiny_original_repo

    mem = save_tiny_original_repo(tmp_path / "mem", variant="mem")
    monkeypatch.chdir(mem["root"])  # the checkpoint names its towers by relative paths, as the authors ran it
    pipe = pipeline("video-text-to-text", model=mem["repo"])
    assert pipe.processor.video_processor.fps == 1 and pipe.processor.video_processor.temporal_group_size == 1
    needle = Needle("image", str(VIDEOS / "readingsky.png"))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    runs = []
    for via in ("memory", "file"):
        out = run_grid(pipe, haystack, needle, [5, 11], [50], tmp_path / f"mem-{via}.jsonl", compose_via=via,
                       cache_dir=tmp_path / "cache", max_new_tokens=2, progress=False)  # fmt: skip
        runs.append([json.loads(line) for line in out.read_text().splitlines()])
    assert [r["frames"] for r in runs[0]] == [5, 11]  # one per second, as the original's NIAVH runner feeds it
    assert strip(runs[0]) == strip(runs[1])


def _bad_needles(tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((VIDEOS / "readingsky.mp4").read_bytes()[:300])
    return [
        ("image", str(tmp_path / "missing.png"), FileNotFoundError, "not found"),
        ("image", str(not_an_image), ValueError, "cannot be read as an image"),
        ("image", str(VIDEOS / "readingsky.mp4"), ValueError, "cannot be read as an image"),  # wrong kind
        ("video", str(VIDEOS / "readingsky.png"), ValueError, "cannot be decoded as a video"),  # wrong kind
        ("video", str(truncated), ValueError, "cannot be decoded as a video"),
        ("video", str(tmp_path / "missing.mp4"), FileNotFoundError, "not found"),
    ]


def test_a_bad_needle_is_a_clear_error_at_construction(tmp_path):
    for modality, content, error, message in _bad_needles(tmp_path):
        with pytest.raises(error, match=message) as raised:
            Needle(modality, content)
        assert content in str(raised.value)
    for text in ("", "   \n"):
        with pytest.raises(ValueError, match="text needle is empty"):
            Needle("text", text)
    # Good ones are checked up front too: the image is already read, the video already opened.
    assert Needle("image", str(VIDEOS / "readingsky.png"))._image.ndim == 3
    assert Needle("video", str(VIDEOS / "readingsky.mp4")).duration > 0


def test_the_command_line_checks_the_needle_before_loading_the_model(tmp_path):
    import os
    import subprocess
    import sys

    # The model named does not exist: were it loaded first, the error would be about it.
    for modality, content, _, message in _bad_needles(tmp_path)[:4]:
        out = tmp_path / f"run-{modality}-{Path(content).name}"
        run = subprocess.run(
            [sys.executable, "-m", "videollamb_hf", "niavh", "--model", str(tmp_path / "no-such-model"),
             "--haystack", str(VIDEOS / "sample_demo_1.mp4"), "--needle-modality", modality, "--needle", content,
             "--output-dir", str(out), "--quiet"],
            capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )  # fmt: skip
        assert run.returncode == 2, run.stderr[-2000:]
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("videollamb-hf niavh: error:"), run.stderr[-2000:]
        assert content in lines[0] and message in lines[0]
        assert "Traceback" not in run.stderr and not out.exists()
