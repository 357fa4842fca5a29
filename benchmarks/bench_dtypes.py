"""fp32 vs bf16 vs fp16 through the whole pipeline (towers, SceneTilling, bridge, language model) at the "mid" size:
the released towers and bridge at full width with random weights, and a LLaMA of width 1024 and 8 layers.

    python benchmarks/bench_dtypes.py [--clips dance.mp4 sample_demo_1.mp4 ...] [--frames 16]

Per dtype, each shared clip is encoded ONCE (the towers are most of the cost on this CPU) and its features reused for
every prompt. Printed per clip and dtype against fp32: relative L2 difference of the last-position logits, whether
the SceneTilling boundaries are the same, how many of the first 16 greedy tokens agree, and the dtype of what each
stage hands on (from forward hooks: towers, bridge, projector, language model, LM head).

fp16: this CPU (AVX2, no fp16 matrix units) multiplies fp16 matrices at about 0.2 GFLOP/s (bf16: 40, fp32: 25 on
these two cores, measured), so a true fp16 run of the towers would take hours. `--fp16 emulated` (the default) runs
fp16 as GPU kernels compute it: weights rounded to fp16, every module's output rounded to fp16, products accumulated
in fp32 (what fp16 GEMMs with fp32 accumulation do; softmax and norms inside a module are not rounded). `--fp16
native` runs the real fp16 model (slow). The figure measures rounding, not kernel-specific summation order.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
PROMPTS = ["Describe the video.", "What happens at the end?"]
STAGES = {"video tower": "model.video_tower.encoder.layers.0", "bridge": "model.memory_bridge.layers.0",
          "retriever": "model.memory_bridge.retriever", "projector": "model.multi_modal_projector",
          "language model": "model.language_model", "lm_head": "lm_head"}  # fmt: skip


def round_outputs_to_fp16(model) -> list:
    """Forward hooks rounding every leaf module's floating outputs to fp16 (values kept in fp32)."""

    def hook(module, args, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return output.half().float()
        return output

    return [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]


def record_dtypes(model) -> tuple[dict, list]:
    seen = {}

    def make(name):
        def hook(module, args, output):
            tensor = output if isinstance(output, torch.Tensor) else getattr(output, "last_hidden_state", None)
            if tensor is None and isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                tensor = output[0]
            if tensor is not None:
                seen[name] = str(tensor.dtype).removeprefix("torch.")

        return hook

    handles = [model.get_submodule(path).register_forward_hook(make(name)) for name, path in STAGES.items()]
    return seen, handles


def run_dtype(repo, dtype_name, clips, frames, fp16_mode, new_tokens):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import videollamb_hf  # noqa: F401

    load_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    emulate = dtype_name == "fp16" and fp16_mode == "emulated"
    model = AutoModelForImageTextToText.from_pretrained(repo, dtype=torch.float32 if emulate else load_dtype)
    if emulate:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.half().float())
        round_outputs_to_fp16(model)
    parameter_dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    processor = AutoProcessor.from_pretrained(repo)
    seen, _ = record_dtypes(model)
    results = {}
    for clip in clips:
        started = time.perf_counter()
        with torch.no_grad():
            features = model.encode_video(str(VIDEOS / clip), processor.video_processor, num_frames=frames)
        encode_seconds = time.perf_counter() - started
        per_prompt = []
        for prompt in PROMPTS:
            chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
            text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            ids = torch.tensor([processor._tokenize_prompt(text, add_special_tokens=True)[0]])
            mask = torch.ones_like(ids)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask, video_features=features).logits[0, -1].float()
                tokens = model.generate(input_ids=ids, attention_mask=mask, video_features=features,
                                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)  # fmt: skip
            per_prompt.append({"logits": logits, "tokens": tokens[0, ids.shape[1] :].tolist()})
        results[clip] = {"boundaries": list(features.scene_boundaries[0]), "encode_seconds": encode_seconds,
                         "prompts": per_prompt}  # fmt: skip
    return results, dict(seen), parameter_dtypes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+", default=["dance.mp4", "sample_demo_1.mp4", "sample_demo_9.mp4"])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--fp16", choices=["emulated", "native"], default="emulated")
    parser.add_argument("--size", default="mid", choices=["tiny", "mid"])
    args = parser.parse_args()
    from videollamb_hf.testing_utils import save_random_checkpoint

    with tempfile.TemporaryDirectory() as work:
        written = save_random_checkpoint(work, size=args.size, layout="native", dtype=torch.float32)
        print(f"{args.size}: {written['total_bytes'] / 1e9:.2f} GB in fp32", flush=True)
        runs = {}
        for name in ("fp32", "bf16", "fp16"):
            started = time.perf_counter()
            runs[name] = run_dtype(work, name, args.clips, args.frames, args.fp16, args.new_tokens)
            print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    reference = runs["fp32"][0]
    print(f"\n{'clip':<20} {'dtype':<6} {'rel. logit diff':>16} {'boundaries':>22} {'same':>5} "
          f"{'greedy tokens agreeing':>23} {'encode s':>9}")  # fmt: skip
    for name, (results, _, _) in runs.items():
        for clip, result in results.items():
            ref = reference[clip]
            diffs, agree = [], []
            for ours, theirs in zip(result["prompts"], ref["prompts"]):
                diffs.append(float((ours["logits"] - theirs["logits"]).norm() / theirs["logits"].norm()))
                prefix = next((i for i, (a, b) in enumerate(zip(ours["tokens"], theirs["tokens"])) if a != b),
                              len(ours["tokens"]))  # fmt: skip
                agree.append(prefix)
            same = result["boundaries"] == ref["boundaries"]
            print(f"{clip:<20} {name:<6} {max(diffs):>16.2e} {str(result['boundaries']):>22} {str(same):>5} "
                  f"{'/'.join(map(str, agree)) + ' of ' + str(args.new_tokens):>23} {result['encode_seconds']:>9.1f}")  # fmt: skip
            print(json.dumps({"clip": clip, "dtype": name, "fp16": args.fp16 if name == "fp16" else None,
                              "max_rel_logit_diff": max(diffs), "boundaries": result["boundaries"],
                              "boundaries_equal_fp32": same, "greedy_prefix_agreement": agree,
                              "encode_seconds": result["encode_seconds"]}))  # fmt: skip
    print("\nDtypes handed on by each stage (forward hooks) and of the parameters:")
    for name, (_, seen, parameter_dtypes) in runs.items():
        print(f"  {name:<5} parameters {parameter_dtypes}; " + ", ".join(f"{k}: {v}" for k, v in seen.items()))


if __name__ == "__main__":
    main()
