"""The GPU suite: the released 7B shape (random weights) on one H100/H200 in bf16, once per attention implementation
(sdpa, then flash_attention_2 where transformers can use flash-attn), in one process sized for 9 minutes. Every
figure is one JSON line on stdout (and in `--output`); `--device cpu --size tiny` runs the same code paths with
smaller numbers (tests/test_gpu_suite.py), so the suite keeps working while no GPU is lent.

On the device machine (torch 2.11, transformers 5.17, no PyAV, no flash-attn, no network), after `bash
benchmarks/gpu_suite_wheels.sh` here (transformers 5.24 and this package as wheels in build/gpu-wheels, 13 MiB;
flash-attn is a CUDA extension built for one torch, not carried, so its lines say skipped there):

    run(carry=["build/gpu-wheels"], timeout_s=600, command=
        "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site build/gpu-wheels/*.whl"
        " && PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1"
        " python3 benchmarks/gpu_suite.py --device cuda --size 7b --output $OUT/gpu_suite.jsonl")

Anywhere else: `python benchmarks/gpu_suite.py [--device cuda|cpu] [--size 7b|mid|tiny] [--attn sdpa,...]
[--repeats 3] [--max-new-tokens 64] [--budget-s 480] [--output FILE] [--without-pyav]`.

A figure line: `{"figure": NAME, "value": NUMBER, "unit": ..., "attn": ..., "frames": N or null, "size": ...,
"device": ...}` plus context fields (`path`, `memory`, `repeats`, ...). A figure that was not measured has
`"value": null` and `"skipped": REASON` (flash_attn not installed; `--budget-s` passed: no new measurement starts
once the suite has run that long) or `"error": MESSAGE` (the exit status is then 1). The first line is
`{"environment": {...}, "settings": {...}}` (versions, GPU, whether PyAV is real or the placeholder; the options).

Figures, per attention implementation (`FIGURES`):

    load_or_init_s            building the model with random weights on the device, in the dtype (no CPU copy)
    weights_gb                parameter + buffer bytes / 1e9
    describe_encode_s         per frame count: `videollamb-hf describe`'s encoding (transform, towers, SceneTilling,
                              bridge), median of --repeats after one warm-up
    describe_latency_s        per frame count: encoding + the answer (prefill and exactly --max-new-tokens greedy
                              tokens), median; the frames are decoded already (no PyAV there)
    describe_peak_mem_gb      per frame count: peak memory of one describe, weights included
    stream_per_frame_s        `videollamb-hf stream` (its defaults: window 8, 48-token captions) over a synthetic
                              stream with a scene change every 16 frames: wall time / frames, captions included
    stream_captions           how many captions that stream produced (the work behind the figure above)
    stream_encode_per_frame_s the same stream without captions: towers, online SceneTilling, bridge steps
    sft_step_s                one training step (forward with labels, backward, AdamW step), activation
                              checkpointing on, one 16-frame video + prompt + answer; the second of two steps
    sft_step_peak_mem_gb      peak memory over the two steps (weights, gradients, AdamW state, activations)
    sft_loss                  the loss of that step (finite: the step computed something)
and once per run: `suite_wall_s` (the whole run, imports included).

Memory: on CUDA `torch.cuda.max_memory_allocated` (reset before each measurement; `reserved_gb` beside it); on
other devices the process's resident set, sampled every 2 ms (everything the process holds, not only tensors).
Frame counts: 16, 128 and 1,024 for 7b and mid; 16, 32 and 64 for tiny, whose 16 px frames make everything
cheap. The largest count goes through the CLI's chunked path (`--chunked-above`: 256 frames by default, 32 for
tiny), the others through one pixel tensor, as `videollamb-hf describe` does.

PyAV: `import videollamb_hf` imports it (`video_decoding.py`, reached from the package's `__init__`); the suite
never decodes a file (frames are arrays), so where PyAV is missing it registers a placeholder module that fails on
any use (`--without-pyav` forces that, to try it where PyAV is installed).
"""

import argparse
import functools
import gc
import importlib.machinery
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import threading
import time
import types
from dataclasses import dataclass


STARTED = time.perf_counter()

FIGURES = {
    "load_or_init_s": "s",
    "weights_gb": "GB",
    "describe_encode_s": "s",
    "describe_latency_s": "s",
    "describe_peak_mem_gb": "GB",
    "stream_per_frame_s": "s",
    "stream_captions": "count",
    "stream_encode_per_frame_s": "s",
    "sft_step_s": "s",
    "sft_step_peak_mem_gb": "GB",
    "sft_loss": "nats",
}
RUN_FIGURES = {"suite_wall_s": "s"}
INIT_FIGURES = ("load_or_init_s", "weights_gb")
# Figures measured once per frame count of `Plan.describe_frames`.
PER_FRAME_COUNT = ("describe_encode_s", "describe_latency_s", "describe_peak_mem_gb")
ATTENTION = ("sdpa", "flash_attention_2")
SCENE_LENGTH = 16  # frames per synthetic scene
ANSWER = "A person walks into the kitchen, opens the fridge, takes out a bottle of milk and pours a glass. " * 2


@dataclass(frozen=True)
class Plan:
    """What one size measures (frame counts scale with the model, the code paths do not)."""

    describe_frames: tuple[int, ...]
    chunked_above: int | None  # None: the CLI's `--chunked-above` default
    stream_frames: int
    sft_frames: int
    max_new_tokens: int  # of each describe answer (`--max-new-tokens`)
    stream_max_new_tokens: int | None  # of each caption; None: the CLI's default
    repeats: int  # timed describe calls (`--repeats`)


PLANS = {
    "7b": Plan(describe_frames=(16, 128, 1024), chunked_above=None, stream_frames=128, sft_frames=16,
               max_new_tokens=64, stream_max_new_tokens=None, repeats=3),
    "mid": Plan(describe_frames=(16, 128, 1024), chunked_above=None, stream_frames=128, sft_frames=16,
                max_new_tokens=64, stream_max_new_tokens=None, repeats=3),
    # Generation dominates a tiny run on a CPU: short answers keep the test quick; the paths are the same.
    "tiny": Plan(describe_frames=(16, 32, 64), chunked_above=32, stream_frames=64, sft_frames=16,
                 max_new_tokens=8, stream_max_new_tokens=8, repeats=1),
}  # fmt: skip


# -- environment --------------------------------------------------------------------------------------------------


def pyav_placeholder() -> types.ModuleType:
    """A module named `av` that raises `ImportError` on any use: `import videollamb_hf` imports PyAV, which only
    decoding needs. Dunder lookups raise `AttributeError` (what `getattr(module, "__file__", None)` expects), and
    `ImportError` is what libraries that probe PyAV (`torchvision.io`) catch."""
    module = types.ModuleType("av", "Placeholder for PyAV (not installed): the GPU suite decodes no video.")
    module.__spec__ = importlib.machinery.ModuleSpec("av", None)

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"PyAV is not installed (av.{name} was used): the GPU suite feeds frames as arrays.")

    module.__getattr__ = __getattr__
    return module


def import_package(without_pyav: bool) -> str:
    """Import videollamb_hf, with the PyAV placeholder where PyAV is missing (or `without_pyav`). Returns what
    `av` is: "installed" or "placeholder"."""
    placeholder = without_pyav or importlib.util.find_spec("av") is None
    if placeholder:
        from transformers.utils import import_utils

        # transformers caches whether PyAV exists: let it cache "no" (a None entry: `find_spec` says not found)
        # before the placeholder, which only videollamb_hf's `import av` is meant to get, takes its place.
        getattr(import_utils.is_av_available, "cache_clear", lambda: None)()
        sys.modules["av"] = None
        import_utils.is_av_available()
        sys.modules["av"] = pyav_placeholder()
    import videollamb_hf  # noqa: F401  (registers the model; imports av)

    return "placeholder" if placeholder else "installed"


def environment(device, pyav: str) -> dict:
    import torch
    import transformers

    import videollamb_hf

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "videollamb_hf": f"{videollamb_hf.__version__} ({videollamb_hf.__file__})",
        "pyav": pyav,
        "flash_attn": flash_attn_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def flash_attn_version() -> str | None:
    """The installed flash-attn's version (None: not installed), read from its metadata without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flash-attn")
    except PackageNotFoundError:
        return None


def flash_attention_unavailable() -> str | None:
    """Why `attn_implementation="flash_attention_2"` cannot run here, or None when transformers can use it."""
    from transformers.utils import is_flash_attn_2_available

    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attn is not installed (pip install flash-attn, or the `gpu` extra)"
    if not is_flash_attn_2_available():
        return f"flash_attn {flash_attn_version()} is installed, but transformers cannot use it here (CUDA, >= 2.3.3)"
    return None


# -- measuring ----------------------------------------------------------------------------------------------------


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory inside the `with` block, in bytes (`.peak`): on CUDA the allocator's peak since the block began
    (`reserved` beside it); elsewhere the resident set sampled every 2 ms by a thread."""

    def __init__(self, device):
        self.device = device
        self.peak = self.reserved = None
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_rss"

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            process = psutil.Process()
            self._stop = threading.Event()
            self._samples = [process.memory_info().rss]

            def sample():
                while not self._stop.wait(0.002):
                    self._samples.append(process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.reserved = torch.cuda.max_memory_reserved(self.device)
        else:
            import psutil

            self._stop.set()
            self._thread.join()
            self.peak = max(self._samples + [psutil.Process().memory_info().rss])
        return False

    def fields(self) -> dict:
        fields = {"memory": self.kind}
        if self.reserved is not None:
            fields["reserved_gb"] = round(self.reserved / 1e9, 3)
        return fields


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def free_memory_after_error() -> None:
    """What a failed measurement held (an out-of-memory error's tensors) goes back to the device."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class Reporter:
    """Prints the JSON lines, keeps the budget, and remembers errors (the exit status)."""

    def __init__(self, common: dict, budget_s: float, output=None):
        self.common, self.budget_s, self.output = common, budget_s, output
        self.errors = 0

    def emit(self, line: dict) -> None:
        text = json.dumps(line)
        print(text, flush=True)
        if self.output is not None:
            self.output.write(text + "\n")
            self.output.flush()

    def figure(self, name: str, value, frames=None, **context) -> None:
        unit = FIGURES.get(name) or RUN_FIGURES[name]
        value = float(f"{float(value):.9g}")  # 9 significant digits: microseconds and bytes survive
        self.emit({"figure": name, "value": value, "unit": unit, **self.common, "frames": frames, **context})

    def not_measured(self, names, frames=None, **why) -> None:
        for name in names:
            unit = FIGURES.get(name) or RUN_FIGURES[name]
            self.emit({"figure": name, "value": None, "unit": unit, **self.common, "frames": frames, **why})

    def over_budget(self) -> bool:
        return time.perf_counter() - STARTED > self.budget_s

    def budget_note(self) -> str:
        return f"budget: the run passed --budget-s {self.budget_s:g} s; no new measurement starts"

    def measure(self, names, frames, function):
        """Run `function` (which reports `names`) unless the budget is spent; an exception becomes error lines.
        Returns what `function` returned, or None when it did not run to the end."""
        if self.over_budget():
            self.not_measured(names, frames, skipped=self.budget_note())
            return None
        try:
            return function()
        except Exception as error:  # noqa: BLE001 - one failed figure must not lose the others
            self.errors += 1
            free_memory_after_error()
            text = str(error).strip()
            message = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
            self.not_measured(names, frames, error=message[:500])
            return None


# -- inputs -------------------------------------------------------------------------------------------------------


def synthetic_video(num_frames: int, size: int, seed: int = 0):
    """`(num_frames, size, size, 3)` uint8: a scene of another colour every `SCENE_LENGTH` frames, a diagonal
    gradient moving inside each (what SceneTilling and the towers see is not constant)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, size=(num_frames // SCENE_LENGTH + 1, 3)).astype(np.float32)
    y, x = np.mgrid[0:size, 0:size]
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        shade = 0.5 + 0.5 * (((x + y + 3 * t) % size) / size)  # (size, size)
        frames[t] = (shade[..., None] * colours[t // SCENE_LENGTH]).astype(np.uint8)
    return frames


def counting_video_processor_class():
    """[`VideoLlambVideoProcessor`] that counts the frames of an array as it will sample them. For a file the CLI
    counts by demuxing and chunks above `--chunked-above`; for an array the stock processor answers None and the
    CLI never chunks. With this, `cli.encode_video` takes the branch it takes for a long file."""
    import numpy as np

    from videollamb_hf import VideoLlambVideoProcessor

    class CountingVideoProcessor(VideoLlambVideoProcessor):
        def sampled_frame_count(self, video, num_frames=None, **kwargs):
            if isinstance(video, np.ndarray):
                return self._frame_count(self.num_frames if num_frames is None else num_frames, None, None, None)
            return super().sampled_frame_count(video, num_frames=num_frames, **kwargs)

    return CountingVideoProcessor


def build_processor(config, directory):
    """A processor for `config` as `testing_utils.save_random_checkpoint` builds one: the tiny tokenizer padded to
    the language model's vocabulary (so `<video>` / `<image>` get the config's ids), frames at the towers' size."""
    from transformers import AutoTokenizer

    from videollamb_hf import VideoLlambImageProcessor, VideoLlambProcessor
    from videollamb_hf.testing_utils import save_tiny_tokenizer

    vocab = config.text_config.vocab_size - 2  # the two placeholders come after the vocabulary
    tokenizer = AutoTokenizer.from_pretrained(save_tiny_tokenizer(directory, vocab))
    size = config.vision_config.image_size
    side, crop = {"shortest_edge": size}, {"height": size, "width": size}
    processor = VideoLlambProcessor(
        image_processor=VideoLlambImageProcessor(size=side, crop_size=crop),
        video_processor=counting_video_processor_class()(size=side, crop_size=crop, num_frames=config.num_frames),
        tokenizer=tokenizer, video_seq_length=config.video_seq_length, image_seq_length=config.image_seq_length,
    )  # fmt: skip
    if (processor.video_token_id, processor.image_token_id) != (config.video_token_id, config.image_token_id):
        raise AssertionError(
            f"placeholder ids {processor.video_token_id}/{processor.image_token_id} differ from the config's "
            f"{config.video_token_id}/{config.image_token_id}"
        )
    return processor


def build_model(config, device, dtype, attn: str, pad_token_id: int):
    """The model with random weights, built on `device` in `dtype` directly (7.5B parameters: 15 GB in bf16; an
    fp32 copy on the CPU first would take minutes), as `from_pretrained(..., attn_implementation=attn)` sets it
    up. `config` is copied (building sets its dtype and attention implementation)."""
    import copy

    import torch

    from videollamb_hf import VideoLlambForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = VideoLlambForConditionalGeneration._from_config(
            copy.deepcopy(config), dtype=dtype, attn_implementation=attn
        )
    model.config.random_weights = True
    model.generation_config.pad_token_id = pad_token_id
    return model.eval()


@dataclass
class Session:
    model: object
    processor: object
    device: object
    plan: Plan
    args: argparse.Namespace
    video: object  # the largest synthetic video; smaller counts take its first frames


# -- the measurements ---------------------------------------------------------------------------------------------


def exact_length(model, tokens: int):
    """Answers of exactly `tokens` tokens (random weights stop at a random EOS otherwise): `min_new_tokens`."""
    model.generation_config.min_new_tokens = tokens


def describe(session: Session, report: Reporter, frames: int) -> None:
    """`videollamb-hf describe`'s work after loading (`cli.encode_video` + `cli.answer_from_features`): one warm-up
    call, `--repeats` timed calls (medians of the encoding and of the whole), one more for the peak memory."""
    from videollamb_hf import cli

    model, processor, device = session.model, session.processor, session.device
    argv = ["describe", "frames", "--num-frames", str(frames), "--max-new-tokens", str(session.args.max_new_tokens),
            "--quiet"]  # fmt: skip
    if session.plan.chunked_above is not None:
        argv += ["--chunked-above", str(session.plan.chunked_above)]
    args = cli.build_parser().parse_args(argv)
    video = session.video[:frames]
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": args.prompt}]}]
    exact_length(model, args.max_new_tokens)

    def call() -> tuple[float, float, object]:
        synchronize(device)
        start = time.perf_counter()
        features, _ = cli.encode_video(model, processor, video, args)
        synchronize(device)
        encoded = time.perf_counter()
        cli.answer_from_features(model, processor, features, messages, args)
        synchronize(device)
        return encoded - start, time.perf_counter() - start, features

    call()
    timed = [call()[:2] for _ in range(session.args.repeats)]  # (encode, total); no features kept alive
    free_memory(device)
    with PeakMemory(device) as peak:
        features = call()[2]
    path = "chunked" if frames > args.chunked_above else "one_tensor"
    context = {"path": path, "repeats": session.args.repeats, "segments": len(features.scene_boundaries[0])}
    report.figure("describe_encode_s", statistics.median(t[0] for t in timed), frames, **context)
    report.figure("describe_latency_s", statistics.median(t[1] for t in timed), frames,
                  new_tokens=args.max_new_tokens, **context)  # fmt: skip
    report.figure("describe_peak_mem_gb", peak.peak / 1e9, frames, path=path, **peak.fields())


def stream(session: Session, report: Reporter, captions: bool) -> None:
    """`videollamb-hf stream`'s captioner with the command's defaults, fed the synthetic frames one by one."""
    from videollamb_hf import cli
    from videollamb_hf.streaming import CAPTION_PROMPT, StreamingCaptioner

    model, device = session.model, session.device
    argv = ["stream", "frames", "--quiet"]
    if session.plan.stream_max_new_tokens is not None:
        argv += ["--max-new-tokens", str(session.plan.stream_max_new_tokens)]
    args = cli.build_parser().parse_args(argv)
    generate_kwargs = {k: v for k, v in cli.generation_kwargs(args).items() if k != "max_new_tokens"}
    captioner = StreamingCaptioner(
        model, session.processor, window=args.window, min_scene_frames=args.min_scene_frames,
        max_cache_segments=args.max_cache_segments, caption_prompt=args.prompt or CAPTION_PROMPT,
        max_new_tokens=args.max_new_tokens, generate_kwargs=dict(generate_kwargs, min_new_tokens=args.max_new_tokens),
        captions=captions,
    )  # fmt: skip
    frames = session.video[: session.plan.stream_frames]
    timed = ((index / args.fps, frame) for index, frame in enumerate(frames))
    synchronize(device)
    start = time.perf_counter()
    events = list(captioner.run(timed))
    synchronize(device)
    per_frame = (time.perf_counter() - start) / len(frames)
    context = {"scenes": len(captioner.scenes)}
    if captions:
        report.figure("stream_per_frame_s", per_frame, len(frames), new_tokens=args.max_new_tokens, **context)
        report.figure("stream_captions", sum(event.kind == "caption" for event in events), len(frames), **context)
    else:
        report.figure("stream_encode_per_frame_s", per_frame, len(frames), **context)


def sft_batch(session: Session):
    """One training example as the SFT collator makes it: prompt (video slots) + answer, labels on the answer."""
    import torch

    from videollamb_hf.chat import prompt_ids

    processor, frames = session.processor, session.plan.sft_frames
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    prompt = prompt_ids(processor, messages)
    answer = processor.tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    device = session.device
    input_ids = torch.tensor([prompt + answer], device=device)
    labels = torch.tensor([[-100] * len(prompt) + answer], device=device)
    pixels = processor.video_processor(session.video[:frames], num_frames=frames)["pixel_values_videos"]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "pixel_values_videos": pixels.to(device)}  # fmt: skip


def sft_step(session: Session, report: Reporter) -> None:
    """Two training steps (the first creates the optimizer state); time of the second, peak over both."""
    import torch

    model, device = session.model, session.device
    batch = sft_batch(session)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"  # what the Trainer's default optimizer (adamw_torch_fused) runs there
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=fused)
    model.train()
    model.activation_checkpointing_enable()
    times = []
    try:
        with PeakMemory(device) as peak:
            for _ in range(2):
                synchronize(device)
                start = time.perf_counter()
                loss = model(**batch, use_cache=False).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                synchronize(device)
                times.append(time.perf_counter() - start)
        loss = float(loss.detach())
    finally:
        optimizer.zero_grad(set_to_none=True)
        del optimizer
        model.activation_checkpointing_disable()
        model.eval()
        free_memory(device)
    if not math.isfinite(loss):
        raise FloatingPointError(f"the SFT loss is {loss}")
    context = {"tokens": batch["input_ids"].shape[1], "trainable_parameters": sum(p.numel() for p in trainable),
               "optimizer": "AdamW" + (" (fused)" if fused else ""), "activation_checkpointing": True}  # fmt: skip
    report.figure("sft_step_s", times[-1], session.plan.sft_frames, **context)
    report.figure("sft_step_peak_mem_gb", peak.peak / 1e9, session.plan.sft_frames, **peak.fields(), **context)
    report.figure("sft_loss", loss, session.plan.sft_frames)


def run_attention(attn: str, config, processor, video, plan, args, common, output) -> int:
    """Every figure of `FIGURES` for one attention implementation. Returns the number of errors."""
    import torch

    device = torch.device(args.device)
    report = Reporter(dict(common, attn=attn), args.budget_s, output)
    steps = [(PER_FRAME_COUNT, frames, lambda session, frames=frames: describe(session, report, frames))
             for frames in plan.describe_frames]  # fmt: skip
    steps += [
        (("stream_per_frame_s", "stream_captions"), plan.stream_frames,
         lambda session: stream(session, report, captions=True)),
        (("stream_encode_per_frame_s",), plan.stream_frames, lambda session: stream(session, report, captions=False)),
        (("sft_step_s", "sft_step_peak_mem_gb", "sft_loss"), plan.sft_frames,
         lambda session: sft_step(session, report)),
    ]  # fmt: skip
    why = flash_attention_unavailable() if attn == "flash_attention_2" else None
    if why is not None:
        report.not_measured(INIT_FIGURES, skipped=why)
        for names, frames, _ in steps:
            report.not_measured(names, frames, skipped=why)
        return 0

    def init() -> Session:
        synchronize(device)
        start = time.perf_counter()
        model = build_model(config, device, getattr(torch, args.dtype), attn, processor.tokenizer.pad_token_id)
        synchronize(device)
        seconds = time.perf_counter() - start
        weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        report.figure("load_or_init_s", seconds, parameters=sum(p.numel() for p in model.parameters()))
        report.figure("weights_gb", weights / 1e9, dtype=args.dtype)
        return Session(model, processor, device, plan, args, video)

    session = report.measure(INIT_FIGURES, None, init)
    for names, frames, step in steps:
        if session is None:
            why = report.budget_note() if report.over_budget() else "the model was not built"
            report.not_measured(names, frames, skipped=why)
        else:
            report.measure(names, frames, functools.partial(step, session))
    if session is not None:
        session.model = None  # the next implementation's model takes the memory
    free_memory(device)
    return report.errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--size", default="7b", choices=sorted(PLANS), help="model shape (default: 7b, as released)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--attn", default=",".join(ATTENTION),
                        help=f"attention implementations, in order (default: {','.join(ATTENTION)})")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed describe calls after the warm-up, median (default: 3; 1 for tiny)")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens of each describe answer, exactly (default: 64; 8 for tiny)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="start no measurement after this many seconds of the run (default 480)")  # fmt: skip
    parser.add_argument("--output", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--without-pyav", action="store_true",
                        help="use the PyAV placeholder even where PyAV is installed (as on the device)")  # fmt: skip
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    plan = PLANS[args.size]
    args.repeats = plan.repeats if args.repeats is None else args.repeats
    args.max_new_tokens = plan.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    if args.repeats < 1 or args.max_new_tokens < 1:
        raise SystemExit("--repeats and --max-new-tokens must be at least 1")
    pyav = import_package(args.without_pyav)
    import torch

    from videollamb_hf.testing_utils import random_checkpoint_config

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    output = open(args.output, "a", encoding="utf-8") if args.output else None
    common = {"size": args.size, "device": device.type}
    errors = 0
    try:
        first = Reporter(common, args.budget_s, output)
        settings = {k: getattr(args, k) for k in ("attn", "dtype", "repeats", "max_new_tokens", "budget_s")}
        first.emit({"environment": environment(device, pyav), "settings": settings})
        config = random_checkpoint_config(args.size)
        with tempfile.TemporaryDirectory(prefix="gpu-suite-") as directory:
            processor = build_processor(config, directory)
        video = synthetic_video(max(plan.describe_frames + (plan.stream_frames, plan.sft_frames)),
                                config.vision_config.image_size)  # fmt: skip
        for attn in args.attn.split(","):
            errors += run_attention(attn.strip(), config, processor, video, plan, args, common, output)
        first.figure("suite_wall_s", time.perf_counter() - STARTED, attn=None)
    finally:
        if output is not None:
            output.close()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
