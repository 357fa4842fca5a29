"""Every training engine x mode x entry point on 2 CPU processes (gloo) against one process with the same global
batch (2 processes x 1 row vs 1 process x 2 rows, no gradient accumulation), on the tiny model with the bridge's
dropout at 0 (dropout masks are drawn per process), 8 steps, fp32, gradient checkpointing on.

Prints, per run: the largest relative difference of the per-step losses (and whether it grows over the steps),
the largest absolute difference of the trainable parameters after step 1, and the wall time. `tests/test_engines.py`
asserts a subset of this matrix; this script runs all of it (about a minute a launch on 2 cores).

    python benchmarks/bench_engines.py [--engines zero2 zero3 fsdp] [--modes full bridge_only lora recurrent]
        [--entries sft trainer] [--json out.json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from videollamb_hf import sft
from videollamb_hf.testing_utils import save_tiny_repo


ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CONFIGS = {"zero2": "cpu_deepspeed_zero2.yaml", "zero3": "cpu_deepspeed_zero3.yaml", "fsdp": "cpu_fsdp_2proc.yaml"}
SFT_MODES = {
    "full": [],
    "bridge_only": ["--model_init_kwargs", '{"freeze_language_model": true}'],
    "lora": "--use_peft --lora_r 4 --lora_alpha 8 --lora_dropout 0 --lora_target_modules".split()
    + [r".*language_model.*\.(q_proj|v_proj)"],
    "recurrent": ["--recurrent_loss"],
}
TRAINER_MODES = {
    "full": [],
    "bridge_only": ["--mode", "bridge_only"],
    "lora": "--mode lora --lora_r 4 --lora_alpha 8 --lora_dropout 0 --lora_target_modules".split()
    + [r".*language_model.*\.(q_proj|v_proj)"],
    "recurrent": ["--recurrent_loss"],
}
STEPS = 8


def rows():
    answers = {"sample_demo_1.mp4": "A baby reads a book.", "dance.mp4": "People are dancing.",
               "sample_demo_3.mp4": "Hands arrange pepper slices."}  # fmt: skip
    questions = ["What happens in the video?", "Describe the video.", "What is shown?"]
    return [{"messages": [{"role": "user", "content": [{"type": "video", "path": str(VIDEOS / v)},
                                                       {"type": "text", "text": q}]},
                          {"role": "assistant", "content": [{"type": "text", "text": a}]}], "images": []}
            for q in questions for v, a in answers.items()][:8]  # fmt: skip


def command(entry, engine, mode, repo, data, out, per_device):
    common = ["--model_name_or_path", repo, "--output_dir", str(out), "--per_device_train_batch_size",
              str(per_device), "--max_steps", str(STEPS), "--learning_rate", "1e-3", "--logging_steps", "1",
              "--save_strategy", "steps", "--save_steps", "1", "--report_to", "none", "--seed", "0",
              "--gradient_checkpointing"]  # fmt: skip
    if entry == "sft":
        target, extra = ["-m", "videollamb_hf.sft"], ["--dataset_name", data, *SFT_MODES[mode]]
    else:
        target, extra = [str(ROOT / "examples" / "trainer_sft.py")], ["--data", data, *TRAINER_MODES[mode]]
    if engine is None:
        return [sys.executable, *target, *common, *extra, "--use_cpu"]
    config = str(ROOT / "examples" / "accelerate" / CONFIGS[engine])
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, *target, *common, *extra]


def run(cmd):
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:8])} ... failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def losses(out):
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    return [e["loss"] for e in state["log_history"] if "loss" in e]


def weights(folder):
    state = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(file))
    return state


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=list(CONFIGS))
    parser.add_argument("--modes", nargs="+", default=list(SFT_MODES))
    parser.add_argument("--entries", nargs="+", default=["sft", "trainer"])
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    repo = save_tiny_repo(work / "model", bridge_attention_dropout=0.0, bridge_hidden_dropout=0.0)
    initial = weights(repo)
    data = str(work / "train.jsonl")
    sft.write_jsonl(rows(), data)
    results = []
    print(f"{'entry':8} {'engine':6} {'mode':12} {'loss rel. diff':>15} {'steps 1-4':>10} {'steps 5-8':>10} "
          f"{'step-1 params':>14} {'seconds':>8}")  # fmt: skip
    for mode in args.modes:
        reference = work / f"reference-{mode}"
        reference_s = run(command("sft", None, mode, repo, data, reference, 2))
        want = losses(reference)
        for entry in args.entries:
            for engine in args.engines:
                out = work / f"{entry}-{engine}-{mode}"
                seconds = run(command(entry, engine, mode, repo, data, out, 1))
                got = losses(out)
                per_step = [abs(g - w) / abs(w) for g, w in zip(got, want)]
                a, b = weights(out / "checkpoint-1"), weights(reference / "checkpoint-1")
                changed = [k for k in b if k not in initial or not torch.equal(b[k], initial[k])]
                params = max(float((a[k] - b[k]).abs().max()) for k in changed)
                results.append({"entry": entry, "engine": engine, "mode": mode, "steps": len(got),
                                "loss_rel_diff": max(per_step), "per_step": per_step, "step1_param_abs_diff": params,
                                "seconds": seconds, "reference_seconds": reference_s})  # fmt: skip
                print(f"{entry:8} {engine:6} {mode:12} {max(per_step):15.2e} {max(per_step[:4]):10.2e} "
                      f"{max(per_step[4:]):10.2e} {params:14.2e} "
                      f"{seconds:8.1f}", flush=True)  # fmt: skip
    print(f"one process (reference), per mode: {reference_s:.1f} s the last; figures in {work}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
