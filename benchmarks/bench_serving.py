"""Serving: 32 questions over the shared clips sent concurrently through `videollamb-hf serve` + vLLM, vs this
package's `generate` one question at a time and in batches, same model, same run.

    python benchmarks/bench_serving.py --vllm-python VLLM_ENV/bin/python [--questions 32] [--hidden 512] [--layers 8]
                                       [--max-new-tokens 16] [--batch-size 8] [--json]

The model is random (tiny towers, a LLaMA of `--hidden` / `--layers` with head size 64, which vLLM's CPU attention
takes). Reports requests per second, time to first token (p50 / p95), the share of the served requests' time spent
encoding (the server's log lines), the encoder cache on and off, and checks that the greedy answers agree. Also the
payload of one request at 7B (1,200 x 4,096 bf16 prompt embeddings as base64) and what building it costs.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CLIPS = ["sample_demo_1.mp4", "readingsky.mp4", "dance.mp4", "sample_demo_3.mp4", "sample_demo_9.mp4"]
QUESTIONS = ["What happens?", "Who is there?", "Describe the scene.", "What colour dominates?",
             "What is the person doing?", "Where is this?", "What happens at the end?"]  # fmt: skip


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def served_run(url, requests, max_new_tokens, log, num_frames=16):
    """Every request at once through the OpenAI-compatible server, streaming: per-request TTFT and total."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

    def one(request):
        clip, question = request
        started = time.perf_counter()
        stream = client.chat.completions.create(
            model="bench", max_tokens=max_new_tokens, temperature=0, stream=True, extra_body={"num_frames": num_frames},
            messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(VIDEOS / clip)}},
                                                   {"type": "text", "text": question}]}],
        )  # fmt: skip
        first, text = None, ""
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - started
                text += chunk.choices[0].delta.content
        return first, time.perf_counter() - started, text

    offset = len(Path(log).read_text().splitlines())
    started = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(one, requests))
    wall = time.perf_counter() - started
    lines = Path(log).read_text().splitlines()[offset:]
    encode = [float(m.group(1)) for line in lines if (m := re.search(r"encode=([\d.]+)s", line))]
    total = [float(m.group(1)) for line in lines if (m := re.search(r"total=([\d.]+)s", line))]
    return {"wall_s": wall, "requests_per_s": len(requests) / wall,
            "ttft_p50_s": percentile([r[0] for r in results], 50), "ttft_p95_s": percentile([r[0] for r in results], 95),
            "encode_share": sum(encode) / max(sum(total), 1e-9), "texts": [r[2] for r in results]}  # fmt: skip


def local_run(model, processor, requests, max_new_tokens, batch_size):
    """`model.generate` in batches of `batch_size` (1: one at a time); TTFT = until the batch's first new token."""
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.at = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.at is None:  # the first call is the prompt
                self.at = time.perf_counter()

        def end(self):
            pass

    ttft, texts = [], []
    started = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        chunk = requests[i : i + batch_size]
        chats = [[{"role": "user", "content": [{"type": "video", "path": str(VIDEOS / c)}, {"type": "text", "text": q}]}]
                 for c, q in chunk]  # fmt: skip
        batch_started = time.perf_counter()
        inputs = processor.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt", processor_kwargs={"num_frames": 16})  # fmt: skip
        streamer = FirstToken() if batch_size == 1 else None
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
        done = time.perf_counter()
        first = (streamer.at if streamer and streamer.at else done) - batch_started
        ttft += [first] * len(chunk)
        texts += processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "requests_per_s": len(requests) / wall, "ttft_p50_s": percentile(ttft, 50),
            "ttft_p95_s": percentile(ttft, 95), "texts": texts}  # fmt: skip


def payload_at_7b():
    from videollamb_hf.serving import encode_prompt_embeds

    embeds = torch.randn(1200, 4096).to(torch.bfloat16)
    started = time.perf_counter()
    payload = encode_prompt_embeds(embeds)
    seconds = time.perf_counter() - started
    return {"raw_mb": embeds.numel() * 2 / 1e6, "base64_mb": len(payload) / 1e6, "encode_s": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", default=os.environ.get("VIDEOLLAMB_VLLM_PYTHON"), required=False)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.vllm_python:
        parser.error("--vllm-python (or $VIDEOLLAMB_VLLM_PYTHON): the python of vLLM's own environment")
    torch.set_num_threads(2)
    os.environ["HF_HUB_OFFLINE"] = "1"

    from transformers import AutoModelForImageTextToText, AutoProcessor

    import videollamb_hf  # noqa: F401
    from videollamb_hf.serving import export_language_model
    from videollamb_hf.testing_utils import free_port, save_tiny_repo, start_server, stop_server, wait_for_http

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    heads = args.hidden // 64
    text = {"hidden_size": args.hidden, "intermediate_size": args.hidden * 8 // 3, "num_hidden_layers": args.layers,
            "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": 2048}  # fmt: skip
    repo = save_tiny_repo(work / "model", seed=0, text=text)
    model = AutoModelForImageTextToText.from_pretrained(repo).eval()
    processor = AutoProcessor.from_pretrained(repo)
    export = export_language_model(repo, work / "lm")
    requests = [(CLIPS[i % len(CLIPS)], QUESTIONS[i % len(QUESTIONS)]) for i in range(args.questions)]

    vllm_port = free_port()
    vllm = start_server([args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(export),
                  "--enable-prompt-embeds", "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization",
                  "0.3", "--host", "127.0.0.1", "--port", str(vllm_port)], work / "vllm.log",
                 env={"VLLM_CPU_KVCACHE_SPACE": "2"})  # fmt: skip
    results = {"model": {"hidden": args.hidden, "layers": args.layers, "questions": args.questions,
                         "max_new_tokens": args.max_new_tokens, "clips": len(CLIPS)}}  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{vllm_port}/v1/models", vllm, 600, work / "vllm.log")
        for name, cache_mb in (("served, encoder cache on", "2048"), ("served, encoder cache off", "0")):
            port = free_port()
            log = work / f"serve-{cache_mb}.log"
            front = start_server([sys.executable, "-m", "videollamb_hf", "serve", "--model", repo, "--vllm-url",
                           f"http://127.0.0.1:{vllm_port}", "--port", str(port), "--served-model-name", "bench",
                           "--allowed-media-root", str(VIDEOS), "--encoder-cache-mb", cache_mb], log)  # fmt: skip
            try:
                wait_for_http(f"http://127.0.0.1:{port}/health", front, 300, log)
                # Warm-up at another frame count (another cache key): the measured run starts with a cold cache.
                served_run(f"http://127.0.0.1:{port}", requests[:2], args.max_new_tokens, log, num_frames=8)
                results[name] = served_run(f"http://127.0.0.1:{port}", requests, args.max_new_tokens, log)
            finally:
                stop_server(front)
    finally:
        stop_server(vllm)
    local_run(model, processor, requests[:2], args.max_new_tokens, 1)  # warm-up
    results["generate, one at a time"] = local_run(model, processor, requests, args.max_new_tokens, 1)
    results[f"generate, batches of {args.batch_size}"] = local_run(
        model, processor, requests, args.max_new_tokens, args.batch_size
    )
    reference = results["generate, one at a time"]["texts"]
    for result in list(results.values()):
        if isinstance(result, dict) and "texts" in result:
            result["same_answers_as_one_at_a_time"] = sum(a == b for a, b in zip(result.pop("texts"), reference))
    results["payload at 7B (1,200 x 4,096 bf16)"] = payload_at_7b()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    base = results["generate, one at a time"]["requests_per_s"]
    print(f"{args.questions} questions over {len(CLIPS)} clips, LLaMA hidden {args.hidden} x {args.layers} layers, "
          f"{args.max_new_tokens} new tokens, 2 CPU cores")  # fmt: skip
    print(f"{'run':<30} {'req/s':>7} {'x one-at-a-time':>16} {'TTFT p50':>9} {'TTFT p95':>9} {'encode share':>13} "
          f"{'same answers':>13}")  # fmt: skip
    for name, result in results.items():
        if not isinstance(result, dict) or "requests_per_s" not in result:
            continue
        share = f"{result['encode_share']:.0%}" if "encode_share" in result else "-"
        print(f"{name:<30} {result['requests_per_s']:>7.2f} {result['requests_per_s'] / base:>16.2f} "
              f"{result['ttft_p50_s']:>8.2f}s {result['ttft_p95_s']:>8.2f}s {share:>13} "
              f"{result['same_answers_as_one_at_a_time']:>6}/{args.questions}")  # fmt: skip
    payload = results["payload at 7B (1,200 x 4,096 bf16)"]
    print(f"payload per request at 7B: {payload['raw_mb']:.1f} MB raw, {payload['base64_mb']:.1f} MB as base64, "
          f"{payload['encode_s'] * 1000:.0f} ms to build")  # fmt: skip


if __name__ == "__main__":
    main()
