"""pipeline("video-text-to-text"): the documented inputs and outputs, equal to calling `generate` directly."""

import os
import subprocess
import sys

import pytest
from conftest import VIDEOS
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

import videollamb_hf  # noqa: F401  (registers the task)
from videollamb_hf import VideoTextToTextPipeline
from videollamb_hf.testing_utils import save_tiny_repo


VIDEO = str(VIDEOS / "sample_demo_1.mp4")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return save_tiny_repo(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def pipe(repo):
    return pipeline("video-text-to-text", model=repo)


def _direct(repo, chat, max_new_tokens, **processor_kwargs):
    processor = AutoProcessor.from_pretrained(repo)
    model = AutoModelForImageTextToText.from_pretrained(repo)
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", processor_kwargs=processor_kwargs)  # fmt: skip
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _chat(video, text):
    return [{"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": text}]}]


def test_pipeline_on_a_path_equals_generate(pipe, repo):
    assert isinstance(pipe, VideoTextToTextPipeline)
    result = pipe(VIDEO, "What happens in the video?", max_new_tokens=6)
    expected = _direct(repo, _chat(VIDEO, "What happens in the video?"), 6)
    assert result == [{"input_text": "What happens in the video?",
                       "generated_text": f"What happens in the video? {expected}".rstrip()}]  # fmt: skip
    answer = pipe(VIDEO, "What happens in the video?", max_new_tokens=6, return_full_text=False)
    assert answer == [{"input_text": "What happens in the video?", "generated_text": expected}]


def test_pipeline_on_chat_messages(pipe, repo):
    chat = _chat(VIDEO, "Describe it.")
    result = pipe(chat, max_new_tokens=5, processor_kwargs={"num_frames": 8})
    expected = _direct(repo, chat, 5, num_frames=8)
    assert result[0]["input_text"] == chat
    assert result[0]["generated_text"] == chat + [{"role": "assistant", "content": expected}]
    assert (
        pipe(chat, max_new_tokens=5, processor_kwargs={"num_frames": 8}, return_full_text=False)[0]["generated_text"]
        == expected
    )


def test_pipeline_batches_and_generation_options(pipe, repo):
    videos = [VIDEO, str(VIDEOS / "dance.mp4")]
    questions = ["What happens?", "Who dances?"]
    results = pipe(videos, questions, max_new_tokens=4, return_full_text=False)
    assert len(results) == 2
    for result, video, question in zip(results, videos, questions):
        assert result == [{"input_text": question, "generated_text": _direct(repo, _chat(video, question), 4)}]
    chats = [_chat(v, q) for v, q in zip(videos, questions)]
    assert [r[0]["generated_text"] for r in pipe(chats, max_new_tokens=4, return_full_text=False)] == [
        r[0]["generated_text"] for r in results
    ]
    # Sampling with a seed is repeatable; greedy is the default.
    a = pipe(VIDEO, "What?", max_new_tokens=6, do_sample=True, temperature=1.5, seed=3, return_full_text=False)
    b = pipe(VIDEO, "What?", max_new_tokens=6, do_sample=True, temperature=1.5, seed=3, return_full_text=False)
    assert a == b
    assert pipe(VIDEO, "What?", generate_kwargs={"max_new_tokens": 6}, return_full_text=False) == pipe(
        VIDEO, "What?", max_new_tokens=6, return_full_text=False
    )


def test_pipeline_processor_kwargs_reach_the_processor(pipe, repo):
    fps = pipe(VIDEO, "What?", max_new_tokens=3, processor_kwargs={"fps": 2}, return_full_text=False)
    assert fps[0]["generated_text"] == _direct(repo, _chat(VIDEO, "What?"), 3, fps=2)


def test_pipeline_errors_are_clear(pipe):
    with pytest.raises(ValueError, match="question"):
        pipe(VIDEO)
    with pytest.raises(ValueError, match="as many videos as texts"):
        pipe([VIDEO], ["a", "b"])
    with pytest.raises(TypeError, match="bogus"):
        pipe(VIDEO, "x", bogus=1)
    with pytest.raises(ValueError, match="twice"):
        pipe(VIDEO, "x", max_new_tokens=2, generate_kwargs={"max_new_tokens": 3})


def test_saved_repo_carries_the_pipeline_as_remote_code(repo, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'videollamb_hf':\n"
        "            raise ModuleNotFoundError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from transformers import pipeline\n"
        "pipe = pipeline(model=sys.argv[1], trust_remote_code=True)\n"
        "assert type(pipe).__module__.startswith('transformers_modules'), type(pipe).__module__\n"
        "print(pipe(sys.argv[2], 'What happens in the video?', max_new_tokens=6, return_full_text=False)[0]"
        "['generated_text'])\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run([sys.executable, "-I", str(script), repo, VIDEO], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == _direct(repo, _chat(VIDEO, "What happens in the video?"), 6)


def test_a_long_video_is_encoded_in_chunks_with_the_same_answer(pipe, monkeypatch):
    calls = []
    original = type(pipe.model).encode_video
    monkeypatch.setattr(
        type(pipe.model), "encode_video", lambda self, *a, **k: calls.append(k) or original(self, *a, **k)
    )
    video = str(VIDEOS / "sample_demo_1.mp4")
    options = dict(max_new_tokens=6, return_full_text=False, processor_kwargs={"num_frames": 32})
    whole = pipe(video, "What happens?", **options)
    assert calls == []  # 32 frames: below the default threshold (256), one pixel tensor
    chunked = pipe(video, "What happens?", chunked_above=16, **options)
    assert calls == [{"num_frames": 32}]
    assert chunked == whole
