"""The released size (7B, random weights) through writing, conversion, loading, a describe and offloaded loading,
each in a fresh process so that its peak memory is its own; every figure beside the weights' own size and target.

    python benchmarks/bench_real_size.py [--workdir DIR] [--size 7b] [--frames 16] [--keep]

Stages (about 25 min on 2 AVX2 cores at 7B; disk: 15 GB + 15 GB at the peak, each folder deleted once done with):
1. `write`: `testing_utils.save_random_checkpoint(layout="original", dtype=bfloat16)`, the authors' layout with its
   LanguageBind tower folders.
2. `convert`: `videollamb-hf convert` of it (target: peak RSS <= largest input shard + 2 GB). The original is then
   deleted.
3. `load`: `from_pretrained(dtype=torch.bfloat16)` (target: peak RSS <= 1.1 x weights + 1 GB), then one describe of
   a shared clip at `--frames` frames, timed per stage: decoding + transform, video tower, SceneTilling + bridge +
   projector, prefill (to the first token), decoding per token.
4. `offload`: `from_pretrained(dtype=torch.bfloat16, device_map="auto", max_memory={"cpu": ...}, offload_folder=...)`
   with a CPU budget below the model's size (accelerate's big-model inference: the rest stays on disk and is read
   layer by layer), then one forward of a short prompt, compared with the full model's logits of stage 3.

Peak RSS is the stage process's `VmHWM` (its own high-water mark); "above start" subtracts the RSS after imports. Prints a table and
one JSON line per stage.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos" / "dance.mp4"
PROMPT_IDS = [1, 319, 13563, 1546, 263, 12758, 1404, 322]  # a short text-only prompt (ids below 32000)

COMMON = r"""
import json, os, resource, sys, time
import psutil
import torch
def rss(): return psutil.Process().memory_info().rss
def peak(): return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024  # VmHWM: this process only
start_rss = rss()
args = json.loads(sys.argv[1])
out = {"stage": args["stage"], "start_rss": start_rss}
"""

WRITE = r"""
from videollamb_hf.testing_utils import save_random_checkpoint
t = time.perf_counter()
written = save_random_checkpoint(args["dir"], size=args["size"], layout="original", dtype=torch.bfloat16)
out.update(seconds=time.perf_counter() - t, weights=written["total_bytes"], largest_shard=written["largest_shard_bytes"],
           shards=len(written["shards"]), repo=written["repo"], video_tower=written["video_tower"],
           image_tower=written["image_tower"], peak=peak())
"""

CONVERT = r"""
from videollamb_hf.convert_videollamb_original_to_hf import convert_original_checkpoint
t = time.perf_counter()
convert_original_checkpoint(args["repo"], args["output"], video_tower=args["video_tower"], image_tower=args["image_tower"])
out.update(seconds=time.perf_counter() - t, peak=peak(),
           written=sum(p.stat().st_size for p in __import__("pathlib").Path(args["output"]).glob("*.safetensors")))
"""

LOAD = r"""
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.generation.streamers import BaseStreamer
import videollamb_hf
t = time.perf_counter()
model = AutoModelForImageTextToText.from_pretrained(args["model"], dtype=torch.bfloat16)
out.update(load_seconds=time.perf_counter() - t, load_peak=peak(), loaded_rss=rss(),
           weights=sum(p.numel() * p.element_size() for p in model.parameters()),
           dtypes=sorted({str(p.dtype) for p in model.parameters()}))
processor = AutoProcessor.from_pretrained(args["model"])
with torch.no_grad():
    logits = model(input_ids=torch.tensor([args["prompt_ids"]])).logits[0, -1].float()
torch.save(logits, args["logits"])
if args["frames"]:
    backbone = model.model
    t = time.perf_counter()
    _, chunks = processor.video_processor.iter_pixel_chunks(args["clip"], model.config.tower_chunk_size,
                                                            num_frames=args["frames"])
    chunks = list(chunks)
    out["decode_seconds"] = time.perf_counter() - t
    with torch.no_grad():
        t = time.perf_counter()
        encoded = [backbone._encode_frames(backbone.video_tower, c.to(torch.bfloat16)) for c in chunks]
        out["tower_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        features = backbone.bridge_videos([torch.cat([c for c, _ in encoded])], [torch.cat([p for _, p in encoded])])
        out["bridge_seconds"] = time.perf_counter() - t
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text",
        "text": "Describe the video."}]}], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([processor._tokenize_prompt(text, add_special_tokens=True)[0]])  # as the pipeline does
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    stamps = []
    class Clock(BaseStreamer):
        def put(self, value): stamps.append(time.perf_counter())
        def end(self): pass
    t = time.perf_counter()
    new = args["new_tokens"]
    model.generate(**inputs, video_features=features, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                   streamer=Clock())
    # put() is called with the prompt, then with each new token: stamps[1] is the first token.
    out.update(prompt_tokens=int(inputs["input_ids"].shape[1]), prefill_seconds=stamps[1] - t,
               decode_seconds_per_token=(stamps[-1] - stamps[1]) / max(1, len(stamps) - 2), new_tokens=len(stamps) - 1,
               describe_peak=peak(), segments=len(features.scene_boundaries[0]))
"""

OFFLOAD = r"""
from transformers import AutoModelForImageTextToText
import videollamb_hf
t = time.perf_counter()
model = AutoModelForImageTextToText.from_pretrained(args["model"], dtype=torch.bfloat16, device_map="auto",
                                                    max_memory={"cpu": args["cpu_budget"]},
                                                    offload_folder=args["offload_folder"])
out.update(load_seconds=time.perf_counter() - t, load_peak=peak(),
           placement=sorted(set(getattr(model, "hf_device_map", {}).values()), key=str))
out["on_disk"] = sum(1 for v in model.hf_device_map.values() if v == "disk")
out["modules"] = len(model.hf_device_map)
t = time.perf_counter()
with torch.no_grad():
    logits = model(input_ids=torch.tensor([args["prompt_ids"]])).logits[0, -1].float()
out["forward_seconds"] = time.perf_counter() - t
reference = torch.load(args["logits"])
out["max_abs_logit_diff_vs_full"] = float((logits - reference).abs().max())
out["peak"] = peak()
"""


def run_stage(code: str, **args) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", COMMON + code + "\nprint('RESULT ' + json.dumps(out))",
                             json.dumps(args)], capture_output=True, text=True, env=env)  # fmt: skip
    if result.returncode:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"stage {args['stage']} failed ({result.returncode})")
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    out["wall_seconds"] = time.perf_counter() - started
    print(json.dumps(out), flush=True)
    return out


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="bench-real-size", help="scratch folder (deleted unless --keep)")
    parser.add_argument("--size", default="7b", choices=["tiny", "mid", "7b"])
    parser.add_argument("--frames", type=int, default=16, help="frames of the describe (0: none)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--cpu-budget", default="6GiB", help="max_memory for the offloaded load")
    parser.add_argument("--keep", action="store_true", help="keep the converted checkpoint")
    args = parser.parse_args()
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    write = run_stage(WRITE, stage="write", dir=str(work / "original"), size=args.size)
    converted = work / "converted"
    shutil.rmtree(converted, ignore_errors=True)
    convert = run_stage(CONVERT, stage="convert", repo=write["repo"], output=str(converted),
                        video_tower=write["video_tower"], image_tower=write["image_tower"])  # fmt: skip
    shutil.rmtree(work / "original")
    logits = str(work / "full_logits.pt")
    prompt_ids = [i % 400 for i in PROMPT_IDS] if args.size == "tiny" else PROMPT_IDS  # the tiny vocabulary: 402
    load = run_stage(LOAD, stage="load", model=str(converted), prompt_ids=prompt_ids, logits=logits, clip=str(CLIP),
                     frames=args.frames, new_tokens=args.new_tokens)  # fmt: skip
    offload = run_stage(OFFLOAD, stage="offload", model=str(converted), prompt_ids=prompt_ids, logits=logits,
                        cpu_budget=args.cpu_budget, offload_folder=str(work / "offload"))  # fmt: skip
    weights = write["weights"]
    convert_target = write["largest_shard"] + 2e9
    load_target = 1.1 * load["weights"] + 1e9
    rows.append(("write (original layout, bf16)", f"{write['seconds']:.0f} s", gb(write["peak"]),
                 f"largest shard {gb(write['largest_shard'])}", ""))  # fmt: skip
    rows.append(("convert (streaming)", f"{convert['seconds']:.0f} s", gb(convert["peak"]),
                 f"<= {gb(convert_target)}", "met" if convert["peak"] <= convert_target else "MISSED"))  # fmt: skip
    rows.append(("from_pretrained(dtype=bf16)", f"{load['load_seconds']:.0f} s", gb(load["load_peak"]),
                 f"<= {gb(load_target)}", "met" if load["load_peak"] <= load_target else "MISSED"))  # fmt: skip
    if args.frames:
        rows.append((f"describe {args.frames} frames: decode", f"{load['decode_seconds']:.1f} s", "", "", ""))
        rows.append(("  video tower", f"{load['tower_seconds']:.1f} s", "", "", ""))
        rows.append(("  SceneTilling + bridge + projector", f"{load['bridge_seconds']:.2f} s", "", "", ""))
        rows.append((f"  prefill ({load['prompt_tokens']} tokens)", f"{load['prefill_seconds']:.1f} s", "", "", ""))
        rows.append(("  decoding", f"{load['decode_seconds_per_token']:.2f} s/token", gb(load["describe_peak"]), "",
                     ""))  # fmt: skip
    rows.append((f"device_map=auto, max_memory cpu {args.cpu_budget}: load", f"{offload['load_seconds']:.0f} s",
                 gb(offload["load_peak"]), f"{offload['on_disk']}/{offload['modules']} modules on disk", ""))  # fmt: skip
    rows.append(("  one forward (8 tokens)", f"{offload['forward_seconds']:.0f} s", gb(offload["peak"]),
                 f"max |logit diff| vs full {offload['max_abs_logit_diff_vs_full']:.2g}", ""))  # fmt: skip
    print(f"\nweights: {gb(weights)} (bf16, {args.size}); written by convert: {gb(convert['written'])}")
    print(f"{'stage':<48} {'time':>14} {'peak RSS':>10}  {'target / note':<40} ")
    for stage, seconds, peak, target, verdict in rows:
        print(f"{stage:<48} {seconds:>14} {peak:>10}  {target:<40} {verdict}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
