"""Memory plan for fine-tuning the released 7B VideoLLaMB: parameters per part and per training mode, activation
memory measured at two small sizes and scaled to 7B, the per-GPU memory of each mode under DDP, ZeRO-1/2/3 and FSDP,
accelerate's estimate beside ours, and the authors' own training setting checked against the plan.

    python benchmarks/bench_training_memory.py [--workdir DIR] [--render-only] [--no-write]

1. Parameters: the released config (`testing_utils.random_checkpoint_config("7b")`) built on the meta device, counted
   per part; the trainable / frozen split of each mode: full fine-tune (`freeze_towers`, the default: towers frozen,
   bridge + projector + LLM + LM head trained), bridge only (`freeze_language_model=True`) and LoRA as in
   `examples/sft/lora.yaml` (peft's `LoraConfig` applied to the meta model; checked against r x (in + out) per
   targeted Linear; `modules_to_save` trains a copy of the bridge and the projector and keeps the originals frozen).
2. Activations: one training step (forward + backward, `activation_checkpointing_enable()`, `train()`, labels on the
   answer only, transformers' own loss over the full logits) of the "tiny" and "small" shapes below, at 16/32/64
   frames of `dance.mp4` through the processor and short / long answers; one process per shape, mode and dtype
   (RUNS). The step is measured in two phases, the towers (no grad) + bridge, then the language model's forward +
   backward (the towers' working set is freed before the LM runs, so the step's peak is the larger of the two, not
   their sum). Memory: the peak bytes of the tensor storages the ops create, tracked by a `TorchDispatchMode` until
   each storage is freed (exact, as `torch.cuda.max_memory_allocated` counts on a GPU; torch keeps no CPU allocator
   statistics and tracemalloc does not see torch's allocations), above weights + gradients (a first step allocates
   the gradients; the measured one accumulates into them). The RSS high-water mark (`VmHWM`, reset through
   `/proc/self/clear_refs`, glibc with `MALLOC_MMAP_THRESHOLD_=65536`) is recorded beside it as a check. The small
   shape runs in fp32: bf16 matrix products in the backward run several times slower than fp32 on this CPU (no bf16
   units); the tiny shape runs both dtypes. Least-squares fits give bytes per LM token and per frame. Scaling: bytes
   per token = the layer inputs that checkpointing keeps (L x h elements) + what autograd saves for one decoder layer
   and for the final norm + LM head + loss (counted per token with `saved_tensors_hooks` on that shape's modules) +
   the loss's backward (the fp32 logits' gradient); towers' phase per frame = the pixels' copy + one frozen tower
   layer's no-grad working set (14 x tokens x width, for the frames of one tower chunk) + the kept CLS / pooled
   features. The formulas are checked against the measured slopes at both shapes; at 7B (bf16) they are multiplied
   by the largest measured / formula ratio (at least 1), and the fp32 pixel batch is added.
3. The plan: per-GPU GB = weights + gradients + optimizer states (+ engine buffers) + activations at micro-batch 1 +
   a fixed allowance (ASSUMPTIONS, printed with the table).
4. accelerate: `accelerate estimate-memory` takes Hub ids only (it asks the Hub for the model's info first), so its
   two helpers are called on the meta model: `calculate_maximum_sizes` (weights) and `estimate_training_usage`.
5. The authors' setting (`scripts/finetune_video_image*.slurm`, `scripts/zero1.json`, README of
   github.com/bigai-nlco/VideoLLaMB), with the plan's figure for it.

Measured constants live in `benchmarks/memory_figures.json`: the 7B inference figures measured by
`benchmarks/bench_real_size.py` (entered from its run, see `RESULTS.md`) and the activation slopes this script
measures (rewritten by each run; `--render-only` re-renders from the file). The combined table is written into
`benchmarks/RESULTS.md` between the `training-memory-plan` markers. About 10 minutes on 2 CPU cores.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "benchmarks" / "memory_figures.json"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CLIP = ROOT.parent / "shared" / "data" / "videos" / "dance.mp4"
START, END = "<!-- training-memory-plan:start -->", "<!-- training-memory-plan:end -->"
GB = 1e9

ASSUMPTIONS = {
    "weight_bytes": 2,  # bf16 weights, trainable and frozen
    "grad_bytes": 2,  # bf16 gradients of the trainable parameters
    "optimizer_bytes": 12,  # AdamW: fp32 master weights + 2 fp32 moments, per trainable parameter
    "ddp_bucket_bytes": 2,  # DDP's gradient buckets (gradient_as_bucket_view=False, the default): a second copy
    "overhead_gb": 3.0,  # CUDA context, NCCL / DeepSpeed buffers, allocator fragmentation: an allowance, not measured
    "gpu_gb": 80.0,
    "text_tokens": 896,  # prompt + answer tokens beside the video's slots (1,152 + 896 = 2,048, the paper's max length)
    "micro_batch": 1,
}

LORA = {"r": 16, "targets": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "regex": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        "modules_to_save": ["memory_bridge", "multi_modal_projector"]}  # fmt: skip

# The two measured shapes. "tiny": the test config (tiny tokenizer, 402 ids); "small": LLaMA of width 512, 8 layers,
# towers of width 256 at 112 px. Both with the released tower chunk (64 frames), so that 16-64 frames fit one chunk.
SMALL_TOWER = {"hidden_size": 256, "intermediate_size": 1024, "projection_dim": 256, "num_hidden_layers": 4,
               "num_attention_heads": 4, "image_size": 112, "patch_size": 14, "hidden_act": "quick_gelu",
               "layer_norm_eps": 1e-5}  # fmt: skip
SMALL_TEXT = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 4}  # fmt: skip

# (frames, answer words): 16-64 frames (one tower chunk) x short / long answers, and a centre point
GRID = ((16, 40), (16, 400), (64, 40), (64, 400), (32, 220))
# (shape, mode, dtype, inputs), one process each. fp32 for the small shape: bf16 matrix products in the backward run
# several times slower than fp32 on this CPU (AVX2, no bf16 units); the tiny shape runs both, to show the dtype's
# effect on the measured / formula ratio.
RUNS = [("tiny", "full", "bfloat16", GRID), ("tiny", "full", "float32", GRID), ("small", "full", "float32", GRID)]
RUNS += [("small", mode, "float32", ((16, 40), (16, 400))) for mode in ("bridge", "lora", "recurrent")]
MODES = ("full", "bridge", "lora", "recurrent")
MMAP_THRESHOLD = os.environ.get("BENCH_MMAP_THRESHOLD", "65536")  # glibc: allocations above this are mmapped
ENGINES = ("DDP", "ZeRO-2", "ZeRO-3", "FSDP")


def measured_config(size: str):
    from videollamb_hf.configuration_videollamb import VideoLlambConfig
    from videollamb_hf.testing_utils import TINY_TEXT, get_tiny_config

    text = dict(TINY_TEXT, vocab_size=402, max_position_embeddings=4096)
    if size == "tiny":
        return get_tiny_config(text_config=text, video_token_id=400, image_token_id=401, tower_chunk_size=64)
    return VideoLlambConfig(
        text_config=dict(text, **SMALL_TEXT), vision_config=SMALL_TOWER,
        image_config=dict(SMALL_TOWER, model_type="clip_vision_model"), video_token_id=400, image_token_id=401,
        bridge_hidden_size=256, bridge_num_attention_heads=4, bridge_intermediate_size=1024, pooled_grid_size=4,
        tower_chunk_size=64,
    )  # fmt: skip


# -- 1. parameters ----------------------------------------------------------------------------------------------------


def meta_model(config=None):
    import torch

    from videollamb_hf.modeling_videollamb import VideoLlambForConditionalGeneration
    from videollamb_hf.testing_utils import random_checkpoint_config

    with torch.device("meta"):
        return VideoLlambForConditionalGeneration(config or random_checkpoint_config("7b"))


def lora_formula(model) -> int:
    """r x (in + out) for every Linear of the language model that the LoRA config targets."""
    import torch

    total = 0
    for name, module in model.model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA["targets"]:
            total += LORA["r"] * (module.in_features + module.out_features)
    return total


def parameter_counts() -> dict:
    from peft import LoraConfig, get_peft_model

    model = meta_model()
    config = model.config
    parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.model.named_children()}
    parts["lm_head"] = model.lm_head.weight.numel()
    trainable_parts = {name: sum(p.numel() for p in child.parameters() if p.requires_grad)
                       for name, child in model.model.named_children()}  # fmt: skip
    trainable_parts["lm_head"] = parts["lm_head"] if model.lm_head.weight.requires_grad else 0
    total = sum(parts.values())
    towers = parts["video_tower"] + parts["image_tower"]
    bridge = parts["memory_bridge"] + parts["multi_modal_projector"]
    bridge_trainable = trainable_parts["memory_bridge"] + trainable_parts["multi_modal_projector"]
    unused = bridge - bridge_trainable  # released bridge weights no forward reads, frozen by the model
    trainable_full = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable_full != total - towers - unused or not config.freeze_towers:
        raise AssertionError("the released config should freeze the towers (and the bridge's unused weights) only")
    lora_by_formula = lora_formula(model)
    layer = model.model.language_model.layers[0]
    largest_unit = sum(p.numel() for p in layer.parameters())  # a LLaMA decoder layer: FSDP's / ZeRO-3's largest
    peft_model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=32, lora_dropout=0.05,
                                                  target_modules=LORA["regex"],
                                                  modules_to_save=LORA["modules_to_save"]))  # fmt: skip
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    lora_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    lora_total = sum(p.numel() for p in peft_model.parameters())
    if lora != lora_by_formula:
        raise AssertionError(f"LoRA parameters: peft {lora} != r x (in + out) {lora_by_formula}")
    root = parts["language_model"] - sum(sum(p.numel() for p in x.parameters())
                                         for x in model.model.language_model.layers)  # fmt: skip
    return {
        "parts": parts,
        "trainable_parts": trainable_parts,
        "unused_frozen": unused,
        "total": total,
        "video_seq_length": config.video_seq_length,
        "largest_unit": largest_unit,
        "fsdp_root": root + parts["lm_head"] + bridge,  # not in a wrapped layer: embeddings, norm, head, bridge
        "modes": {
            "full": {"trainable": trainable_full, "total": total},
            "bridge": {"trainable": bridge_trainable, "total": total},
            "lora": {"trainable": lora_trainable, "total": lora_total, "lora": lora, "modules_to_save": bridge},
        },
    }


# -- 2. activations ---------------------------------------------------------------------------------------------------


WORKER = r"""
import gc, json, sys, time, weakref
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
torch.set_num_threads(2)
from transformers import AutoModelForImageTextToText, AutoProcessor
import videollamb_hf  # noqa
args = json.loads(sys.argv[1])


class LiveBytes(TorchDispatchMode):
    # Bytes of the tensor storages the ops create while the mode is on: live now and the peak (what
    # torch.cuda.max_memory_allocated counts on a GPU, less the caching allocator's rounding and kernel workspaces).
    def __init__(self, known):
        super().__init__()
        self.known, self.live, self.current, self.peak = set(known), {}, 0, 0
    def _free(self, key):
        self.current -= self.live.pop(key, 0)
    def _track(self, t):
        st = t.untyped_storage()
        key = st._cdata
        if key in self.known or key in self.live:
            return
        self.live[key] = st.nbytes()
        self.current += st.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, key)
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out


def status(key): return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
def reset_hwm(): open("/proc/self/clear_refs", "w").write("5")  # VmHWM := the current RSS
processor = AutoProcessor.from_pretrained(args["repo"])
kwargs = {"freeze_language_model": args["mode"] == "bridge", "recurrent_loss": args["mode"] == "recurrent"}
model = AutoModelForImageTextToText.from_pretrained(args["repo"], dtype=getattr(torch, args["dtype"]), **kwargs)
if args["mode"] == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=args["regex"],
                                             modules_to_save=["memory_bridge", "multi_modal_projector"]))
core = model.get_base_model() if hasattr(model, "get_base_model") else model
core.activation_checkpointing_enable()
model.train()
words = "the video shows a man playing the drums on a street while people are dancing and reading a book".split()
def batch_of(frames, count):
    answer = " ".join(words[i % len(words)] for i in range(count))
    messages = [{"role": "user", "content": [{"type": "video", "path": args["clip"]},
                                             {"type": "text", "text": "What happens in the video?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    batch = processor.apply_chat_template([messages], tokenize=True, return_dict=True, return_tensors="pt",
                                          return_assistant_tokens_mask=True,
                                          processor_kwargs={"num_frames": frames, "add_special_tokens": False})
    labels = batch["input_ids"].masked_fill(batch.pop("assistant_masks") == 0, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "pixel_values_videos": batch["pixel_values_videos"], "labels": labels}
phase = {}
encode = core.model.get_video_features
def get_video_features(*a, **k):  # the towers (no grad) + the bridge: their peak, then the rest's apart
    features = encode(*a, **k)
    if "mode" in phase:
        phase["tower"], phase["tower_rss"] = phase["mode"].peak, status("VmHWM") - phase["baseline"]
        phase["mode"].peak = phase["mode"].current
        reset_hwm()
    return features
core.model.get_video_features = get_video_features
def step(inputs):
    loss = core.recurrent_loss(**inputs) if args["mode"] == "recurrent" else model(**inputs).loss
    loss.backward()
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
with torch.no_grad():
    for p in model.parameters():
        float(p.float().sum())  # the weights' pages in (they are views of the mapped checkpoint)
points = []
for frames, count in args["inputs"]:
    inputs = batch_of(frames, count)
    phase.clear()
    gc.collect()
    before = status("VmRSS")
    t = time.perf_counter()
    step(inputs)  # the first step allocates the gradients; the next ones accumulate in place
    seconds = time.perf_counter() - t
    gc.collect()
    known = [x.untyped_storage()._cdata for x in list(model.parameters()) + list(model.buffers())
             + [p.grad for p in model.parameters() if p.grad is not None] + list(inputs.values())]
    phase["mode"], phase["baseline"] = LiveBytes(known), status("VmRSS")
    reset_hwm()
    with phase["mode"]:
        step(inputs)
    lm, lm_rss = phase["mode"].peak, status("VmHWM") - phase["baseline"]
    points.append({"size": args["size"], "mode": args["mode"], "dtype": args["dtype"], "frames": frames,
                   "tokens": int(inputs["input_ids"].shape[1]), "labelled": int((inputs["labels"] != -100).sum()),
                   "tower_phase": phase["tower"], "lm_phase": lm, "peak": max(phase["tower"], lm),
                   "tower_phase_rss": phase["tower_rss"], "lm_phase_rss": lm_rss,
                   "left_after_step": phase["mode"].current, "step_rss_growth": phase["baseline"] - before,
                   "step_s": seconds, "grad_bytes": trainable * next(model.parameters()).element_size()})
print("RESULT " + json.dumps(points))
"""


def write_repos(work: Path) -> dict:
    import torch

    from videollamb_hf.testing_utils import save_random_checkpoint

    repos = {}
    for size in ("tiny", "small"):
        written = save_random_checkpoint(work / size, size="tiny", config=measured_config(size), dtype=torch.bfloat16)
        repos[size] = written["repo"]
    return repos


def run_worker(**args) -> list[dict]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD,
               PYTHONWARNINGS="ignore")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], capture_output=True, text=True,
                            env=env, cwd=ROOT)  # fmt: skip
    if result.returncode:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"worker {args} failed ({result.returncode})")
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def fit(points: list[dict], key: str, columns: tuple[str, ...]) -> dict:
    """`points[key]` = constant + sum(slope x column), least squares; a column whose value does not vary is left
    out (its slope None)."""
    import numpy as np

    used = [c for c in columns if len({p[c] for p in points}) > 1]
    a = np.array([[1.0] + [p[c] for c in used] for p in points])
    y = np.array([p[key] for p in points], dtype=float)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    residual = y - a @ coef
    out = {"constant": float(coef[0]), "max_abs_residual": float(abs(residual).max()), "points": len(points)}
    for c in columns:
        out[f"per_{c.rstrip('s')}"] = float(coef[1 + used.index(c)]) if c in used else None
    return out


def saved_bytes_per_token(config, dtype: str = "bfloat16", tokens: int = 64) -> dict:
    """Bytes autograd saves for backward, per token, for one LLaMA decoder layer and for the final norm + LM head +
    transformers' causal-LM loss of `config` (random weights in `dtype`, every position labelled), deduplicated by
    storage, parameters left out."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    text = config.text_config
    text._attn_implementation = "sdpa"
    kind = getattr(torch, dtype)
    torch.manual_seed(0)

    def count(modules, fn):
        params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
        saved = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                saved[ptr] = max(saved.get(ptr, 0), t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(saved.values()) / tokens

    h = torch.randn(1, tokens, text.hidden_size, dtype=kind, requires_grad=True)
    layer = LlamaDecoderLayer(text, 0).to(kind)
    rotary = LlamaRotaryEmbedding(text)
    position_ids = torch.arange(tokens)[None]
    cos_sin = tuple(x.to(kind) for x in rotary(h, position_ids))
    per_layer = count([layer], lambda: layer(h, position_ids=position_ids, position_embeddings=cos_sin))
    norm = LlamaRMSNorm(text.hidden_size).to(kind)
    head = torch.nn.Linear(text.hidden_size, text.vocab_size, bias=False).to(kind)
    labels = torch.randint(0, text.vocab_size, (1, tokens))
    per_head = count([norm, head], lambda: ForCausalLMLoss(head(norm(h)), labels, text.vocab_size))
    return {"layer": per_layer, "head": per_head}


def token_formula(config, saved: dict, element: int) -> float:
    """Bytes per LM token: the checkpointed layer inputs (L x h elements) + one layer's saved tensors (its
    recomputation in the backward) + the head's and the loss's + the loss's backward: the gradient of the fp32
    logits (4 x V bytes) and, in bf16, its cast back (2 x V)."""
    text = config.text_config
    logit_grads = text.vocab_size * (4 + (element if element != 4 else 0))
    return element * text.num_hidden_layers * text.hidden_size + saved["layer"] + saved["head"] + logit_grads


def input_pixel_bytes(config) -> int:
    """The fp32 pixel batch, per frame (alive through the whole step; made before the measured step here)."""
    return 3 * config.vision_config.image_size**2 * 4


def tower_frame_formula(config, frames: int, element: int) -> float:
    """Bytes per frame of the towers' phase at `frames` frames: the pixels' copy in the tower's dtype (none in fp32),
    the frozen tower's no-grad working set (one layer: 14 x tokens x width, the residual and the MLP's temporaries;
    one chunk's, so it stops growing past `tower_chunk_size` frames) and the kept CLS + pooled features."""
    tower = config.vision_config
    tokens = (tower.image_size // tower.patch_size) ** 2 + 1
    copy = 3 * tower.image_size**2 * element if element != 4 else 0
    kept = (config.pooled_grid_size**2 + 1) * config.bridge_hidden_size * element
    working = 14 * tokens * tower.hidden_size * element
    return copy + kept + working * min(frames, config.tower_chunk_size) / frames


def mean_tower_frame(config, element: int) -> float:
    """The formula's bytes per added frame between 16 and 64 frames (what the fitted slope measures)."""
    return (64 * tower_frame_formula(config, 64, element) - 16 * tower_frame_formula(config, 16, element)) / 48


def measure(work: Path) -> dict:
    repos = write_repos(work)
    points = []
    for size, mode, dtype, inputs in RUNS:
        t = time.perf_counter()
        run = run_worker(repo=repos[size], size=size, mode=mode, dtype=dtype, inputs=inputs, clip=str(CLIP),
                         regex=LORA["regex"])  # fmt: skip
        for p in run:
            print(f"  {size:>5} {mode:>9} {dtype:>8} frames {p['frames']:>3} tokens {p['tokens']:>5}: towers+bridge "
                  f"{p['tower_phase'] / 2**20:6.1f} MiB (RSS {p['tower_phase_rss'] / 2**20:6.1f}), LM fwd+bwd "
                  f"{p['lm_phase'] / 2**20:6.1f} MiB (RSS {p['lm_phase_rss'] / 2**20:6.1f}), first step "
                  f"{p['step_s']:.1f} s", flush=True)  # fmt: skip
        print(f"  ({time.perf_counter() - t:.0f} s; RSS growth in the first step (gradients + caches) "
              f"{run[0]['step_rss_growth'] / 2**20:.1f} MiB, gradients {run[0]['grad_bytes'] / 2**20:.1f} MiB)",
              flush=True)  # fmt: skip
        points += run
    fits = {}
    for size, mode, dtype, _ in RUNS:
        chosen = [p for p in points if (p["size"], p["mode"], p["dtype"]) == (size, mode, dtype)]
        fits[f"{size}/{mode}/{dtype}"] = {"tower": fit(chosen, "tower_phase", ("frames",)),
                                          "lm": fit(chosen, "lm_phase", ("tokens", "frames"))}  # fmt: skip
    return {"points": points, "fits": fits}


def shape_configs() -> dict:
    from videollamb_hf.testing_utils import random_checkpoint_config

    return {"tiny": measured_config("tiny"), "small": measured_config("small"), "7b": random_checkpoint_config()}


def scale(activations: dict) -> dict:
    """The formulas at each measured shape and dtype beside the measured slopes, and the 7B (bf16) figures: the
    formula x the larger measured / formula ratio (at least 1)."""
    configs = shape_configs()
    out = {}
    for key in ("tiny/bfloat16", "tiny/float32", "small/float32", "7b/bfloat16"):
        size, dtype = key.split("/")
        config, element = configs[size], 2 if dtype == "bfloat16" else 4
        saved = saved_bytes_per_token(config, dtype)
        text = config.text_config
        row = {"checkpointed_per_token": element * text.num_hidden_layers * text.hidden_size,
               "saved_layer_per_token": saved["layer"], "saved_head_per_token": saved["head"],
               "formula_per_token": token_formula(config, saved, element),
               "formula_tower_per_frame": mean_tower_frame(config, element),
               "kept_per_frame": (config.pooled_grid_size**2 + 1) * config.bridge_hidden_size * element}  # fmt: skip
        fitted = activations["fits"].get(f"{size}/full/{dtype}")
        if fitted:
            row["measured_per_token"] = fitted["lm"]["per_token"]
            row["measured_tower_per_frame"] = fitted["tower"]["per_frame"]
            row["measured_lm_per_frame"] = fitted["lm"]["per_frame"]
            row["token_ratio"] = row["measured_per_token"] / row["formula_per_token"]
            row["frame_ratio"] = row["measured_tower_per_frame"] / row["formula_tower_per_frame"]
        out[key] = row
    measured = [out[k] for k in ("tiny/bfloat16", "tiny/float32", "small/float32")]
    seven, config = out["7b/bfloat16"], configs["7b"]
    seven["token_ratio_used"] = max(1.0, *(r["token_ratio"] for r in measured))
    seven["frame_ratio_used"] = max(1.0, *(r["frame_ratio"] for r in measured))
    seven["per_token"] = seven["formula_per_token"] * seven["token_ratio_used"]
    seven["input_per_frame"] = input_pixel_bytes(config)
    for frames in (16, 64):
        seven[f"tower_phase_{frames}"] = frames * (
            tower_frame_formula(config, frames, 2) * seven["frame_ratio_used"] + input_pixel_bytes(config)
        )
        seven[f"lm_frames_{frames}"] = frames * input_pixel_bytes(config)  # the pixel batch, alive all along
    # each mode against the full fine-tune's slope over the same inputs (the modes run the 16-frame points only)
    seven["mode_token_factor"] = {}
    for mode in MODES:
        inputs = {
            (p["frames"], p["tokens"]) for p in activations["points"] if p["size"] == "small" and p["mode"] == mode
        }
        same = [p for p in activations["points"] if (p["size"], p["mode"], p["dtype"]) == ("small", "full", "float32")
                and (p["frames"], p["tokens"]) in inputs]  # fmt: skip
        full = fit(same, "lm_phase", ("tokens",))["per_token"]
        seven["mode_token_factor"][mode] = activations["fits"][f"small/{mode}/float32"]["lm"]["per_token"] / full
    return out


# -- 3. the plan ------------------------------------------------------------------------------------------------------


def activation_gb(figures: dict, frames: int, mode: str = "full", micro_batch: int | None = None) -> float:
    """Activations at 7B for one micro-batch: the larger of the towers' phase (the frames) and the language model's
    forward + backward (LM tokens = the video's slots + ASSUMPTIONS' text, x bytes per token; + the frames' terms
    that stay), x micro-batch (an upper bound: the towers run one video at a time). Every mode takes the full
    fine-tune's bytes per token x the mode's factor measured at the small shape (bridge-only, LoRA, recurrent loss)."""
    seven = figures["activations"]["scaled"]["7b/bfloat16"]
    tokens = figures["parameters"]["video_seq_length"] + ASSUMPTIONS["text_tokens"]
    factor = seven["mode_token_factor"][mode]
    lm = tokens * seven["per_token"] * factor + seven[f"lm_frames_{frames}"]
    per_sample = max(lm, seven[f"tower_phase_{frames}"])
    return per_sample * (micro_batch or ASSUMPTIONS["micro_batch"]) / GB


def per_gpu(figures: dict, mode: str, engine: str, gpus: int, frames: int, micro_batch: int | None = None) -> dict:
    params = figures["parameters"]
    counts = params["modes"]["lora" if mode == "lora" else "bridge" if mode == "bridge" else "full"]
    total, trainable = counts["total"], counts["trainable"]
    a = ASSUMPTIONS
    shard_weights = engine in ("ZeRO-3", "FSDP")
    shard_grads = engine in ("ZeRO-2", "ZeRO-3", "FSDP")
    shard_optimizer = engine != "DDP"
    n = gpus
    weights = a["weight_bytes"] * total / (n if shard_weights else 1)
    grads = a["grad_bytes"] * trainable / (n if shard_grads else 1)
    if engine == "DDP" and n > 1:
        grads += a["ddp_bucket_bytes"] * trainable
    optimizer = a["optimizer_bytes"] * trainable / (n if shard_optimizer else 1)
    gathered = 0.0
    if shard_weights and n > 1:  # the all-gathered bf16 working set: two decoder layers (+ FSDP's root unit)
        gathered = a["weight_bytes"] * (2 * params["largest_unit"] + (params["fsdp_root"] if engine == "FSDP" else 0))
    act = activation_gb(figures, frames, mode, micro_batch)
    total_gb = (weights + grads + optimizer + gathered) / GB + act + a["overhead_gb"]
    return {"weights": weights / GB, "grads": grads / GB, "optimizer": optimizer / GB, "gathered": gathered / GB,
            "activations": act, "overhead": a["overhead_gb"], "total": total_gb,
            "fits": total_gb <= a["gpu_gb"]}  # fmt: skip


# -- 4. accelerate ----------------------------------------------------------------------------------------------------


def accelerate_estimate() -> dict:
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    model = meta_model()  # fp32 on meta, as `create_empty_model` builds it
    total, (largest, names) = calculate_maximum_sizes(model)
    out = {"fp32_bytes": total, "largest_layer_bytes": largest, "largest_layer": names[0] if names else ""}
    for dtype in ("float32", "bfloat16"):
        usage = estimate_training_usage(total, dtype)
        out[f"adam_{dtype}"] = max(usage.values())  # what the CLI prints as "Training using Adam"
        out[f"parts_{dtype}"] = usage
    try:  # the CLI itself, on a folder: does it run offline?
        from accelerate.commands.estimate import create_empty_model

        create_empty_model(str(ROOT), library_name="transformers", trust_remote_code=True)
        out["cli_offline"] = "ran"
    except Exception as error:  # noqa: BLE001 - reported as is
        out["cli_offline"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return out


# -- 5. the authors' setting ------------------------------------------------------------------------------------------


AUTHORS = {
    "source": "github.com/bigai-nlco/VideoLLaMB (HEAD a885b99): scripts/finetune_video_image.slurm, "
    "scripts/finetune_video_image_loss.slurm, scripts/zero1.json, README.md, llava/train/train.py, train_mem.py",
    "gpus": "4 x A800-80G, one node (README: 'Training takes 23 hours for LLaVA-1.5-7B in 4-A800-80G'; "
    "#SBATCH --gres=gpu:4)",
    "engine": "DeepSpeed ZeRO-1 (`--deepspeed ./scripts/zero1.json`: stage 1, bf16 auto; zero2/zero3 json files are "
    "in the repo but unused by the scripts)",
    "batch": "per-device 8 (4 in the recurrent-loss script), gradient accumulation 1: 32 (16) samples a step",
    "frames": "16 (`--num_frames 16`), model_max_length 2048",
    "precision": "bf16 + tf32, gradient checkpointing, flash-attention 2 (train_mem.py)",
    "trained": "towers frozen (`--freeze_video_tower/--freeze_image_tower True`); the LLM, the memory bridge and its "
    "projector train (no --freeze_backbone, no --tune_mm_mlp_adapter, no LoRA): our full fine-tune",
}


def authors_prediction(figures: dict) -> dict:
    params = figures["parameters"]["modes"]["full"]
    a = ASSUMPTIONS
    out = {}
    runs = (
        ("ZeRO-1", "main (batch 8)", 8, "full"),
        ("ZeRO-1", "recurrent loss (batch 4)", 4, "recurrent"),
        ("ZeRO-2", "main (batch 8)", 8, "full"),
    )  # the last: theirs with ZeRO-2 instead, for comparison
    for engine, label, batch, mode in runs:
        weights = a["weight_bytes"] * params["total"] / GB
        grads = a["grad_bytes"] * params["trainable"] / (1 if engine == "ZeRO-1" else 4) / GB  # ZeRO-1: unsharded
        optimizer = a["optimizer_bytes"] * params["trainable"] / 4 / GB
        act = activation_gb(figures, 16, mode, batch)
        total = weights + grads + optimizer + act + a["overhead_gb"]
        out[f"{engine}, 4 GPUs, 16 frames, {label}"] = {"weights": weights, "grads": grads, "optimizer": optimizer,
                                                          "activations": act,
                      "total": total, "fits": total <= a["gpu_gb"]}  # fmt: skip
    return out


# -- 6. output --------------------------------------------------------------------------------------------------------


def b(n: float) -> str:
    return f"{n / 1e9:.3f}B"


def render(figures: dict) -> str:
    params, acts, acc = figures["parameters"], figures["activations"], figures["accelerate"]
    inference = figures["inference_7b"]
    cli_offline = acc["cli_offline"].replace("`", "'").replace(str(ROOT), "<the checkout>")
    scaled = acts["scaled"]
    seven = scaled["7b/bfloat16"]
    tokens = params["video_seq_length"] + ASSUMPTIONS["text_tokens"]
    lines = [f"## Training memory plan (7B) (`python {Path(__file__).relative_to(ROOT)}`)", ""]
    lines += [
        "Generated from `benchmarks/memory_figures.json` (the measured constants: the 7B inference figures of "
        "`bench_real_size.py` above and the activation slopes measured here). Per-GPU GB = bf16 weights (2 bytes a "
        "parameter, trainable or frozen) + bf16 gradients (2 bytes a trainable parameter) + AdamW states (fp32 master "
        "+ 2 fp32 moments: 12 bytes a trainable parameter; 16 bytes in all under DDP) + engine buffers + activations "
        f"of one micro-batch with gradient checkpointing at {tokens:,} LM tokens ({params['video_seq_length']:,} video "
        f"slots + {ASSUMPTIONS['text_tokens']} text) + a fixed {ASSUMPTIONS['overhead_gb']:.0f} GB allowance "
        "(CUDA context, communication buffers, fragmentation: an allowance, not measured). ZeRO-2 shards gradients "
        "and optimizer states over the GPUs, ZeRO-3 and FSDP (FULL_SHARD) everything, plus their all-gathered bf16 "
        "working set (two decoder layers; FSDP also its root unit: embeddings, LM head, bridge, projector); DDP keeps "
        "a second copy of the gradients in its buckets (`gradient_as_bucket_view=False`, the default). Fits = at "
        f"most {ASSUMPTIONS['gpu_gb']:.0f} GB.",
        "",
        "Parameters (the released config on the meta device):",
        "",
        "| part | parameters | bf16 GB | trained in a full fine-tune |",
        "|---|---|---|---|",
    ]
    for name, count in params["parts"].items():
        lines.append(f"| {name} | {count:,} | {2 * count / GB:.2f} | {params['trainable_parts'][name]:,} |")
    lines.append(f"| **total** | **{params['total']:,}** | **{2 * params['total'] / GB:.2f}** | "
                 f"**{params['modes']['full']['trainable']:,}** |")  # fmt: skip
    lines += ["", "| mode | trainable | frozen | trainable % |", "|---|---|---|---|"]
    names = {"full": "full fine-tune (towers frozen)", "bridge": "bridge only (`freeze_language_model`)",
             "lora": "LoRA r=16 (`examples/sft/lora.yaml`)"}  # fmt: skip
    for mode, counts in params["modes"].items():
        frozen = counts["total"] - counts["trainable"]
        lines.append(f"| {names[mode]} | {counts['trainable']:,} | {frozen:,} | "
                     f"{100 * counts['trainable'] / counts['total']:.2f}% |")  # fmt: skip
    lora = params["modes"]["lora"]
    lines += [
        "",
        f"LoRA: {lora['lora']:,} adapter parameters (peft's count = r x (in + out) over the 224 targeted Linears) + "
        f"{lora['modules_to_save']:,} in the trained copies of the bridge and projector (`modules_to_save`; peft keeps "
        "the frozen originals too, counted in the frozen column; the copies' "
        f"{params['unused_frozen']:,} weights that no forward reads are trainable there, the model itself freezes "
        "them: `VideoLlambMemoryBridge.freeze_unused`).",
        "",
        "Activations, measured: one training step on this CPU per point, in two phases: the towers (no grad) + "
        "bridge, then the language model's forward + backward. Bytes are the peak of the tensor storages the ops "
        "create (a `TorchDispatchMode` that tracks every storage until it is freed: what "
        "`torch.cuda.max_memory_allocated` counts on a GPU, without RSS's allocator noise) above weights + "
        "gradients; the RSS high-water mark (`VmHWM`, reset through `/proc/self/clear_refs`) is recorded beside it "
        "in `memory_figures.json` as a check. Least-squares fits over the points:",
        "",
        "| shape | mode | dtype | points | LM phase: per token | LM phase: per frame | towers phase: per frame "
        "| largest residual |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def kib(value):
        return f"{value / 1024:.1f} KiB" if value is not None else "-"

    def ratio(value):
        return f"{value:.2f}" if value is not None else "-"

    for key, f in acts["fits"].items():
        size, mode, dtype = key.split("/")
        residual = max(f["lm"]["max_abs_residual"], f["tower"]["max_abs_residual"])
        lines.append(f"| {size} | {mode} | {dtype} | {f['lm']['points']} | {kib(f['lm']['per_token'])} | "
                     f"{kib(f['lm']['per_frame'])} | {kib(f['tower']['per_frame'])} | {residual / 2**20:.2f} MiB |")  # fmt: skip
    lines += [
        "",
        "Scaling. Per LM token = L x h elements (the layer inputs that checkpointing keeps) + what autograd saves for "
        "one decoder layer (its recomputation in the backward) + for the final norm, LM head and loss (the fp32 "
        "logits), the last two counted per token with `saved_tensors_hooks` on that shape's own modules, + the "
        "loss's backward (the fp32 logits' gradient, 4 x V bytes, and in bf16 its cast, 2 x V). Towers' "
        "phase per frame = the pixels' copy in the tower's dtype + one frozen tower layer's no-grad working set "
        "(14 x tokens x width, for the frames of one 64-frame chunk) + the kept CLS and pooled features. The LM "
        "phase's fitted frame term is negative: at the 16-frame points SceneTilling's last segment fills fewer "
        "than all the video slots, the unused slots are masked, and the T x T attention mask that adds is what that "
        "term picks up, not a per-frame cost (at 7B such a mask is at most 17 MB at 2,048 tokens); the plan counts "
        "no LM-phase frame term beyond the pixel batch. At 7B: the formula x the largest "
        "measured / formula ratio of the three measured rows (at least 1), + the fp32 pixel batch (alive through "
        "the step; made before the measured step here).",
        "",
        "| shape / dtype | L h | saved, one layer | saved, head + loss | formula per token | measured | ratio "
        "| towers: formula per frame | measured | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in scaled.items():
        lines.append(
            f"| {key} | {kib(row['checkpointed_per_token'])} | {kib(row['saved_layer_per_token'])} | "
            f"{kib(row['saved_head_per_token'])} | {kib(row['formula_per_token'])} | "
            f"{kib(row.get('measured_per_token'))} | {ratio(row.get('token_ratio'))} | "
            f"{kib(row['formula_tower_per_frame'])} | {kib(row.get('measured_tower_per_frame'))} | "
            f"{ratio(row.get('frame_ratio'))} |"
        )
    factors = ", ".join(f"{m} {v:.2f}" for m, v in seven["mode_token_factor"].items() if m != "full")
    lm16 = tokens * seven["per_token"] + seven["lm_frames_16"]
    lines += [
        "",
        f"7B (bf16): {seven['per_token'] / 1024:.0f} KiB per LM token (formula x {seven['token_ratio_used']:.2f}), "
        f"{lm16 / GB:.2f} GB for the LM phase at {tokens:,} tokens and 16 frames; towers' phase "
        f"{seven['tower_phase_16'] / GB:.2f} GB at 16 frames and {seven['tower_phase_64'] / GB:.2f} GB at 64 "
        f"(formula x {seven['frame_ratio_used']:.2f}, fp32 pixels included; `bench_long_video_real_width.py` "
        f"measured {inference['long_video_chunk_constant_gb']:.2f} GB for a 64-frame chunk at this width in inference, "
        "tower + transform): the LM phase sets the peak. "
        f"Per-token slope of the other modes / full fine-tune, measured at the small shape: {factors}; the plan "
        "applies these factors to the 7B per-token figure (LoRA's adapters save their inputs and dropout masks in the "
        "recomputed layer; the recurrent loss runs the LM once per segment, up to 4 with top-3 SceneTilling).",
        "",
    ]
    # the combined table
    lines += [
        "The plan, with the measured 7B inference figures (GB per GPU; `yes`/`NO`: fits in 80 GB):",
        "",
        "| workload | engine | 8 GPUs, 16 frames | 8 GPUs, 64 frames | 1 GPU, 16 frames | 1 GPU, 64 frames | source |",
        "|---|---|---|---|---|---|---|",
        f"| inference: weights (bf16) | - | - | - | {inference['weights_bf16_gb']:.2f} | "
        f"{inference['weights_bf16_gb']:.2f} | measured, bench_real_size |",
        f"| inference: describe (bf16) | - | - | - | {inference['describe_16_frames_peak_gb']:.2f} | "
        f"{inference['describe_16_frames_peak_gb'] + (seven['tower_phase_64'] - seven['tower_phase_16']) / GB:.2f} "
        "| 16: measured peak RSS (CPU), bench_real_size; 64: + 48 frames of the towers' phase (plan) |",
    ]
    for mode in ("full", "bridge", "lora"):
        for engine in ENGINES:
            cells = []
            for gpus in (8, 1):
                for frames in (16, 64):
                    r = per_gpu(figures, mode, engine, gpus, frames)
                    cells.append(f"{r['total']:.1f} {'yes' if r['fits'] else 'NO'}")
            lines.append(f"| train: {names[mode]} | {engine} | " + " | ".join(cells) + " | plan |")
    lines += ["", "Where the GB go (16 frames):", "",
              "| mode | engine | GPUs | weights | grads (+ buckets) | optimizer | gathered | activations | allowance "
              "| total |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for mode in ("full", "bridge", "lora"):
        for engine in ENGINES:
            for gpus in (8, 1):
                r = per_gpu(figures, mode, engine, gpus, 16)
                lines.append(f"| {mode} | {engine} | {gpus} | {r['weights']:.2f} | {r['grads']:.2f} | "
                             f"{r['optimizer']:.2f} | {r['gathered']:.2f} | {r['activations']:.2f} | "
                             f"{r['overhead']:.1f} | {r['total']:.1f} |")  # fmt: skip
    lines += [
        "",
        "At 1 GPU ZeRO-2/3 and FSDP shard nothing (the figures equal DDP's without buckets); only optimizer offload "
        "(`--offload` of `benchmarks/gpu_train_recipe.py`, DeepSpeed `offload_optimizer: cpu`) moves the 12 bytes a "
        "trainable parameter to host memory.",
        "",
        "accelerate's estimate. `accelerate estimate-memory` takes Hub ids only (it asks the Hub for the model's "
        f'info before building it; on this repository\'s folder: "{cli_offline}"), so its helpers '
        "`calculate_maximum_sizes` and `estimate_training_usage` run on the meta model:",
        "",
        "| | accelerate | ours | ours / accelerate |",
        "|---|---|---|---|",
    ]
    ours_weights = 2 * params["total"]
    ours_all = 16 * params["total"]  # every parameter trained under DDP on one GPU, no activations
    ours_full = per_gpu(figures, "full", "DDP", 1, 16)
    lines += [
        f"| weights | {acc['fp32_bytes'] / GB:.2f} GB fp32, {acc['fp32_bytes'] / 2 / GB:.2f} GB half | "
        f"{ours_weights / GB:.2f} GB bf16 | {ours_weights / (acc['fp32_bytes'] / 2):.2f} (half) |",
        f"| largest layer | {acc['largest_layer_bytes'] / GB:.2f} GB fp32 (`{acc['largest_layer']}`) | | |",
        f"| training, Adam, float32 | {acc['adam_float32'] / GB:.1f} GB | {ours_all / GB:.1f} GB (16 bytes x every "
        f"parameter) | {ours_all / acc['adam_float32']:.2f} |",
        f"| training, Adam, bf16 mixed | {acc['adam_bfloat16'] / GB:.1f} GB | {ours_full['total']:.1f} GB (full "
        f"fine-tune, towers frozen, 1 GPU, with activations and allowance) | "
        f"{ours_full['total'] / (acc['adam_bfloat16'] / GB):.2f} |",
        "",
        'accelerate\'s "Training using Adam" is the largest single component, not their sum: for mixed precision '
        "its Adam states (2 x the fp32 size = 8 bytes a parameter); the sum of its own components (fp32 model + "
        "fp32 and half gradients + states) would be "
        f"{sum(acc['parts_bfloat16'][k] for k in ('model', 'gradients', 'optimizer')) / GB:.1f} GB. It counts every "
        "parameter as trained and no activations.",
        "",
    ]
    authors = figures["authors_prediction"]
    lines += ["The authors' setting (" + AUTHORS["source"] + "):", ""]
    lines += [f"- {k}: {v}" for k, v in AUTHORS.items() if k != "source"]
    lines += ["", "| their run | weights | grads | optimizer (/4) | activations | allowance | total | fits 80 GB |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, r in authors.items():
        lines.append(f"| {label} | {r['weights']:.2f} | {r['grads']:.2f} | "
                     f"{r['optimizer']:.2f} | {r['activations']:.2f} | {ASSUMPTIONS['overhead_gb']:.0f} | "
                     f"{r['total']:.1f} | {'yes' if r['fits'] else 'NO'} |")  # fmt: skip
    theirs = authors["ZeRO-1, 4 GPUs, 16 frames, main (batch 8)"]
    no_checkpointing = seven["saved_layer_per_token"] * shape_configs()["7b"].text_config.num_hidden_layers * tokens
    lines += [
        "",
        f"The plan says their run fits: {theirs['total']:.0f} GB of 80 on each A800 with every sample at "
        f"{tokens:,} tokens (their `model_max_length`: the worst case), {theirs['activations']:.1f} GB of it the "
        f"activations of 8 samples; micro-batch 16 would not ({theirs['total'] + theirs['activations']:.0f} GB), "
        "nor would dropping gradient checkpointing (by the same count every layer would keep its "
        f"{seven['saved_layer_per_token'] / 1024:.0f} KiB a token: "
        f"{no_checkpointing / GB:.1f} GB a 2,048-token sample). ZeRO-2 (gradients sharded too) would free about "
        f"{theirs['grads'] * 3 / 4:.0f} GB each. Their flash-attention 2 keeps attention O(T), as the counted `sdpa` "
        "layer does.",
        "",
    ]
    return "\n".join(lines)


def write_section(markdown: str) -> None:
    text = RESULTS.read_text()
    block = f"{START}\n{markdown.rstrip()}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="scratch folder for the two measured checkpoints (default: a temp dir)")
    parser.add_argument("--render-only", action="store_true", help="re-render from memory_figures.json")
    parser.add_argument("--no-write", action="store_true", help="print only; write neither the JSON nor RESULTS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    figures = json.loads(FIGURES.read_text())
    if not args.render_only:
        print("1. parameters (meta device)", flush=True)
        figures["parameters"] = parameter_counts()
        print("2. activations (one training step per process)", flush=True)
        with tempfile.TemporaryDirectory(dir=args.workdir) as work:
            activations = measure(Path(work))
        activations["scaled"] = scale(activations)
        activations["method"] = ("peak bytes of the storages created under a TorchDispatchMode (tower_phase, "
                                 "lm_phase); *_rss: VmHWM after /proc/self/clear_refs minus VmRSS after a first "
                                 "step (gradients allocated), MALLOC_MMAP_THRESHOLD_=65536; 2 threads")  # fmt: skip
        figures["activations"] = activations
        print("4. accelerate", flush=True)
        figures["accelerate"] = accelerate_estimate()
        figures["authors_prediction"] = authors_prediction(figures)
        figures["assumptions"] = ASSUMPTIONS
    else:
        figures["authors_prediction"] = authors_prediction(figures)
    markdown = render(figures)
    print(markdown)
    if not args.no_write:
        FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
        write_section(markdown)
        print(f"wrote {FIGURES.relative_to(ROOT)} and the section of {RESULTS.relative_to(ROOT)}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
