"""The `videollamb-hf` command line, end to end in subprocesses, offline, on a tiny random model folder."""

import json
import os
import subprocess
import sys

import pytest
from conftest import VIDEOS


VIDEO = str(VIDEOS / "sample_demo_1.mp4")
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def cli(*args, stdin=None, cwd=None, module="videollamb_hf"):
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "tiny"
    run = cli("make-tiny", str(folder))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(folder) and "RANDOM weights" in run.stderr
    return str(folder)


def test_describe_prints_an_answer_and_json(tiny):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run = cli("describe", VIDEO, "--model", tiny, "--max-new-tokens", "5", "--prompt", "What happens?")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "random weights" in run.stderr  # labelled as noise
    # The same answer as the pipeline of the same folder (greedy).
    from transformers import pipeline

    import videollamb_hf  # noqa: F401

    pipe = pipeline("video-text-to-text", model=AutoModelForImageTextToText.from_pretrained(tiny),
                    processor=AutoProcessor.from_pretrained(tiny))  # fmt: skip
    expected = pipe(VIDEO, "What happens?", max_new_tokens=5, return_full_text=False)[0]["generated_text"]
    assert run.stdout.strip() == expected
    run = cli("describe", VIDEO, "--model", tiny, "--max-new-tokens", "5", "--json", "--quiet", "--num-frames", "8")
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["random_weights"] is True and report["frames_sampled"] == 8
    assert report["scenes"][-1]["frames"][1] == 7 and report["scenes"][0]["start_s"] == 0.0
    assert set(report["timing_s"]) == {"load", "encode", "generate", "total"} and run.stderr == ""
    # Encoded in chunks of frames (as above 256 sampled frames by default): the same answer, frames and scenes.
    chunked = cli("describe", VIDEO, "--model", tiny, "--max-new-tokens", "5", "--json", "--quiet", "--num-frames",
                  "40", "--chunked-above", "8")  # fmt: skip
    whole = cli("describe", VIDEO, "--model", tiny, "--max-new-tokens", "5", "--json", "--quiet", "--num-frames", "40")
    assert chunked.returncode == whole.returncode == 0, chunked.stderr[-2000:]
    chunked, whole = json.loads(chunked.stdout), json.loads(whole.stdout)
    for key in ("answer", "frames_sampled", "frame_timestamps_s", "scenes"):
        assert chunked[key] == whole[key], key


def test_chat_keeps_history_and_reads_commands_from_stdin(tiny):
    run = cli(
        "chat",
        VIDEO,
        "--model",
        tiny,
        "--max-new-tokens",
        "3",
        stdin="What happens?\nAnd then?\n/reset\nHi\n/quit\nignored\n",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    answers = [line for line in run.stdout.splitlines() if line.startswith("videollamb> ")]
    assert len(answers) == 3  # three questions before /quit; the line after /quit is not read
    assert "[conversation reset]" in run.stderr
    assert "1 scenes" in run.stderr or "scenes" in run.stderr
    # EOF ends too.
    assert cli("chat", VIDEO, "--model", tiny, "--max-new-tokens", "2", stdin="").returncode == 0


def test_stream_prints_timestamped_lines_and_json_lines(tiny):
    run = cli("stream", VIDEO, "--model", tiny, "--fps", "4", "--max-new-tokens", "2", "--ask", "3:What is there?",
              "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert any("Q: What is there?" in line for line in lines)
    assert any(" scene " in line and line.startswith("[") for line in lines)
    run = cli("stream", VIDEO, "--model", tiny, "--fps", "4", "--max-new-tokens", "2", "--json", "--quiet")
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events and all(e["kind"] == "caption" for e in events)
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
    assert events[-1]["frames"][1] == 38  # 9.7 s at 4 fps: frames 0..38
    run = cli("stream", VIDEO, "--model", tiny, "--ask", "soon:what?")
    assert run.returncode == 2 and "TIME:QUESTION" in run.stderr


def test_offline_model_error_is_one_line_and_says_what_to_do(tmp_path):
    run = cli("describe", VIDEO, "--max-new-tokens", "2")  # the default hub model, offline
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "ColorfulAI/VideoLLaMB" in run.stderr and "--model" in run.stderr and "make-tiny" in run.stderr
    run = cli("describe", str(tmp_path / "missing.mp4"), "--model", str(tmp_path / "nowhere"))
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_missing_video_and_help(tiny, tmp_path):
    run = cli("describe", str(tmp_path / "missing.mp4"), "--model", tiny, "--quiet")
    assert run.returncode == 2 and "No such video file" in run.stderr and "Traceback" not in run.stderr
    run = cli("--help")
    assert run.returncode == 0
    for command in ("describe", "chat", "stream", "demo", "convert", "make-tiny"):
        assert command in run.stdout
    run = cli("demo", "--help")
    assert run.returncode == 0 and "loopback" in run.stdout


def test_chat_turns_reuse_the_cache_and_answer_as_a_fresh_prompt_does(tiny):
    import types

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from videollamb_hf.chat import ChatSession, prompt_ids
    from videollamb_hf.cli import answer_from_features, encode_video, generation_kwargs

    model = AutoModelForImageTextToText.from_pretrained(tiny).eval()
    processor = AutoProcessor.from_pretrained(tiny)
    args = types.SimpleNamespace(quiet=True, num_frames=None, fps=None, sampling=None, max_new_tokens=8,
                                 temperature=0.0, seed=0)  # fmt: skip
    features, _ = encode_video(model, processor, VIDEO, args)
    session = ChatSession(model, processor, features)
    seen = []  # tokens the language model runs at each call's prefill (the first forward of each generate)
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True
    )
    history = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    try:
        for question in ("And then?", "Who is there?", None):
            seen.clear()
            answer = session.ask(history, generation_kwargs(args))
            prefill = seen[0]
            with torch.no_grad():
                assert answer == answer_from_features(model, processor, features, history, args)  # a fresh prompt
            full = len(prompt_ids(processor, history))  # the whole conversation with its visual slots
            if len(history) == 1:
                assert session.reused == 0 and prefill == full
            else:  # only what follows the shared prefix (which holds the video's slots) is run again
                assert session.reused > model.config.video_seq_length and prefill == full - session.reused
            if question:
                history += [{"role": "assistant", "content": answer},
                            {"role": "user", "content": [{"type": "text", "text": question}]}]  # fmt: skip
    finally:
        hook.remove()
    session.reset()
    assert session.ask(history[:1], generation_kwargs(args)) and session.reused == 0
