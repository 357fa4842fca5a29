"""Quantized loading of the "mid" random model: its language model in 8 or 4 bits (`videollamb_hf.quantization`), the
towers, bridge, projector and LM head in bf16, against the whole model in bf16: memory, load time, generation time
and greedy-token agreement over 20 prompts on the shared clips.

    python benchmarks/bench_quantized.py [--variants bf16,bnb-int8,bnb-nf4,torchao-int8] [--num-frames 16]
                                         [--max-new-tokens 16] [--questions 4]

The model (`testing_utils.save_random_checkpoint(size="mid")`): the released towers and bridge at full width and a
LLaMA of 8 layers at width 1024, vocabulary 32,002, 0.90B parameters, written to a temporary folder in bf16 and
deleted at the end. Each clip in ../shared/data/videos is encoded once (`encode_video`, `--num-frames` frames) by the
bf16 model in a process of its own; every variant then answers `--questions` questions per clip from those
features (greedy, exactly `--max-new-tokens` new tokens). That is exact: the towers, bridge and projector are the
same bf16 weights in every variant (their checksum is compared). Each variant runs in a fresh process, so its
memory is its own:

- weights: bytes the model's tensors occupy (`quantization.storage_bytes`, by storage), next to what
  `get_memory_footprint()` claims;
- RSS above the process's RSS after imports (freed heap handed back first), split into anon (tensors the process
  made) and file (mapped pages: safetensors are memory-mapped, so a bf16 load is resident only as far as it has been
  read): with every weight touched (as after answering and encoding), and again after paging the checkpoint's
  mappings out and touching every live weight (`madvise(MADV_PAGEOUT)`: a quantized load read the LM's bf16 weights
  through the mapping, and those dead pages stay counted until the kernel reclaims them); the process's peak (VmHWM);
- load time and generation time, wall and CPU seconds of the process (CPU seconds are less disturbed by other work
  on the machine).

Agreement with bf16: the share of generated tokens equal to bf16's at the same step, the prompts whose whole answer
is bf16's, and the relative L2 distance of the next-token logits from bf16's at the first step (same input in every
variant) and over the steps before the answers first differ (same inputs there too). Random weights make the
answers noise; the agreement still measures the quantization error. Questions about one clip share the prefix
through the video's slots: it is run once per clip and variant and each question continues from its cache (checked
against a full prefill in the bf16 run). Prints a table and the JSON of every figure. About 4 minutes on 2 idle cores.
"""

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
QUESTIONS = ["What happens in the video?", "Describe the scene in detail.", "How many people appear?",
             "What colour is the main object?", "Where does it take place?", "How does it end?"]  # fmt: skip
# name -> (backend, bits) of `videollamb_hf.quantization.quantization_config`; None: no quantization.
VARIANTS = {
    "bf16": None,
    "bnb-int8": ("bitsandbytes", 8),
    "bnb-nf4": ("bitsandbytes", 4),
    "torchao-int8": ("torchao", 8),
    "quanto-int8": ("quanto", 8),
    "quanto-int4": ("quanto", 4),
}
KEPT = ("video_tower", "image_tower", "memory_bridge", "multi_modal_projector")


def rss() -> dict[str, int]:
    """Resident bytes of this process once freed heap memory is handed back (glibc's `malloc_trim`), from
    /proc/self/status: `total`, of it `anon` (heap: tensors the process made) and `file` (pages of memory-mapped
    files, the safetensors shards included, which the kernel may drop), and `peak` (VmHWM: the peak of this
    process's own memory; `ru_maxrss` would carry over the parent's peak from before `exec`)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = {name: int(status[name].split()[0]) * 1024 for name in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
    return {"total": kib["VmRSS"], "anon": kib["RssAnon"], "file": kib["RssFile"], "peak": kib["VmHWM"]}


def touch_weights(model) -> None:
    """Read a value from every page of every tensor the model holds (tensor subclasses opened)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    pending = list(model.state_dict(keep_vars=True).values())
    with torch.no_grad():
        while pending:
            tensor = pending.pop()
            if is_traceable_wrapper_subclass(tensor):
                pending.extend(getattr(tensor, name) for name in tensor.__tensor_flatten__()[0])
            elif tensor.numel():
                float(tensor.detach().reshape(-1)[::512].float().sum())


def page_out_checkpoint() -> int:
    """Ask the kernel to page out this process's mappings of safetensors files (`madvise(MADV_PAGEOUT)`), so that
    touching the weights again brings back only the pages live tensors use: a quantized load has read the LM's
    bf16 weights through the same mapping, and those pages stay resident (and counted) until reclaimed. Returns
    how many mappings it paged out."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madv_pageout = 21
    count = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith(".safetensors"):
            low, high = (int(value, 16) for value in fields[0].split("-"))
            if libc.madvise(low, high - low, madv_pageout) != 0:
                raise OSError(ctypes.get_errno(), f"madvise(MADV_PAGEOUT) failed on {fields[5]}")
            count += 1
    return count


def clips(limit: int | None = None) -> list[Path]:
    return sorted(VIDEOS.glob("*.mp4"))[:limit]


def prompts(processor, questions: int, clip_limit: int | None = None) -> list[tuple[int, str, list[int]]]:
    """`(clip index, question, token ids)` for every clip and each of the first `questions` questions."""
    from videollamb_hf.chat import prompt_ids

    return [
        (i, q, prompt_ids(processor, [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}]))
        for i in range(len(clips(clip_limit)))
        for q in QUESTIONS[:questions]
    ]


def encode_child(args) -> dict:
    """Encode each clip once with the bf16 model; save the features as plain tensors."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(args.repo, dtype=torch.bfloat16, device_map="cpu")
    processor = AutoProcessor.from_pretrained(args.repo)
    saved, seconds = [], []
    for path in clips(args.clips):
        start = time.perf_counter()
        features = model.encode_video(str(path), processor.video_processor, num_frames=args.num_frames)
        seconds.append(time.perf_counter() - start)
        saved.append({k: getattr(features, k) for k in ("visual_tokens", "num_slots_used", "scene_boundaries",
                                                        "memory", "memory_cache")})  # fmt: skip
    torch.save(saved, Path(args.work) / "features.pt")
    return {"clips": [p.name for p in clips(args.clips)], "encode_seconds": seconds, "rss": rss()}


def answer_about_one_video(model, features, prompts: list[list[int]], max_new_tokens: int, reuse_prefix=True):
    """Greedy answers to `prompts` (token ids) about one encoded video: `(new token ids, logits (new, vocab))` each.

    With `reuse_prefix`, the prefix the prompts share (the video's slots and the text before them) is run once and
    each prompt continues from a copy of its cache, with the model's slot mask and the positions that skip the
    unused slots carried over (as `videollamb_hf.chat.ChatSession` does; checked against a full prefill)."""
    from transformers import DynamicCache

    shared = min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1) if reuse_prefix else 0
    if shared:
        ids = torch.tensor([prompts[0][:shared]])
        cache = DynamicCache(config=model.config.get_text_config())
        with torch.no_grad():
            prefix = model(input_ids=ids, attention_mask=torch.ones_like(ids), video_features=features, cache=cache,
                           use_cache=True, logits_to_keep=1)  # fmt: skip
        prefix_mask = prefix.attention_mask if prefix.attention_mask is not None else torch.ones_like(ids)
    for prompt in prompts:
        ids = torch.tensor([prompt])
        if shared:
            mask = torch.cat([prefix_mask.to(ids.dtype), torch.ones(1, len(prompt) - shared, dtype=ids.dtype)], -1)
            extra = {"cache": copy.deepcopy(cache), "attention_mask": mask,
                     "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}  # fmt: skip
        else:
            extra = {"attention_mask": torch.ones_like(ids), "video_features": features}
        generated = model.generate(input_ids=ids, do_sample=False, max_new_tokens=max_new_tokens,
                                   min_new_tokens=max_new_tokens, output_logits=True, return_dict_in_generate=True,
                                   **extra)  # fmt: skip
        yield generated.sequences[0, len(prompt) :].tolist(), torch.stack([s[0].float() for s in generated.logits])


def run_child(args) -> dict:
    """Load one variant, measure it, answer every prompt from the saved features."""
    from torch import nn
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from videollamb_hf import VideoLlambVideoFeatures
    from videollamb_hf.quantization import quantization_config, storage_bytes

    out = {"variant": args.variant, "rss_start": rss()}
    spec = VARIANTS[args.variant]
    config = None if spec is None else quantization_config(*spec)
    wall, cpu = time.perf_counter(), time.process_time()
    model = AutoModelForImageTextToText.from_pretrained(
        args.repo, dtype=torch.bfloat16, device_map="cpu", quantization_config=config
    )
    out.update(load_seconds=time.perf_counter() - wall, load_cpu_seconds=time.process_time() - cpu,
               rss_loaded=rss())  # fmt: skip
    kept = [getattr(model.model, name) for name in KEPT] + [model.lm_head]
    decoder = model.model.language_model.layers
    out["weights"] = {
        "total": storage_bytes(model),
        "towers_bridge_projector": sum(storage_bytes(m) for m in kept[:-1]),
        "language_model_layers": storage_bytes(decoder),
        "embeddings_and_head": storage_bytes(model.model.language_model.embed_tokens) + storage_bytes(model.lm_head),
        "get_memory_footprint": model.get_memory_footprint(),
    }
    plain = [m for part in kept for m in part.modules() if isinstance(m, nn.Linear)]
    out["kept_linears_plain_bf16"] = all(
        type(m) is nn.Linear and type(m.weight) is nn.Parameter and m.weight.dtype == torch.bfloat16 for m in plain
    )
    linears = [m for m in decoder.modules() if isinstance(m, nn.Linear) or "Linear" in type(m).__name__]
    out["decoder_linear_types"] = sorted({f"{type(m).__name__}/{type(m.weight).__name__}" for m in linears})
    with torch.no_grad():
        out["kept_checksum"] = sum(float(p.double().sum()) for part in kept for p in part.parameters())

    processor = AutoProcessor.from_pretrained(args.repo)
    features = [VideoLlambVideoFeatures(**f) for f in torch.load(Path(args.work) / "features.pt")]
    by_clip = {}
    for clip, _, ids in prompts(processor, args.questions, args.clips):
        by_clip.setdefault(clip, []).append(ids)
    answers, logits, seconds, cpu_seconds = [], [], [], []
    for clip, clip_prompts in by_clip.items():
        wall, cpu = time.perf_counter(), time.process_time()
        for answer, step_logits in answer_about_one_video(model, features[clip], clip_prompts, args.max_new_tokens):
            answers.append(answer)
            logits.append(step_logits)
        seconds.append(time.perf_counter() - wall)
        cpu_seconds.append(time.process_time() - cpu)
    if args.variant == "bf16":  # the prefix-cache path against one full prefill (each clip's first prompt)
        out["prefix_cache_equals_full_prefill"], out["prefix_cache_tokens_equal"], out["prefix_cache_rel_l2"] = (
            [],
            [],
            [],
        )
        for i, (clip, clip_prompts) in enumerate(by_clip.items()):
            full, full_logits = next(
                answer_about_one_video(model, features[clip], clip_prompts[:1], args.max_new_tokens, False)
            )
            reused = logits[i * args.questions]
            reused_answer = answers[i * args.questions]
            out["prefix_cache_equals_full_prefill"].append(full == reused_answer)
            out["prefix_cache_tokens_equal"].append(sum(a == b for a, b in zip(full, reused_answer)))
            out["prefix_cache_rel_l2"].append(float((reused[0] - full_logits[0]).norm() / full_logits[0].norm()))
    torch.save(torch.stack(logits), Path(args.work) / f"logits-{args.variant}.pt")
    out.update(answers=answers, clip_seconds=seconds, clip_cpu_seconds=cpu_seconds, rss_generated=rss())
    touch_weights(model)  # every weight resident, as after encoding videos with the towers
    out["rss_all_weights"] = rss()
    out["checkpoint_mappings_paged_out"] = page_out_checkpoint()
    touch_weights(model)
    out["rss_live_weights"] = rss()
    return out


def child(args):
    torch.set_num_threads(2)
    import videollamb_hf  # noqa: F401  (registers the model)

    result = encode_child(args) if args.child == "encode" else run_child(args)
    print("RESULT " + json.dumps(result), flush=True)


def run(argv: list[str]) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{argv} failed ({done.returncode})")
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def agreement(work: Path, results: dict) -> None:
    """Token agreement and logit distances of each variant from bf16's, added to its result."""
    reference = results["bf16"]["answers"]
    reference_logits = torch.load(work / "logits-bf16.pt")  # (prompts, new, vocab)
    for name, result in results.items():
        answers = result["answers"]
        steps = [sum(1 for _ in zip(a, b)) for a, b in zip(answers, reference)]
        equal = [sum(x == y for x, y in zip(a, b)) for a, b in zip(answers, reference)]
        # Steps before the first disagreement saw the same inputs as bf16's (the first step always does).
        same_input = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) + 1 for a, b in
                      zip(answers, reference)]  # fmt: skip
        logits = torch.load(work / f"logits-{name}.pt")
        relative = (logits - reference_logits).norm(dim=-1) / reference_logits.norm(dim=-1)  # (prompts, new)
        result.update(
            token_agreement=sum(equal) / sum(steps),
            identical_answers=sum(a == b for a, b in zip(answers, reference)),
            prompts=len(answers),
            first_step_rel_l2_mean=float(relative[:, 0].mean()),
            first_step_rel_l2_max=float(relative[:, 0].max()),
            same_input_rel_l2_mean=float(
                torch.cat([r[: min(n, r.shape[0])] for r, n in zip(relative, same_input)]).mean()
            ),  # fmt: skip
            distinct_answers=len({tuple(a) for a in answers}),
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="bf16,bnb-int8,bnb-nf4,torchao-int8")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--questions", type=int, default=4, help="per clip (5 clips: 4 -> 20 prompts)")
    parser.add_argument("--clips", type=int, default=None, help="only the first N clips (a quick run)")
    parser.add_argument("--child", choices=["encode", "run"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--repo", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    variants = ["bf16"] + [v for v in args.variants.split(",") if v != "bf16"]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")

    from videollamb_hf.testing_utils import save_random_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench-quantized-"))
    try:
        started = time.perf_counter()
        written = save_random_checkpoint(work / "mid", size="mid", layout="native", dtype=torch.bfloat16)
        write_seconds = time.perf_counter() - started
        common = [
            "--repo",
            written["repo"],
            "--work",
            str(work),
            "--num-frames",
            str(args.num_frames),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--questions",
            str(args.questions),
        ]
        common += ["--clips", str(args.clips)] if args.clips else []  # fmt: skip
        encoded = run(["--child", "encode", *common])
        results = {name: run(["--child", "run", "--variant", name, *common]) for name in variants}
        agreement(work, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = 2**20
    print(f"mid model ({written['total_bytes'] / mib:,.0f} MiB of bf16 weights, written in {write_seconds:.0f} s); "
          f"{len(encoded['clips'])} clips encoded once at {args.num_frames} frames in "
          f"{sum(encoded['encode_seconds']):.0f} s; {results['bf16']['prompts']} prompts, "
          f"{args.max_new_tokens} greedy new tokens; 2 CPU threads")  # fmt: skip
    header = ["variant", "weights MiB (LM layers)", "get_memory_footprint MiB", "RSS MiB: all weights (anon + file)",
              "live weights only (anon + file)", "peak", "load s (CPU s)", "s per clip's answers, median (CPU s)",
              "tokens equal to bf16", "answers equal", "logit rel. L2 to bf16, 1st step mean (max)"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, r in results.items():
        w, start = r["weights"], r["rss_start"]

        def above(stage, kind="total", start=start, r=r):
            return f"{(r[stage][kind] - start[kind]) / mib:,.0f}"

        cells = [
            name,
            f"{w['total'] / mib:,.0f} ({w['language_model_layers'] / mib:,.0f})",
            f"{w['get_memory_footprint'] / mib:,.0f}",
            f"{above('rss_all_weights')} ({above('rss_all_weights', 'anon')} + {above('rss_all_weights', 'file')})",
            f"{above('rss_live_weights')} ({above('rss_live_weights', 'anon')} + {above('rss_live_weights', 'file')})",
            f"{(r['rss_live_weights']['peak'] - start['total']) / mib:,.0f}",
            f"{r['load_seconds']:.1f} ({r['load_cpu_seconds']:.1f})",
            f"{statistics.median(r['clip_seconds']):.1f} ({statistics.median(r['clip_cpu_seconds']):.1f})",
            f"{r['token_agreement']:.1%}",
            f"{r['identical_answers']}/{r['prompts']}",
            f"{r['first_step_rel_l2_mean']:.4f} ({r['first_step_rel_l2_max']:.4f})",
        ]
        print("| " + " | ".join(cells) + " |")
    bf16 = results["bf16"]
    print(f"bf16 answers from the shared-prefix cache vs one full prefill (each clip's first prompt): "
          f"{sum(bf16['prefix_cache_equals_full_prefill'])}/{len(bf16['prefix_cache_equals_full_prefill'])} equal, "
          f"tokens equal {bf16['prefix_cache_tokens_equal']} of {args.max_new_tokens}, first-step logit rel. L2 "
          f"{max(bf16['prefix_cache_rel_l2']):.4f} at most (bf16 rounding of the two paths)")  # fmt: skip
    checks = {name: (r["kept_linears_plain_bf16"], r["kept_checksum"] == results["bf16"]["kept_checksum"],
                     r["decoder_linear_types"]) for name, r in results.items()}  # fmt: skip
    print("towers/bridge/projector/head plain bf16, same weights as bf16, decoder linears:", json.dumps(checks))
    for r in results.values():
        del r["answers"]
    print(json.dumps({"write_seconds": write_seconds, "weights_bytes_on_disk": written["total_bytes"],
                      "encode": encoded, "variants": results}))  # fmt: skip


if __name__ == "__main__":
    main()
