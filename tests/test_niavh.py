"""Needle in a Video Haystack, the protocol's pieces: grids, insertion points, overlays at exactly the expected
times, the haystack, the judge's `[[rating]]` parsing against a local stub server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from conftest import VIDEOS

from videollamb_hf.evaluation.niavh import (
    DEFAULT_NEEDLE_DESCRIPTION,
    Haystack,
    Needle,
    compose,
    composed_times,
    depth_grid,
    insertion_point,
    judge,
    parse_rating,
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
