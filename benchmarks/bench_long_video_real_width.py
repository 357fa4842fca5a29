"""Long videos at the released width, encoded in chunks of frames (`VideoLlambModel.encode_video`): time per frame,
peak memory above the loaded model, and the language model's tokens, as the frame count grows; and the chunked path
against the one-tensor path at "mid" size.

    python benchmarks/bench_long_video_real_width.py [--runs 24:256 2:1024 2:4096] [--equality-frames 32]

Model: the "mid" random checkpoint in bf16 (the released towers at width 1024 and 224 px, the released bridge, a
LLaMA of width 1024 and 8 layers); `LAYERS:FRAMES` runs use towers of that many layers (24: full depth; 2: full width,
of which 1 layer runs, since the features are the second-to-last layer's). Memory per frame depends on the width, not
the depth: what is kept per frame is its pooled patches and CLS token, (144 + 1) x 1024 values (290 KiB in bf16).

Frames come from a synthetic frame iterator (320x240 RGB, a new scene every 150 frames), so decoding is not timed;
the transform, the towers, SceneTilling, the bridge and one language-model forward are. Each run is a fresh process;
its memory is its `VmHWM` (high-water mark) minus the RSS after a warm-up encode (the weights' pages touched once).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


CHILD = r"""
import json, resource, sys, time
import numpy as np, psutil, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
import videollamb_hf
args = json.loads(sys.argv[1])
model = AutoModelForImageTextToText.from_pretrained(args["repo"], dtype=torch.bfloat16)
processor = AutoProcessor.from_pretrained(args["repo"])
weights = sum(p.numel() * p.element_size() for p in model.parameters())

def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    base = None
    for i in range(n):
        if i % 150 == 0:
            base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        yield np.roll(base, i % 150, axis=1)

def prompt_ids():
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return torch.tensor([processor._tokenize_prompt(text, add_special_tokens=True)[0]])

out = {"weights": weights, "tower_layers": model.config.vision_config.num_hidden_layers}
with torch.no_grad():
    if args["mode"] == "equality":
        n = args["frames"]
        video = np.stack(list(frames(n)))
        pixels = processor.video_processor(videos=[video], num_frames=n, return_tensors="pt")["pixel_values_videos"]
        one = model.model.get_video_features(pixels.to(torch.bfloat16))
        chunked = model.encode_video(video, processor.video_processor, chunk_frames=16, num_frames=n)
        ids = prompt_ids()
        mask = torch.ones_like(ids)
        a = model.generate(input_ids=ids, attention_mask=mask, video_features=one, max_new_tokens=16, do_sample=False)
        b = model.generate(input_ids=ids, attention_mask=mask, video_features=chunked, max_new_tokens=16, do_sample=False)
        out.update(frames=n, boundaries_one=list(one.scene_boundaries[0]), boundaries_chunked=list(chunked.scene_boundaries[0]),
                   max_abs_token_diff=float((one.visual_tokens.float() - chunked.visual_tokens.float()).abs().max()),
                   memory_equal=bool(torch.equal(one.memory, chunked.memory)),
                   greedy_equal=bool(torch.equal(a, b)))
    else:
        model.encode_video(frames(16), processor.video_processor)  # warm-up: the weights' pages touched
        before = psutil.Process().memory_info().rss
        start = time.perf_counter()
        features = model.encode_video(frames(args["frames"]), processor.video_processor)
        encode = time.perf_counter() - start
        peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024  # this process only (ru_maxrss keeps a parent's peak across exec)
        ids = prompt_ids()
        start = time.perf_counter()
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids), video_features=features)
        lm = time.perf_counter() - start
        out.update(frames=args["frames"], encode_seconds=encode, seconds_per_frame=encode / args["frames"],
                   peak_above_loaded=peak - before, lm_tokens=int(output.attention_mask.sum()),
                   prompt_length=int(ids.shape[1]), lm_forward_seconds=lm,
                   segments=len(features.scene_boundaries[0]),
                   kept_bytes_per_frame=(model.config.pooled_grid_size ** 2 + 1) * model.config.bridge_hidden_size * 2)
print("RESULT " + json.dumps(out))
"""


def child(**args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
    if result.returncode:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"run {args} failed")
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    print(json.dumps(out), flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["24:256", "2:1024", "2:4096"], help="LAYERS:FRAMES")
    parser.add_argument("--equality-frames", type=int, default=32, help="frames of the chunked vs one-tensor check")
    parser.add_argument("--size", default="mid", choices=["tiny", "mid"], help="tiny: a quick check of the script")
    args = parser.parse_args()
    import torch

    from videollamb_hf.testing_utils import random_checkpoint_config, save_random_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as work:
        repos = {}
        for layers in sorted({int(r.split(":")[0]) for r in args.runs} | {24}):
            config = random_checkpoint_config(args.size)
            config.vision_config.num_hidden_layers = layers
            config.image_config.num_hidden_layers = layers
            started = time.perf_counter()
            repos[layers] = save_random_checkpoint(
                f"{work}/{layers}", size=args.size, dtype=torch.bfloat16, config=config
            )
            print(f"wrote the mid checkpoint with {layers}-layer towers in {time.perf_counter() - started:.0f} s",
                  flush=True)  # fmt: skip
        equality = None
        if args.equality_frames:
            equality = child(repo=repos[24]["repo"], mode="equality", frames=args.equality_frames)
        for run in args.runs:
            layers, frames = map(int, run.split(":"))
            rows.append(child(repo=repos[layers]["repo"], mode="run", frames=frames))
    print(f"\n{'tower layers':>12} {'frames':>7} {'s/frame':>8} {'peak above loaded':>18} {'per frame':>10} "
          f"{'kept/frame':>11} {'segments':>9} {'LM tokens':>10} {'LM fwd s':>9}")  # fmt: skip
    for r in rows:
        print(f"{r['tower_layers']:>12} {r['frames']:>7} {r['seconds_per_frame']:>8.3f} "
              f"{r['peak_above_loaded'] / 2**20:>14.0f} MiB {r['peak_above_loaded'] / r['frames'] / 2**10:>6.0f} KiB "
              f"{r['kept_bytes_per_frame'] / 2**10:>7.0f} KiB {r['segments']:>9} {r['lm_tokens']:>10} "
              f"{r['lm_forward_seconds']:>9.2f}")  # fmt: skip
    if equality:
        print(f"\nchunked (16 frames a chunk) vs one tensor, {equality['frames']} frames, full depth, bf16: "
              f"max |visual token diff| {equality['max_abs_token_diff']:.3g}, memory equal {equality['memory_equal']}, "
              f"boundaries {equality['boundaries_one']} vs {equality['boundaries_chunked']}, "
              f"16 greedy tokens equal {equality['greedy_equal']}")  # fmt: skip


if __name__ == "__main__":
    main()
