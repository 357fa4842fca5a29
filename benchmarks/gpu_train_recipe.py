"""Fine-tuning recipe on one GPU at the released 7B shape (random weights): `videollamb-hf sft` (TRL's SFT script,
`videollamb_hf.sft.main`) under `accelerate launch --num_processes 1` with DeepSpeed ZeRO-2, bf16 and gradient
checkpointing, LoRA (`examples/sft/lora.yaml`) or bridge-only (`examples/sft/bridge_only.yaml`), for `--steps`
optimizer steps of one video each. Reports per step the peak GPU memory (`torch.cuda.max_memory_allocated` and
`max_memory_reserved`, reset before each step by a trainer callback) and the seconds, prints them beside the plan's
figure for that setting (`bench_training_memory.per_gpu`, from `memory_figures.json`) and writes them as JSON.

    python benchmarks/gpu_train_recipe.py --mode lora [--offload] [--steps 10] [--frames 16] [--workdir DIR]
    python benchmarks/gpu_train_recipe.py --mode bridge --output recipe.json
    python benchmarks/gpu_train_recipe.py --dry-run          # --size tiny on the CPU: the same path, under a minute

`--size 7b` (the default) writes the checkpoint with `testing_utils.save_random_checkpoint(size="7b",
layout="native", dtype=bfloat16)` into `--workdir` (about 5 minutes and 15 GB on 2 CPU cores; reused when present);
`--size tiny` / `--dry-run` writes the tiny one (fp32, for the CPU). `--offload` moves the optimizer states to host
memory (DeepSpeed `offload_optimizer: cpu`, with the trainer's torch AdamW: `zero_force_ds_cpu_optimizer: false`, so
nothing is compiled). Without a GPU the memory figures are the process's peak RSS (`VmHWM`, reset before each step)
instead. The trained model is not saved (`--save` to save it as TRL's script does).

On the device machine (`/work/.library/device/`): it has torch, accelerate and peft, not deepspeed, trl or datasets;
carry wheels for those (and this package + transformers 5.24, as `benchmarks/gpu_suite_wheels.sh` builds) and put
them on `PYTHONPATH` (the launcher runs this file again in the process it starts; see `--child`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CLIPS = ("dance.mp4", "sample_demo_1.mp4", "sample_demo_3.mp4", "sample_demo_9.mp4")
DRY_RUN_CLIPS = ("readingsky.mp4", "sample_demo_3.mp4")  # the quickest to decode: the dry run's steps stay short
ANSWER = ("The video shows a sequence of scenes: people move through a bright room, the camera follows them, and "
          "at the end one of them turns to the camera and smiles.")  # fmt: skip
CONFIGS = {"lora": ROOT / "examples" / "sft" / "lora.yaml", "bridge": ROOT / "examples" / "sft" / "bridge_only.yaml"}


# -- the launched process ---------------------------------------------------------------------------------------------


def child(report: str, sft_args: list[str], save: bool) -> int:
    """Inside `accelerate launch`: `videollamb_hf.sft.main` with a step probe added to its trainer."""
    import torch
    from transformers import TrainerCallback

    from videollamb_hf import sft

    cuda = torch.cuda.is_available()
    if not cuda:
        # DeepSpeed's CPU accelerator JIT-builds a shared-memory all-reduce op when its comm starts (here it rebuilt
        # on every launch, ~50 s on 2 cores): one process has nothing to reduce; GPUs never build it.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    def status(key: str) -> int:
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024

    class StepProbe(TrainerCallback):
        """Peak memory and seconds of every optimizer step, one JSON line each (main process)."""

        def __init__(self, trainer):
            self.trainer, self.started = trainer, None

        def _write(self, record):
            if int(os.environ.get("RANK", 0)) == 0:
                with open(report, "a") as file:
                    file.write(json.dumps(record) + "\n")

        def on_train_begin(self, args, state, control, **kwargs):
            plugin = getattr(self.trainer.accelerator.state, "deepspeed_plugin", None)
            zero = plugin.deepspeed_config.get("zero_optimization", {}) if plugin else {}
            record = {"event": "train_begin", "deepspeed": bool(self.trainer.is_deepspeed_enabled),
                      "zero_stage": zero.get("stage"), "offload_optimizer": zero.get("offload_optimizer"),
                      "wrapped": type(self.trainer.model_wrapped).__name__,
                      "trainable": sum(p.numel() for p in self.trainer.model.parameters() if p.requires_grad)}  # fmt: skip
            if cuda:
                record.update(allocated=torch.cuda.memory_allocated(), reserved=torch.cuda.memory_reserved(),
                              device=torch.cuda.get_device_name(), total=torch.cuda.get_device_properties(0).total_memory)  # fmt: skip
            else:
                record.update(rss=status("VmRSS"))
            self._write(record)

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            else:
                open("/proc/self/clear_refs", "w").write("5")  # VmHWM := the current RSS
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            record = {"event": "step", "step": state.global_step, "seconds": time.perf_counter() - self.started}
            if cuda:
                record.update(max_allocated=torch.cuda.max_memory_allocated(),
                              max_reserved=torch.cuda.max_memory_reserved(), allocated=torch.cuda.memory_allocated())  # fmt: skip
            else:
                record.update(peak_rss=status("VmHWM"), rss=status("VmRSS"))
            self._write(record)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self._write({"event": "log", "step": state.global_step, "loss": logs["loss"]})

    trainer_class = getattr(sft, "_trainer_class", None)
    if trainer_class is None:
        raise SystemExit("videollamb_hf.sft._trainer_class is gone: update this recipe's probe")

    def probed():
        base = trainer_class()

        def __init__(self, *args, **kwargs):
            base.__init__(self, *args, **kwargs)
            self.add_callback(StepProbe(self))

        def save_model(self, *args, **kwargs):
            if save:
                return base.save_model(self, *args, **kwargs)
            return None  # the recipe measures training; TRL's script would save the whole model here

        return type(base.__name__, (base,), {"__init__": __init__, "save_model": save_model,
                                             "__module__": base.__module__})  # fmt: skip

    sft._trainer_class = probed  # `sft.main` builds `trl.SFTTrainer` from it
    return sft.main(sft_args)


# -- the driver -------------------------------------------------------------------------------------------------------


def write_checkpoint(folder: Path, size: str) -> dict:
    import torch

    from videollamb_hf.testing_utils import save_random_checkpoint

    marker = folder / "recipe-checkpoint.json"
    if marker.exists():
        return json.loads(marker.read_text())
    started = time.perf_counter()
    dtype = torch.bfloat16 if size == "7b" else torch.float32  # the CPU dry run trains in fp32
    written = save_random_checkpoint(folder, size=size, layout="native", dtype=dtype)
    info = {"repo": written["repo"], "bytes": written["total_bytes"], "dtype": str(dtype),
            "seconds": time.perf_counter() - started}  # fmt: skip
    marker.write_text(json.dumps(info))
    return info


def set_frames(repo: str, frames: int) -> None:
    """The processor's default frame count (TRL's collator calls the processor without one)."""
    path = Path(repo) / "processor_config.json"
    config = json.loads(path.read_text())
    config["video_processor"]["num_frames"] = frames
    path.write_text(json.dumps(config, indent=2))


def write_data(path: Path, rows: int, clips: tuple[str, ...]) -> None:
    with open(path, "w") as file:
        for i in range(rows):
            clip = VIDEOS / clips[i % len(clips)]
            row = {"messages": [{"role": "user", "content": [{"type": "video", "path": str(clip)},
                                                             {"type": "text", "text": "Describe the video."}]},
                                {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}],
                   "images": []}  # fmt: skip
            file.write(json.dumps(row) + "\n")


def write_launch_configs(work: Path, offload: bool) -> Path:
    zero = {"stage": 2, "overlap_comm": False, "contiguous_gradients": True}
    deepspeed = {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
                 "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
                 "zero_optimization": zero}  # fmt: skip
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        deepspeed["zero_force_ds_cpu_optimizer"] = False  # the trainer's torch AdamW: no DeepSpeed op to build
    (work / "deepspeed_zero2.json").write_text(json.dumps(deepspeed, indent=2))
    accelerate = (
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n"
        f"  deepspeed_config_file: {work / 'deepspeed_zero2.json'}\n  zero3_init_flag: false\n"
        "num_machines: 1\nnum_processes: 1\nmachine_rank: 0\nuse_cpu: false\n"
    )
    path = work / "accelerate_zero2.yaml"
    path.write_text(accelerate)
    return path


def plan_figure(mode: str, frames: int, text_tokens: int, offload: bool) -> dict | None:
    """The plan's GB for this run (1 GPU, ZeRO-2, micro-batch 1) at its own token count, from memory_figures.json."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_training_memory as plan
    finally:
        sys.path.pop(0)
    figures = json.loads(plan.FIGURES.read_text())
    if "activations" not in figures:
        return None
    saved = plan.ASSUMPTIONS["text_tokens"]
    plan.ASSUMPTIONS["text_tokens"] = text_tokens
    try:
        frames_key = 64 if frames > 16 else 16  # the plan has the 16- and 64-frame terms
        row = plan.per_gpu(figures, mode, "ZeRO-2", 1, frames_key)
    finally:
        plan.ASSUMPTIONS["text_tokens"] = saved
    if offload:
        row["total"] -= row["optimizer"]
        row["optimizer"] = 0.0
    row["frames_used"] = frames_key
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("lora", "bridge"), default="lora")
    parser.add_argument("--size", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--dry-run", action="store_true", help="--size tiny on the CPU (no GPU needed)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--offload", action="store_true", help="optimizer states on the CPU (DeepSpeed offload)")
    parser.add_argument("--workdir", default="gpu-train-recipe", help="checkpoint, data, configs, output")
    parser.add_argument("--output", help="JSON report (default: WORKDIR/recipe-<mode>-<size>.json)")
    parser.add_argument("--save", action="store_true", help="save the trained model at the end (TRL's default)")
    parser.add_argument("--child", nargs=2, metavar=("REPORT", "SAVE"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:  # the process `accelerate launch` started
        sys.exit(child(args.child[0], rest[1:] if rest[:1] == ["--"] else rest, args.child[1] == "1"))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    import torch

    size = "tiny" if args.dry_run else args.size
    cuda = torch.cuda.is_available()
    if size == "7b" and not cuda:
        raise SystemExit("--size 7b needs a GPU (the CPU path is --dry-run)")
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checkpoint = write_checkpoint(work / f"model-{size}", size)
    set_frames(checkpoint["repo"], args.frames)
    data = work / "train.jsonl"
    write_data(data, args.steps, DRY_RUN_CLIPS if size == "tiny" else CLIPS)
    launch_config = write_launch_configs(work, args.offload)
    report = work / f"steps-{args.mode}-{size}.jsonl"
    report.unlink(missing_ok=True)
    out_dir = work / f"out-{args.mode}-{size}"
    sft_args = ["--config", str(CONFIGS[args.mode]), "--model_name_or_path", checkpoint["repo"],
                "--dataset_name", str(data), "--output_dir", str(out_dir), "--max_steps", str(args.steps),
                "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
                "--save_strategy", "no", "--report_to", "none", "--seed", "0", "--gradient_checkpointing", "true",
                "--dataloader_num_workers", "0"]  # fmt: skip
    if cuda:
        sft_args += ["--bf16", "true", "--dtype", "bfloat16"]
    else:
        sft_args += ["--dtype", "float32"]  # bf16 is off on the CPU (videollamb_hf.training.cpu_launch_defaults)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config),
               str(Path(__file__).resolve()), "--child", str(report), "1" if args.save else "0", "--", *sft_args]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    launched = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    launch_seconds = time.perf_counter() - launched
    if result.returncode:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-8000:])
        raise SystemExit(f"the launch failed ({result.returncode})")
    records = [json.loads(line) for line in report.read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    begin = next((r for r in records if r["event"] == "train_begin"), {})
    losses = [r["loss"] for r in records if r["event"] == "log"]
    if len(steps) != args.steps:
        raise SystemExit(f"{len(steps)} steps recorded, {args.steps} expected")
    peak_key = "max_allocated" if cuda else "peak_rss"
    timed = [s["seconds"] for s in steps[1:]] or [steps[0]["seconds"]]  # the first step warms up
    from transformers import AutoProcessor

    import videollamb_hf  # noqa: F401
    from videollamb_hf.sft import longest_prompt, read_records

    processor = AutoProcessor.from_pretrained(checkpoint["repo"])
    tokens = longest_prompt(read_records(data), processor)
    video_slots = processor.video_seq_length if hasattr(processor, "video_seq_length") else None
    summary = {
        "mode": args.mode, "size": size, "device": begin.get("device", "cpu"),
        "engine": {k: begin.get(k) for k in ("deepspeed", "zero_stage", "offload_optimizer", "wrapped")},
        "trainable_parameters": begin.get("trainable"),
        "offload_optimizer": args.offload, "bf16": cuda, "gradient_checkpointing": True, "frames": args.frames,
        "steps": args.steps, "tokens_per_sample": tokens, "video_slots": video_slots,
        "memory_measure": "torch.cuda.max_memory_allocated / max_memory_reserved" if cuda else "VmHWM (peak RSS)",
        "before_first_step_gb": (begin.get("allocated", begin.get("rss", 0))) / 1e9,
        "peak_gb": max(s[peak_key] for s in steps) / 1e9,
        "peak_reserved_gb": max(s["max_reserved"] for s in steps) / 1e9 if cuda else None,
        "seconds_per_step_median": statistics.median(timed), "first_step_seconds": steps[0]["seconds"],
        "losses": losses, "per_step": steps, "checkpoint": checkpoint, "launch_seconds": launch_seconds,
        "wall_seconds": time.perf_counter() - started,
    }  # fmt: skip
    if size == "7b" and video_slots:
        summary["plan"] = plan_figure(args.mode, args.frames, tokens - video_slots, args.offload)
    output = Path(args.output) if args.output else work / f"recipe-{args.mode}-{size}.json"
    output.write_text(json.dumps(summary, indent=1) + "\n")
    engine = summary["engine"]
    print(f"{args.mode} at {size} on {summary['device']}: DeepSpeed {engine['deepspeed']}, ZeRO stage "
          f"{engine['zero_stage']}, optimizer offload {engine['offload_optimizer']}, model wrapped as "
          f"{engine['wrapped']}; {summary['trainable_parameters']:,} trainable parameters; {args.frames} frames, "
          f"{tokens} tokens a sample, {args.steps} steps")  # fmt: skip
    print(f"{'step':>4} {'seconds':>8} {'peak GB':>8}" + (f" {'reserved GB':>11}" if cuda else ""))
    for s in steps:
        print(f"{s['step']:>4} {s['seconds']:>8.2f} {s[peak_key] / 1e9:>8.2f}"
              + (f" {s['max_reserved'] / 1e9:>11.2f}" if cuda else ""))  # fmt: skip
    print(f"before the first step {summary['before_first_step_gb']:.2f} GB; peak {summary['peak_gb']:.2f} GB; "
          f"{summary['seconds_per_step_median']:.2f} s a step (median of steps 2-{args.steps}); losses "
          f"{[round(x, 3) for x in losses]}")  # fmt: skip
    plan = summary.get("plan")
    if plan:
        print(f"plan (bench_training_memory, 1 GPU, ZeRO-2, {plan['frames_used']} frames, {tokens} tokens): "
              f"{plan['total']:.1f} GB with its {plan['overhead']:.0f} GB allowance, "
              f"{plan['total'] - plan['overhead']:.1f} GB without (compare with max_memory_allocated); measured / plan "
              f"without allowance = {summary['peak_gb'] / (plan['total'] - plan['overhead']):.2f}")  # fmt: skip
    print(f"wrote {output} ({summary['wall_seconds']:.0f} s in all, the launch {launch_seconds:.0f} s)")


if __name__ == "__main__":
    main()
