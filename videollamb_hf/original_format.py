"""Reading the authors' LLaVA-layout checkpoints (`model_type: "llava_llama"`, e.g. `ColorfulAI/VideoLLaMB`).

Low in the import graph: it imports nothing from this package, so that the configuration and the modeling files can
use it at the top (the command-line converter, `convert_videollamb_original_to_hf`, is a leaf above them). Used
whenever such a checkpoint is loaded (`from_pretrained` after `import videollamb_hf`) and by the converter:

- `original_config_to_videollamb`: the flat `mm_*` config -> this package's nested config fields (towers read from
  the LanguageBind folders the config names, else derived from the checkpoint's own tensor shapes, else their
  published architecture);
- `ORIGINAL_KEY_RENAMINGS` + `PadPlaceholderRows` + `MergeLoraWeights`: transformers' own conversion mechanism
  (`WeightRenaming` / `WeightConverter`, registered for `model_type="videollamb"`) renames the authors' keys,
  grows the 32,000-row embedding and LM head by the two placeholder rows and merges a LoRA-wrapped LanguageBind
  image encoder;
- `load_languagebind_tower_weights`: the towers' weights when a checkpoint does not carry them;
- `finish_original_loading`: the strict check after transformers loaded such a checkpoint.
"""

import contextlib
import contextvars
import json
import logging
import math
import os
import re
from pathlib import Path

import torch
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming


logger = logging.getLogger(__name__)

ORIGINAL_MODEL_TYPE = "llava_llama"
ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLMRMT", "LlavaLlamaForCausalLM")
SUPPORTED_PROJECTOR_TYPES = ("rmt_r_transformer1x",)

# Ordered renamings in `WeightRenaming` semantics: each regex is searched in the key and its match is replaced by
# the target (`\1` = the pattern's one group); every matching rule fires, in order. The authors' state dict has the
# prefixes `lm_head`, `model.embed_tokens`, `model.layers`, `model.norm`, `model.mm_projector.{projector,retrieval}`,
# `model.video_tower.video_tower`, `model.image_tower.image_tower` (ORIGINAL_VIDEOLLAMB.md section 1).
# `model.embed_tokens` and `lm_head` are renamed by the converter below (they also gain the placeholder rows).
ORIGINAL_KEY_RENAMINGS: list[tuple[str, str]] = [
    # Language model.
    (r"^model\.(layers|norm)\.", r"model.language_model.\1."),
    # Towers: LanguageBind keeps CLIP's module names below `vision_model`, which the authors' wrapper drops; a
    # plain CLIP tower (VideoLLaMB_Mem's `CLIPVideoTower`) keeps `vision_model`.
    (r"^model\.video_tower\.video_tower\.vision_model\.", "model.video_tower."),
    (r"^model\.image_tower\.image_tower\.vision_model\.", "model.image_tower."),
    (r"^model\.video_tower\.video_tower\.", "model.video_tower."),
    (r"^model\.image_tower\.image_tower\.", "model.image_tower."),
    # A LoRA-wrapped LanguageBind image encoder (see `MergeLoraWeights`): PEFT's prefix goes; the wrapped
    # projections' base weight, lora_A and lora_B are merged by `lora_merge_conversions`, their bias is renamed.
    (r"^model\.image_tower\.encoder\.base_model\.model\.", "model.image_tower.encoder."),
    (r"^(model\.image_tower\.encoder\.layers\.\d+\.self_attn\.(?:q|k|v|out)_proj)\.base_layer\.bias$", r"\1.bias"),
    # Memory bridge: `projector.proj.0` is the linear projector to the language model, the rest is the bridge.
    (r"^model\.mm_projector\.projector\.proj\.0\.", "model.multi_modal_projector.linear."),
    (r"^model\.mm_projector\.projector\.", "model.memory_bridge."),
    # VideoLLaMB_Mem's per-segment position table.
    (r"^model\.mm_projector\.abs_vid_pe\.", "model.memory_bridge.segment_position_embedding."),
    # The retriever is one bridge-style layer; its self-attention exists in the checkpoint but is never run.
    (
        r"^model\.mm_projector\.retrieval\.layers\.0\.crossattention\.",
        "model.memory_bridge.retriever.cross_attention.",
    ),
    (r"^model\.mm_projector\.retrieval\.layers\.0\.selfattention\.", "model.memory_bridge.retriever.self_attention."),
    (r"^(model\.memory_bridge\.layers\.\d+\.)selfattention\.", r"\1attention."),
    (r"^(model\.memory_bridge\.layers\.\d+\.)crossattention\.", r"\1cross_attention."),
    (r"^(model\.memory_bridge\.layers\.\d+\.)mlp\.0\.", r"\1intermediate."),
    # `residual.{dense,layernorm}` after an attention, then after the feed-forward.
    (r"^(model\.memory_bridge\.\S+attention)\.residual\.dense\.", r"\1.output.dense."),
    (r"^(model\.memory_bridge\.\S+attention)\.residual\.layernorm\.", r"\1.output.layer_norm."),
    (r"^(model\.memory_bridge\.layers\.\d+\.)residual\.dense\.", r"\1output.dense."),
    (r"^(model\.memory_bridge\.layers\.\d+\.)residual\.layernorm\.", r"\1output.layer_norm."),
]
# Keys renamed by `PadPlaceholderRows` (the original name -> ours).
ORIGINAL_VOCAB_KEYS = {
    "model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
    "lm_head.weight": "lm_head.weight",
}
# Keys an original checkpoint may hold that no module uses: buffers older transformers saved.
KNOWN_UNUSED_ORIGINAL_KEYS = [
    r"\.embeddings\.position_ids$",  # CLIP position ids (a buffer)
    r"\.rotary_emb\.inv_freq$",  # LLaMA rotary frequencies (a buffer)
]
# Keys of a LanguageBind folder (`LanguageBindVideo` / `LanguageBindImage`, a whole CLIP) that the towers do not use.
KNOWN_UNUSED_LANGUAGEBIND_KEYS = [
    r"^text_model\.",
    r"^text_projection\.",
    r"^visual_projection\.",
    r"^logit_scale$",
    r"\.embeddings\.position_ids$",
]

# The towers' architecture as LanguageBind publishes it (`LanguageBind/LanguageBind_Video_merge` and
# `LanguageBind/LanguageBind_Image` config.json, `vision_config`): used when those folders are not at hand, which is
# enough when the checkpoint carries the tower weights (the released ones do).
LANGUAGEBIND_VISION_DEFAULTS = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# `openai/clip-vit-large-patch14-336`, VideoLLaMB_Mem's per-frame video tower (LLaVA-1.5's vision tower).
CLIP_L14_336_DEFAULTS = dict(LANGUAGEBIND_VISION_DEFAULTS, image_size=336)
_CLIP_VISION_FIELDS = (*LANGUAGEBIND_VISION_DEFAULTS, "attention_dropout", "initializer_range", "initializer_factor")
_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "pretraining_tp", "rope_theta", "rope_scaling", "rope_parameters", "attention_bias", "attention_dropout",
    "mlp_bias", "head_dim", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
)  # fmt: skip
# Original field -> ours (the bridge's numbers; the rest of the bridge is hard-coded in the authors' code and
# equals our defaults: 32 memory tokens, a 12x12 pool, 8 frames per segment, SceneTilling top 3).
_BRIDGE_FIELDS = {
    "mm_hidden_size": "bridge_hidden_size",
    "mm_intermediate_size": "bridge_intermediate_size",
    "mm_num_attention_heads": "bridge_num_attention_heads",
    "mm_hidden_act": "bridge_hidden_act",
    "mm_layer_norm_eps": "bridge_layer_norm_eps",
    "mm_hidden_dropout_prob": "bridge_hidden_dropout",
    "mm_attention_probs_dropout_prob": "bridge_attention_dropout",
    "mm_vision_select_layer": "vision_feature_layer",
    "num_frames": "num_frames",
}
# Towers the authors reference by local path -> the hub repository of that name.
_TOWER_REPOS = {"LanguageBind_Video_merge": "LanguageBind/LanguageBind_Video_merge",
                "LanguageBind_Image": "LanguageBind/LanguageBind_Image",
                "clip-vit-large-patch14-336": "openai/clip-vit-large-patch14-336",
                "clip-vit-large-patch14": "openai/clip-vit-large-patch14"}  # fmt: skip
# What the vendored copy of the authors' package that runs `ColorfulAI/VideoLLaMB_Mem` (bigai-nlco/MM-NIAVH,
# needlehaystack/baselines/llava) computes differently, as our config fields. Its config keeps the projector
# string `rmt_r_transformer1x`; its video tower is a plain CLIP (the authors' builder picks `CLIPVideoTower`
# whenever "clip" is in `mm_video_tower`), and its checkpoint holds `model.mm_projector.abs_vid_pe.weight`.
MEM_VARIANT_FIELDS = {
    "pooled_grid_size": 14,  # 24 x 24 patches -> AdaptiveAvgPool2d((14, 14))
    "scene_tiling_mode": "threshold",  # segment(cls) with its default alpha
    "scene_tiling_alpha": 0.5,
    "scene_tiling_max_boundaries": 7,  # self_segment.py caps at 7 (the released bridge's copy: 15)
    "segment_position_embeddings": 1024,  # abs_vid_pe = nn.Embedding(1024, mm_hidden_size)
    "bridge_memory_cache": "segment_states",  # the cache holds the segments' bridge outputs
    "bridge_output": "memories",  # the LLM gets proj(cat(memory after each segment)), no patch tokens
    "max_image_like_frames": 3,  # t <= 3 frames: frame by frame, like images
}

# Download options of the `from_pretrained` call in progress (cache, token, offline), for the tower folders.
_DOWNLOAD_KWARGS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("videollamb_download", default=None)
DOWNLOAD_KWARG_NAMES = ("cache_dir", "force_download", "proxies", "token", "local_files_only")


@contextlib.contextmanager
def download_options(**kwargs):
    """Make `kwargs` (cache_dir, token, local_files_only, ...) the options for fetching tower folders meanwhile."""
    token = _DOWNLOAD_KWARGS.set({k: v for k, v in kwargs.items() if k in DOWNLOAD_KWARG_NAMES and v is not None})
    try:
        yield
    finally:
        _DOWNLOAD_KWARGS.reset(token)


def is_original_config(config_dict: dict) -> bool:
    return config_dict.get("model_type") == ORIGINAL_MODEL_TYPE


def tower_source(original_path: str | None, override: str | os.PathLike | None) -> str | None:
    """Where to read a tower from: `override` if given, else the config's path if it exists here, else the hub
    repository its folder name stands for (`./checkpoints/LanguageBind_Image` -> `LanguageBind/LanguageBind_Image`)."""
    if override is not None:
        return str(override)
    if not original_path:
        return None
    if os.path.isdir(original_path):
        return os.path.abspath(original_path)
    name = Path(original_path.rstrip("/")).name
    if name in _TOWER_REPOS:
        return _TOWER_REPOS[name]
    if re.fullmatch(r"[\w.-]+/[\w.-]+", original_path):  # already a hub id
        return original_path
    return None


def _fetch(source: str, filename: str) -> str | None:
    """A file of a tower folder or hub repository, or None if it cannot be had (absent, offline, not cached)."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    try:
        return cached_file(source, filename, _raise_exceptions_for_missing_entries=False,
                           **(_DOWNLOAD_KWARGS.get() or {}))  # fmt: skip
    except (OSError, ValueError) as error:
        logger.debug("Could not fetch %s from %s: %s", filename, source, error)
        return None


def languagebind_vision_config(source: str | None, name: str, defaults: dict | None = None) -> dict | None:
    """The `vision_config` fields of a LanguageBind (or CLIP) folder / repo; where no config can be read (absent,
    offline, not cached): `defaults` (a published architecture) if given, else None. `lora_r` / `lora_alpha`
    (LanguageBind's LoRA wrapping) are kept for the caller."""
    path = _fetch(source, "config.json") if source else None
    if path is None:
        return None if defaults is None else dict(defaults)
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    vision = config.get("vision_config", config)
    fields = {k: vision[k] for k in _CLIP_VISION_FIELDS if k in vision}
    fields["add_time_attn"] = bool(vision.get("add_time_attn", False))
    for key in ("lora_r", "lora_alpha"):
        if key in vision:
            fields[key] = vision[key]
    return fields


# -- LoRA-wrapped LanguageBind image encoders ---------------------------------------------------------------------
# `LanguageBindImage.__init__` wraps `vision_model.encoder` with PEFT LoRA whenever `vision_config.lora_r != 0`
# (its config class defaults to `lora_r=2`, `lora_alpha=16`), targeting `q_proj k_proj v_proj out_proj`. A
# checkpoint saved from such a model holds `encoder.base_model.model.layers.N.self_attn.q_proj.base_layer.{weight,
# bias}` + `lora_A.default.weight` (r, in) + `lora_B.default.weight` (out, r), and the other weights under
# `encoder.base_model.model.`. Loading merges each target: `W + (lora_alpha / r) * B @ A` (bias unchanged), which
# is what the wrapped forward computes at inference (dropout off).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
LANGUAGEBIND_DEFAULT_LORA_ALPHA = 16  # LanguageBindImageConfig's default, used when the tower config is unreadable
_LORA_PARTS = {"base_layer": "weight", "lora_A": "lora_a", "lora_B": "lora_b"}
# A LoRA part's key: group 1 the wrapped module, group 2 the part (`base_layer`, `lora_A`, `lora_B`).
LORA_PART_KEY = re.compile(r"^(.*)\.(base_layer|lora_A|lora_B)(?:\.default)?\.weight$")


def lora_merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, lora_alpha: float):
    """`weight + (lora_alpha / r) * lora_b @ lora_a`, computed in float32 and returned in `weight`'s dtype.

    Args:
        weight: `(out_features, in_features)`; lora_a: `(r, in_features)`; lora_b: `(out_features, r)`.
    """
    rank = lora_a.shape[0]
    if lora_b.shape != (weight.shape[0], rank) or lora_a.shape[1] != weight.shape[1]:
        raise ValueError(
            f"LoRA shapes do not fit: weight {tuple(weight.shape)}, lora_A {tuple(lora_a.shape)}, "
            f"lora_B {tuple(lora_b.shape)}."
        )
    merged = weight.float() + (lora_alpha / rank) * (lora_b.float() @ lora_a.float())
    return merged.to(weight.dtype)


def unwrap_lora_key(key: str) -> str:
    """A LoRA-wrapped encoder's key as the plain encoder names it (`encoder.base_model.model.` -> `encoder.`,
    `q_proj.base_layer.bias` -> `q_proj.bias`); `lora_A` / `lora_B` and plain keys keep their other parts."""
    key = key.replace(".encoder.base_model.model.", ".encoder.")
    if key.startswith("encoder.base_model.model."):
        key = "encoder." + key.removeprefix("encoder.base_model.model.")
    return re.sub(r"\.base_layer\.(weight|bias)$", r".\1", key)


def merge_lora_state_dict(state: dict, lora_alpha: float, source: str) -> dict:
    """`state` (a LanguageBind folder's or a tower's weights) with every LoRA-wrapped projection merged and the
    PEFT prefixes removed; a state without LoRA keys is returned unchanged."""
    if not any(".lora_A." in key or ".base_layer." in key for key in state):
        return state
    plain, parts = {}, {}
    for key, value in state.items():
        match = LORA_PART_KEY.search(key)
        if match:
            parts.setdefault(unwrap_lora_key(match.group(1)), {})[_LORA_PARTS[match.group(2)]] = value
        else:
            plain[unwrap_lora_key(key)] = value
    for module, found in parts.items():
        if set(found) != {"weight", "lora_a", "lora_b"}:
            raise ValueError(
                f"{source}: the LoRA-wrapped `{module}` has only {sorted(found)} (base_layer, lora_A and lora_B are "
                "all needed to merge it)."
            )
        plain[f"{module}.weight"] = lora_merged_weight(found["weight"], found["lora_a"], found["lora_b"], lora_alpha)
    rank = next(iter(parts.values()))["lora_a"].shape[0]
    logger.warning("%s: merged LoRA weights into %d projections (r=%d, lora_alpha=%s).", source, len(parts), rank,
                   lora_alpha)  # fmt: skip
    return plain


class MergeLoraWeights(ConversionOps):
    """Many-to-one: a LoRA-wrapped projection's `base_layer.weight`, `lora_A` and `lora_B` (which may sit in
    different shards: transformers collects them all before converting) -> the plain `weight`. `lora_alpha` comes
    from the image tower's config (`config._original_layout["image_tower_lora_alpha"]`), or is the authors' class
    default with a warning where that config could not be read."""

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, config=None, full_layer_name=None, **kwargs):
        found = {}
        for pattern, tensors in input_dict.items():
            part = next(name for name in _LORA_PARTS if name in pattern)
            found[_LORA_PARTS[part]] = tensors[0] if isinstance(tensors, list) else tensors
        if set(found) != {"weight", "lora_a", "lora_b"}:
            raise ValueError(f"`{full_layer_name}`: LoRA-wrapped, but the checkpoint holds only {sorted(found)}.")
        layout = getattr(config, "_original_layout", None) or {}
        alpha = layout.get("image_tower_lora_alpha")
        merged = layout.setdefault("lora_merged", {})
        merged[full_layer_name] = (found["lora_a"].shape[0], alpha)
        alpha = LANGUAGEBIND_DEFAULT_LORA_ALPHA if alpha is None else alpha
        return {target_patterns[0]: lora_merged_weight(found["weight"], found["lora_a"], found["lora_b"], alpha)}

    @property
    def reverse_op(self) -> ConversionOps:
        return _RefuseLoraSplit()


class _RefuseLoraSplit(ConversionOps):
    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        raise ValueError(
            "This model was loaded from a LoRA-wrapped image tower whose LoRA weights were merged on load; it cannot "
            "be saved back in that wrapped layout. Save it with `save_original_format=False` (the default)."
        )

    @property
    def reverse_op(self) -> ConversionOps:
        return MergeLoraWeights()


# -- Tower architecture from the checkpoint's own tensors ---------------------------------------------------------
# Where no tower config can be read (offline, not cached, a local path that is absent), the shapes of the
# checkpoint's tower weights tell the architecture, but for the number of attention heads: ViT's head width of 64
# (`heads = width // 64`), which the released LanguageBind / CLIP towers follow, is assumed.
VIT_HEAD_WIDTH = 64
LANGUAGEBIND_TEMPORAL_GROUP_SIZE = 8  # LanguageBind_Video_merge's `num_frames`: frames per temporal attention
_TOWER_PREFIXES = {
    "video_tower": ("model.video_tower.video_tower.vision_model.", "model.video_tower.video_tower."),
    "image_tower": ("model.image_tower.image_tower.vision_model.", "model.image_tower.image_tower."),
}


def checkpoint_tensor_shapes(checkpoint: str | os.PathLike | None) -> dict[str, tuple[int, ...]] | None:
    """The shapes of a checkpoint's tower tensors, read from the safetensors headers only (no weights are read):
    `model.safetensors` or the shards of its index that hold tower keys. None where they cannot be had (no
    checkpoint named, `.bin` weights, offline and not cached)."""
    if not checkpoint:
        return None
    from safetensors import safe_open

    checkpoint = str(checkpoint)
    files = []
    index = _fetch(checkpoint, "model.safetensors.index.json")
    if index:
        with open(index, encoding="utf-8") as file:
            weight_map = json.load(file)["weight_map"]
        names = sorted({name for key, name in weight_map.items() if "_tower." in key})
        files = [_fetch(checkpoint, name) for name in names]
    else:
        files = [_fetch(checkpoint, "model.safetensors")]
    if not files or any(path is None for path in files):
        return None
    shapes = {}
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                if "_tower." in key:
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def tower_config_from_shapes(shapes: dict, tower: str, name: str, source: str | None, defaults: dict) -> dict | None:
    """A tower's config fields derived from its tensors' shapes (see above), or None where the checkpoint holds
    no weights of that tower. The published architecture `defaults` where the shapes agree with it; otherwise the
    derived fields, with a warning that lists them and says how many heads were assumed."""
    prefix = next((p for p in _TOWER_PREFIXES[tower] if f"{p}embeddings.patch_embedding.weight" in shapes), None)
    if prefix is None:
        return None
    keys = {unwrap_lora_key(k.removeprefix(prefix)): v for k, v in shapes.items() if k.startswith(prefix)}
    needed = ("embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
              "encoder.layers.0.mlp.fc1.weight")  # fmt: skip
    if not all(key in keys for key in needed):
        return None
    width, channels, patch, _ = keys["embeddings.patch_embedding.weight"]
    positions = keys["embeddings.position_embedding.weight"][0]
    grid = math.isqrt(positions - 1)
    layers = 1 + max(int(m.group(1)) for k in keys if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    derived = {
        "hidden_size": width,
        "intermediate_size": keys["encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": layers,
        "num_channels": channels,
        "image_size": grid * patch,
        "patch_size": patch,
    }
    temporal = any(".temporal_attn." in k for k in keys)
    if "encoder.layers.0.temporal_embedding" in keys:  # (1, frames per temporal group, width)
        derived["temporal_group_size"] = keys["encoder.layers.0.temporal_embedding"][1]
    architecture = dict(defaults, temporal_group_size=LANGUAGEBIND_TEMPORAL_GROUP_SIZE)
    architecture = {k: architecture[k] for k in derived}
    if derived == architecture:
        logger.info("%s: no tower config found (%s); the checkpoint's tensors match the published architecture.",
                    name, source)  # fmt: skip
        return dict(defaults, add_time_attn=temporal)
    heads = max(1, width // VIT_HEAD_WIDTH)
    listed = ", ".join(f"{k}={v}" for k, v in derived.items())
    logger.warning(
        "%s: no tower config could be read (%s) and the checkpoint's tensors do not match the published "
        "architecture; derived from them: %s%s; num_attention_heads=%d ASSUMED (width // %d, ViT's head width: "
        "tensors cannot tell the number of heads). Pass `%s=` with the tower folder if it differs.",
        name, source or "none named", listed, ", temporal attention" if temporal else "", heads, VIT_HEAD_WIDTH, tower,
    )  # fmt: skip
    return dict(defaults, **derived, num_attention_heads=heads, add_time_attn=temporal)


def _tower_config(source: str | None, tower: str, defaults: dict, shapes) -> tuple[dict, str]:
    """A tower's config fields and where they came from: "config" (its folder), "tensors" (the checkpoint's shapes,
    `shapes()` is called only then) or "published" (its published architecture, where neither can be read)."""
    name = tower.replace("_", " ")
    fields = languagebind_vision_config(source, name)
    if fields is not None:
        return fields, "config"
    tensor_shapes = shapes()
    derived = tower_config_from_shapes(tensor_shapes, tower, name, source, defaults) if tensor_shapes else None
    if derived is not None:
        return derived, "tensors"
    logger.info("%s: no tower config found (%s) nor tower weights in the checkpoint; using the published "
                "architecture (CLIP ViT-L/14, %d px).", name, source, defaults["image_size"])  # fmt: skip
    return dict(defaults), "published"


def original_config_to_videollamb(
    config_dict: dict, video_tower=None, image_tower=None, checkpoint: str | os.PathLike | None = None
) -> dict:
    """The fields of a [`VideoLlambConfig`] for an original (`llava_llama`) config.

    Args:
        config_dict: the original `config.json` as a dict.
        video_tower, image_tower: folders or hub ids of the LanguageBind towers, overriding `mm_video_tower` /
            `mm_image_tower` (only their architecture is read here).
        checkpoint: the checkpoint's folder or hub id; where a tower config cannot be read, the towers'
            architecture is derived from its tensors' shapes (`tower_config_from_shapes`).

    Raises:
        `ValueError` for a LLaVA-layout checkpoint that is not a VideoLLaMB this package can run (another projector,
        missing modalities, start/end or patch tokens), naming the field.
    """
    projector = config_dict.get("mm_projector_type")
    if projector not in SUPPORTED_PROJECTOR_TYPES:
        raise ValueError(
            f"Unsupported `mm_projector_type` {projector!r} in this LLaVA-layout (`llava_llama`) checkpoint: "
            f"videollamb_hf loads VideoLLaMB's memory bridge ({', '.join(SUPPORTED_PROJECTOR_TYPES)}) only. "
            "Other LLaVA variants (e.g. `mlp2x_gelu` projectors) are not VideoLLaMB checkpoints."
        )
    modalities = config_dict.get("X", ["VIDEO", "IMAGE"])
    if "VIDEO" not in modalities:
        raise ValueError(f"Unsupported `X` {modalities!r}: VideoLLaMB checkpoints have a VIDEO tower.")
    for flag in ("mm_use_x_start_end", "mm_use_x_patch_token", "mm_use_im_start_end"):
        if config_dict.get(flag):
            raise ValueError(f"Unsupported `{flag}: true`: the released VideoLLaMB checkpoints use no such tokens.")
    if config_dict.get("mm_vision_select_feature", "patch") != "patch":
        raise ValueError(
            f"Unsupported `mm_vision_select_feature` {config_dict['mm_vision_select_feature']!r} (expected 'patch')."
        )

    text = {k: config_dict[k] for k in _LLAMA_FIELDS if k in config_dict}
    text["model_type"] = "llama"
    vocab = text.get("vocab_size", 32000)
    # Two rows are added for the placeholders, in the order the processor adds the tokens.
    text["vocab_size"] = vocab + 2
    text.setdefault("tie_word_embeddings", False)

    fields = {ours: config_dict[theirs] for theirs, ours in _BRIDGE_FIELDS.items() if theirs in config_dict}
    # The authors' builder picks a plain per-frame CLIP video tower whenever "clip" is in the path: that is
    # VideoLLaMB_Mem, whose bridge differs too (MEM_VARIANT_FIELDS).
    video_path = config_dict.get("mm_video_tower") or ""
    variant = "mem" if "clip" in video_path else "main"
    # The authors' model builds an image tower only when the config names one (`mm_image_tower`); a video-only
    # checkpoint (`X: ["VIDEO"]`, as MM-NIAVH writes VideoLLaMB_Mem) has none, and gets none here.
    image_path = config_dict.get("mm_image_tower") or ""
    has_image_tower = bool(image_path) or image_tower is not None
    sources = {
        "video_tower": tower_source(video_path, video_tower),
        "image_tower": tower_source(image_path, image_tower) if has_image_tower else None,
    }
    shapes_read = []  # the checkpoint's tensor shapes, read once and only where a tower config is unreadable

    def shapes():
        if not shapes_read:
            shapes_read.append(checkpoint_tensor_shapes(checkpoint))
        return shapes_read[0]

    def tower_config(tower, defaults):
        return _tower_config(sources[tower], tower, defaults, shapes)

    if variant == "mem":
        vision, vision_from = tower_config("video_tower", CLIP_L14_336_DEFAULTS)
        vision["add_time_attn"] = False
        fields.update(MEM_VARIANT_FIELDS)
        logger.info("Original checkpoint: the VideoLLaMB_Mem variant (per-frame CLIP video tower, memories to the "
                    "language model); bridge fields %s.", MEM_VARIANT_FIELDS)  # fmt: skip
    else:
        vision, vision_from = tower_config("video_tower", LANGUAGEBIND_VISION_DEFAULTS)
        if vision_from == "published":
            vision["add_time_attn"] = True
        if not vision["add_time_attn"]:
            raise ValueError(f"The video tower at {sources['video_tower']} has no temporal attention.")
    for key in ("lora_r", "lora_alpha"):
        vision.pop(key, None)
    width = config_dict.get("mm_hidden_size", LANGUAGEBIND_VISION_DEFAULTS["hidden_size"])
    towers = [("video_tower", vision)]
    lora_alpha = None
    if has_image_tower:
        image_defaults = CLIP_L14_336_DEFAULTS if "clip" in image_path else LANGUAGEBIND_VISION_DEFAULTS
        image, _ = tower_config("image_tower", image_defaults)
        image.pop("add_time_attn", None)
        image.pop("lora_r", None)
        # Where the tower config is unreadable, a LoRA-wrapped image encoder merges with the class default.
        lora_alpha = image.pop("lora_alpha", None)
        towers.append(("image_tower", image))
    else:
        # No image tower: the image config only sizes the (unused) image processor, at the video tower's size.
        image = {k: v for k, v in vision.items() if k != "add_time_attn"}
        fields["has_image_tower"] = False
        logger.info("Original checkpoint without an image tower (`mm_image_tower` unset, X=%s): video only.",
                    modalities)  # fmt: skip
    for name, tower in towers:
        if tower["hidden_size"] != width:
            raise ValueError(
                f"The {name} config ({sources[name] or 'none named'}) has width {tower['hidden_size']} but "
                f"`mm_hidden_size` is {width}. If the LanguageBind folder could not be read (offline, not cached), "
                f"pass `{name}=` with a local LanguageBind folder."
            )
    image["model_type"] = "clip_vision_model"
    fields.update(
        text_config=text,
        vision_config=vision,
        image_config=image,
        video_token_id=vocab,
        image_token_id=vocab + 1,
        architectures=["VideoLlambForConditionalGeneration"],
    )
    # Numbers the authors' code hard-codes (32 memory tokens, a 12x12 pool, ...) cannot be told by an original
    # config; a checkpoint that differs (the tiny ones tests build) states them under "videollamb_hf".
    fields.update(config_dict.get("videollamb_hf", {}))
    if "torch_dtype" in config_dict or "dtype" in config_dict:
        fields["dtype"] = config_dict.get("dtype", config_dict.get("torch_dtype"))
    fields["_original_layout"] = {"model_type": ORIGINAL_MODEL_TYPE, "original_vocab_size": vocab, "variant": variant,
                                  "image_tower_lora_alpha": lora_alpha, **sources}  # fmt: skip
    return fields


class PadPlaceholderRows(ConversionOps):
    """Grows an original embedding / LM head (`vocab_size` rows) to the model's vocabulary (`vocab_size + 2`): the
    rows of `<video>` and `<image>`. Their embeddings are never looked up (the model writes visual tokens into those
    slots) and generation suppresses them; they are set to the mean row, as `resize_token_embeddings` centres them.
    Applies only when the config came from an original checkpoint; otherwise the tensor passes unchanged."""

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, config=None, **kwargs):
        (source, tensors), = input_dict.items()  # fmt: skip
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        layout = getattr(config, "_original_layout", None)
        target = target_patterns[0]
        text_config = getattr(config, "text_config", config)
        rows = text_config.vocab_size
        if layout and tensor.shape[0] == layout["original_vocab_size"] and rows > tensor.shape[0]:
            mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
            tensor = torch.cat([tensor, mean.expand(rows - tensor.shape[0], -1)], dim=0)
        return {target: tensor}

    @property
    def reverse_op(self) -> ConversionOps:
        return _DropPlaceholderRows()


class _DropPlaceholderRows(ConversionOps):
    """Reverse of `PadPlaceholderRows` (for `save_pretrained(save_original_format=True)`)."""

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, config=None, **kwargs):
        (source, tensors), = input_dict.items()  # fmt: skip
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        layout = getattr(config, "_original_layout", None)
        if layout:
            tensor = tensor[: layout["original_vocab_size"]]
        return {target_patterns[0]: tensor}

    @property
    def reverse_op(self) -> ConversionOps:
        return PadPlaceholderRows()


def original_weight_conversions() -> list:
    """The transforms transformers applies when loading an original checkpoint (registered for "videollamb")."""
    renamings = [WeightRenaming(source, target) for source, target in ORIGINAL_KEY_RENAMINGS]
    # Targets without the `model.` prefix: the loader adds it for the full model and not for the backbone.
    converters = [
        WeightConverter(f"^{re.escape(source)}$", target.removeprefix("model."), [PadPlaceholderRows()])
        for source, target in ORIGINAL_VOCAB_KEYS.items()
    ]
    return renamings + converters + lora_merge_conversions()


def lora_merge_conversions() -> list:
    """One many-to-one converter per LoRA target of LanguageBindImage (`MergeLoraWeights`): only a LoRA-wrapped
    image encoder's keys (`...base_layer.weight`, `...lora_A.default.weight`, `...lora_B.default.weight`) match."""
    return [
        WeightConverter(
            [
                rf"self_attn\.{target}\.base_layer\.weight",
                rf"self_attn\.{target}\.lora_A\.default\.weight",
                rf"self_attn\.{target}\.lora_B\.default\.weight",
            ],
            f"self_attn.{target}.weight",
            [MergeLoraWeights()],
        )  # fmt: skip
        for target in LORA_TARGETS
    ]


def convert_original_key(key: str) -> str:
    """The name of an original checkpoint key in this package, by the same transforms the loader applies, e.g.
    `model.mm_projector.projector.layers.0.mlp.0.weight` -> `model.memory_bridge.layers.0.intermediate.weight`.

    Raises:
        `KeyError` for a key that no rule covers (nothing is ever loaded under a guessed name).
    """
    from transformers.core_model_loading import rename_source_key

    if key in ORIGINAL_VOCAB_KEYS:
        return ORIGINAL_VOCAB_KEYS[key]
    transforms = original_weight_conversions()
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    new, _ = rename_source_key(key, renamings, [])
    if new == key:
        raise KeyError(f"No rule maps the original checkpoint key {key!r} to this package's layout.")
    return new


def convert_original_state_dict(state_dict: dict) -> dict:
    """Rename every key of an original `state_dict()` (see `convert_original_key`); vocabulary rows unchanged."""
    return {convert_original_key(key): value for key, value in state_dict.items()}


def _matches_any(key: str, patterns) -> bool:
    return any(re.search(pattern, key) for pattern in patterns)


def _tower_files(source: str, allow_pickle: bool) -> list[str]:
    """Weight files of a LanguageBind folder or repo: safetensors (one file or an index), else a `.bin` only with
    the explicit opt-in (`use_safetensors=None` or `False`)."""
    single = _fetch(source, "model.safetensors")
    if single:
        return [single]
    index = _fetch(source, "model.safetensors.index.json")
    if index:
        with open(index, encoding="utf-8") as file:
            names = sorted(set(json.load(file)["weight_map"].values()))
        return [_fetch(source, name) for name in names]
    binary = _fetch(source, "pytorch_model.bin")
    if binary and not allow_pickle:
        raise ValueError(
            f"The tower folder {source} has only a pickled `pytorch_model.bin`. videollamb_hf loads safetensors only "
            "unless told otherwise: pass `use_safetensors=None` to load it with `torch.load(weights_only=True)`, "
            "or convert that folder to safetensors first."
        )
    if binary:
        return [binary]
    raise FileNotFoundError(
        f"No tower weights found at {source!r} (looked for model.safetensors, an index, pytorch_model.bin). Pass "
        "`video_tower=` / `image_tower=` with a local LanguageBind folder or a reachable hub id."
    )


def languagebind_tower_state(source: str, allow_pickle: bool = False) -> tuple[dict, list[str]]:
    """A LanguageBind checkpoint's tower weights under our names (`vision_model.` removed, a LoRA-wrapped encoder
    merged), and the keys that are neither tower weights nor the known-unused text half and projections."""
    from safetensors.torch import load_file

    state = {}
    for path in _tower_files(source, allow_pickle):
        part = (
            load_file(path)
            if path.endswith(".safetensors")
            else torch.load(path, map_location="cpu", weights_only=True)
        )
        state.update(part)
    ours, unexpected = {}, []
    for key, value in state.items():
        if key.startswith("vision_model.") and not _matches_any(key, KNOWN_UNUSED_LANGUAGEBIND_KEYS):
            ours[key.removeprefix("vision_model.")] = value
        elif not _matches_any(key, KNOWN_UNUSED_LANGUAGEBIND_KEYS):
            unexpected.append(key)
    del state
    if any(".lora_A." in key for key in ours):
        fields = languagebind_vision_config(source, "tower")
        alpha = (fields or {}).get("lora_alpha")
        if alpha is None:
            logger.warning("%s: LoRA-wrapped, but its config gives no `lora_alpha`: merging with the authors' class "
                           "default %d.", source, LANGUAGEBIND_DEFAULT_LORA_ALPHA)  # fmt: skip
            alpha = LANGUAGEBIND_DEFAULT_LORA_ALPHA
        ours = merge_lora_state_dict(ours, alpha, source)
    return ours, unexpected


def check_tower_state(ours: dict, unexpected: list[str], expected: dict, source: str) -> None:
    """Refuse tower weights (`languagebind_tower_state`) that do not match the tower's `expected` state (names
    and shapes; meta tensors do)."""
    missing = sorted(set(expected) - set(ours))
    unexpected = unexpected + sorted(set(ours) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"The LanguageBind checkpoint at {source} does not match the tower: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}."
        )
    for key, value in ours.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{source}: `{key}` has shape {tuple(value.shape)}, the tower {tuple(expected[key].shape)}."
            )


def load_languagebind_tower_weights(tower: torch.nn.Module, source: str, allow_pickle: bool = False) -> None:
    """Load a LanguageBind checkpoint's `vision_model.*` weights into `tower` (our video tower or the CLIP image
    tower), strictly: every tower weight must be there; the text half and projections are the known-unused keys."""
    ours, unexpected = languagebind_tower_state(source, allow_pickle)
    # ZeRO-3 (`zero.Init`) leaves each parameter an empty partition with its full shape in `ds_shape`.
    expected = {name: torch.empty(getattr(t, "ds_shape", t.shape), device="meta")
                for name, t in tower.state_dict(keep_vars=True).items()}  # fmt: skip
    check_tower_state(ours, unexpected, expected, source)
    targets = [(n, t) for n, t in list(tower.named_parameters()) + list(tower.named_buffers()) if n in ours]
    partitioned = [t for _, t in targets if hasattr(t, "ds_id")]
    if partitioned:
        import deepspeed

        # Gathered on every rank, written, and partitioned again from rank 0's values.
        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0), torch.no_grad():
            for name, tensor in targets:
                tensor.data.copy_(ours[name].to(dtype=tensor.dtype, device=tensor.device))
        return
    on_meta = [n for n, t in targets if t.is_meta]
    if on_meta:
        if _fsdp_loading_on_a_later_rank():
            return  # FSDP's cpu_ram_efficient_loading: rank 0 holds the weights and broadcasts them when sharding
        raise ValueError(
            f"The tower weights from {source} cannot be written into parameters on the meta device ({on_meta[0]}, "
            "...): a device_map with disk offload leaves them there. Convert the checkpoint first "
            "(`videollamb-hf convert`), then load the converted folder with the device_map."
        )
    with torch.no_grad():
        for name, tensor in targets:
            tensor.copy_(ours[name].to(dtype=tensor.dtype, device=tensor.device))


def _fsdp_loading_on_a_later_rank() -> bool:
    """FSDP's `cpu_ram_efficient_loading` under a launch, on a rank other than the first of its machine:
    transformers loads the model there on the meta device, and FSDP broadcasts rank 0's weights when it shards."""
    from transformers.distributed.fsdp import is_fsdp_enabled

    return is_fsdp_enabled() and int(os.environ.get("LOCAL_RANK", 0)) != 0


def log_lora_merges(layout: dict) -> None:
    """Say how many LoRA-wrapped image-tower projections a load merged (`layout["lora_merged"]`, filled by
    `MergeLoraWeights` or the streaming converter), and warn where `lora_alpha` was the class default."""
    merged = layout.pop("lora_merged", None)
    if not merged:
        return
    ranks = sorted({rank for rank, _ in merged.values()})
    alpha = layout.get("image_tower_lora_alpha")
    logger.warning("Merged LoRA weights into %d image-tower projections (r=%s, lora_alpha=%s).", len(merged),
                   "/".join(map(str, ranks)), LANGUAGEBIND_DEFAULT_LORA_ALPHA if alpha is None else alpha)  # fmt: skip
    if alpha is None:
        logger.warning(
            "The image tower's config (%s) could not be read: its LoRA weights were merged with the authors' "
            "class default lora_alpha=%d. Pass `image_tower=` with the LanguageBind folder if it differs.",
            layout.get("image_tower") or "none named",
            LANGUAGEBIND_DEFAULT_LORA_ALPHA,
        )


def tower_folder(layout: dict, tower: str) -> str:
    """The LanguageBind folder or hub id that `tower`'s weights come from when the checkpoint lacks them."""
    source = layout.get(tower)
    if source is None:
        raise ValueError(
            f"The checkpoint has no {tower} weights and its config names no LanguageBind folder for it: "
            f"pass `{tower}=` (a local LanguageBind folder or hub id)."
        )
    return source


def finish_original_loading(
    model: torch.nn.Module, backbone: torch.nn.Module, info: dict, allow_pickle: bool = False, **download_kwargs
) -> None:
    """After transformers loaded an original checkpoint into `model`: take absent tower weights from the
    LanguageBind folders, then refuse anything else missing, unexpected or mis-shaped (never wrong weights
    silently).

    Args:
        model: the loaded model; `backbone`: its `VideoLlambModel` (the model itself for `AutoModel`).
        info: `from_pretrained(..., output_loading_info=True)`'s dict, updated in place.
    """
    layout = model.config._original_layout
    prefix = next(name for name, module in model.named_modules() if module is backbone)
    prefix = f"{prefix}." if prefix else ""
    missing = set(info["missing_keys"])
    with download_options(**download_kwargs):
        for name in ("video_tower", "image_tower"):
            tower_prefix = f"{prefix}{name}."
            tower_missing = {k for k in missing if k.startswith(tower_prefix)}
            if not tower_missing:
                continue
            source = tower_folder(layout, name)
            logger.info("Loading the %s weights from %s (absent from the checkpoint).", name, source)
            load_languagebind_tower_weights(getattr(backbone, name), source, allow_pickle=allow_pickle)
            layout.setdefault("towers_loaded_from", []).append(source)
            missing -= {k for k in missing if k.startswith(tower_prefix)}
    unused = KNOWN_UNUSED_ORIGINAL_KEYS + ([r"^lm_head\."] if backbone is model else [])  # AutoModel: no head
    unexpected = {k for k in info["unexpected_keys"] if not _matches_any(k, unused)}
    problems = []
    if missing:
        problems.append(f"missing {sorted(missing)[:10]}")
    if unexpected:
        problems.append(f"unexpected {sorted(unexpected)[:10]}")
    if info["mismatched_keys"]:
        problems.append(f"mis-shaped {sorted(info['mismatched_keys'])[:5]}")
    if any("segment_position_embedding" in k for k in unexpected):
        problems.append(
            "the checkpoint holds `abs_vid_pe` (the VideoLLaMB_Mem bridge) but its `mm_video_tower` names no CLIP "
            "tower; VideoLLaMB_Mem runs with a per-frame CLIP ViT-L/14-336 video tower"
        )
    if problems:
        raise ValueError(
            "This LLaVA-layout (`llava_llama`) checkpoint does not match VideoLLaMB's layout: "
            + "; ".join(problems)
            + ". Nothing was loaded under a guessed name; is it a VideoLLaMB checkpoint?"
        )
    info["missing_keys"] = missing
    info["unexpected_keys"] = unexpected
    log_lora_merges(layout)
    name = "ColorfulAI/VideoLLaMB_Mem variant" if layout.get("variant") == "mem" else "released VideoLLaMB bridge"
    logger.warning("Loaded an original VideoLLaMB checkpoint (LLaVA layout): the %s.", name)
