"""The authors' LLaVA-layout checkpoints (`model_type: "llava_llama"`, e.g. `ColorfulAI/VideoLLaMB`) in this package.

Three pieces, used both when such a checkpoint is loaded directly (`from_pretrained` after `import videollamb_hf`) and
by the converter (`python -m videollamb_hf.convert_videollamb_original_to_hf ORIGINAL OUTPUT`):

- `original_config_to_videollamb`: the flat `mm_*` config -> this package's nested config fields (towers read from
  the LanguageBind folders the config names, or their published architecture);
- `ORIGINAL_KEY_RENAMINGS` + `PadPlaceholderRows`: transformers' own conversion mechanism
  (`WeightRenaming` / `WeightConverter`, registered for `model_type="videollamb"`) renames the authors' keys and
  grows the 32,000-row embedding and LM head by the two placeholder rows;
- `load_languagebind_tower_weights`: the towers' weights when a checkpoint does not carry them.
"""

import argparse
import contextlib
import contextvars
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
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


def languagebind_vision_config(source: str | None, name: str, defaults: dict = LANGUAGEBIND_VISION_DEFAULTS) -> dict:
    """The `vision_config` of a LanguageBind (or CLIP) folder / repo, or the published architecture `defaults`
    (with an info line)."""
    path = _fetch(source, "config.json") if source else None
    if path is None:
        logger.info("%s: no tower config found (%s); using the published architecture (CLIP ViT-L/14, %d px).",
                    name, source, defaults["image_size"])  # fmt: skip
        return dict(defaults)
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    vision = config.get("vision_config", config)
    fields = {k: vision[k] for k in _CLIP_VISION_FIELDS if k in vision}
    if vision.get("lora_r", 0) and not vision.get("add_time_attn", False):
        # LanguageBindImage wraps its encoder in PEFT LoRA when `lora_r` != 0: key names would not match.
        raise ValueError(
            f"The {name} at {source} has `lora_r={vision['lora_r']}` (a LoRA-wrapped LanguageBind image encoder); "
            "only plain (merged) LanguageBind towers are supported. Merge the LoRA weights first."
        )
    fields["add_time_attn"] = bool(vision.get("add_time_attn", False))
    return fields


def original_config_to_videollamb(config_dict: dict, video_tower=None, image_tower=None) -> dict:
    """The fields of a [`VideoLlambConfig`] for an original (`llava_llama`) config.

    Args:
        config_dict: the original `config.json` as a dict.
        video_tower, image_tower: folders or hub ids of the LanguageBind towers, overriding `mm_video_tower` /
            `mm_image_tower` (only their architecture is read here).

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
    sources = {
        "video_tower": tower_source(video_path, video_tower),
        # A config without an image tower (X = ["VIDEO"]) gets LanguageBind's, whose weights then load from there.
        "image_tower": tower_source(config_dict.get("mm_image_tower") or "LanguageBind_Image", image_tower),
    }
    if variant == "mem":
        vision = languagebind_vision_config(sources["video_tower"], "video tower", CLIP_L14_336_DEFAULTS)
        vision.pop("add_time_attn", None)
        vision["add_time_attn"] = False
        fields.update(MEM_VARIANT_FIELDS)
        logger.info("Original checkpoint: the VideoLLaMB_Mem variant (per-frame CLIP video tower, memories to the "
                    "language model); bridge fields %s.", MEM_VARIANT_FIELDS)  # fmt: skip
    else:
        vision = languagebind_vision_config(sources["video_tower"], "video tower")
        vision.setdefault("add_time_attn", True)
        if not vision["add_time_attn"]:
            raise ValueError(f"The video tower at {sources['video_tower']} has no temporal attention.")
    image_defaults = CLIP_L14_336_DEFAULTS if "clip" in (config_dict.get("mm_image_tower") or "") else None
    image = languagebind_vision_config(
        sources["image_tower"], "image tower", image_defaults or LANGUAGEBIND_VISION_DEFAULTS
    )
    image.pop("add_time_attn", None)
    width = config_dict.get("mm_hidden_size", LANGUAGEBIND_VISION_DEFAULTS["hidden_size"])
    for name, tower in (("video_tower", vision), ("image_tower", image)):
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
                                  **sources}  # fmt: skip
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
    return renamings + converters


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


def load_languagebind_tower_weights(tower: torch.nn.Module, source: str, allow_pickle: bool = False) -> None:
    """Load a LanguageBind checkpoint's `vision_model.*` weights into `tower` (our video tower or the CLIP image
    tower), strictly: every tower weight must be there; the text half and projections are the known-unused keys."""
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
    expected = tower.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected += sorted(set(ours) - set(expected))
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
    with torch.no_grad():
        for name, tensor in list(tower.named_parameters()) + list(tower.named_buffers()):
            if name in ours:
                tensor.copy_(ours[name].to(dtype=tensor.dtype, device=tensor.device))


def finish_original_loading(model, info: dict, allow_pickle: bool = False, **download_kwargs) -> None:
    """After transformers loaded an original checkpoint into `model`: take absent tower weights from the
    LanguageBind folders, then refuse anything else missing, unexpected or mis-shaped (never wrong weights
    silently). `info`: `from_pretrained(..., output_loading_info=True)`'s dict, updated in place."""
    from .modeling_videollamb import VideoLlambModel

    layout = model.config._original_layout
    prefix = next(name for name, module in model.named_modules() if isinstance(module, VideoLlambModel))
    prefix = f"{prefix}." if prefix else ""
    backbone = model.get_submodule(prefix.rstrip(".")) if prefix else model
    missing = set(info["missing_keys"])
    with download_options(**download_kwargs):
        for name in ("video_tower", "image_tower"):
            tower_prefix = f"{prefix}{name}."
            tower_missing = {k for k in missing if k.startswith(tower_prefix)}
            if not tower_missing:
                continue
            source = layout.get(name)
            if source is None:
                raise ValueError(
                    f"The checkpoint has no {name} weights and its config names no LanguageBind folder for it: "
                    f"pass `{name}=` (a local LanguageBind folder or hub id)."
                )
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
    name = "ColorfulAI/VideoLLaMB_Mem variant" if layout.get("variant") == "mem" else "released VideoLLaMB bridge"
    logger.warning("Loaded an original VideoLLaMB checkpoint (LLaVA layout): the %s.", name)


MODEL_CARD = """---
license: {license}
library_name: transformers
pipeline_tag: video-text-to-text
tags:
- videollamb
- video-llm
- long-video
- recurrent-memory
base_model: {source}
---

# VideoLLaMB in the Hugging Face layout

A self-contained conversion of `{source}` (the authors' LLaVA layout, `model_type: "llava_llama"`) to the layout of
[videollamb_hf](https://github.com/bigai-nlco/VideoLLaMB): a native transformers config, safetensors shards with
this package's key names, a processor (tokenizer, video and image processors, `llava_v1` chat template) and the
package's modules for `trust_remote_code=True`.

## Use with videollamb_hf installed

```python
import videollamb_hf  # registers the model, processor and pipeline with transformers
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}", dtype="auto", device_map="auto")
processor = AutoProcessor.from_pretrained("{repo}")
messages = [{{"role": "user", "content": [{{"type": "video", "path": "video.mp4"}},
                                         {{"type": "text", "text": "What happens in the video?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=128)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Use without it

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
```
(the code that runs is the copy of videollamb_hf {version} saved in this repository: read it before trusting it).

## Provenance

- Converted from `{source}`{revision} with `videollamb-hf convert` (videollamb_hf {version}, transformers
  {transformers_version}); tower weights: {towers}; dtype: {dtype}.
- Key names: the authors' `model.layers.*`, `model.mm_projector.{{projector,retrieval}}.*`,
  `model.{{video,image}}_tower.*_tower.*` are renamed by the rules in
  `convert_videollamb_original_to_hf.ORIGINAL_KEY_RENAMINGS`; the embedding and LM head gain two rows (the mean
  row) for the `<video>` (id {video_token_id}) and `<image>` (id {image_token_id}) placeholders, which generation
  never emits.
- Parity with the authors' code (bigai-nlco/VideoLLaMB, transformers 4.39.1), measured on tiny checkpoints in
  this layout: relative logit difference {parity}, identical greedy tokens.
- Generation defaults: greedy, `</s>` ends, `<unk>` pads.

## License and citation

The weights keep the license of the original checkpoint ({license}; LLaMA-2 / Vicuna terms apply to the language
model). Please cite the authors:

```bibtex
@article{{videollamb,
    author    = {{Wang, Yuxuan and Xie, Cihang and Liu, Yang and Zheng, Zilong}},
    title     = {{VideoLLaMB: Long-context Video Understanding with Recurrent Memory Bridges}},
    journal   = {{arxiv}},
    year      = {{2024}}
}}
```
"""
# Measured against the authors' code on tiny checkpoints (see the project's RESULTS.md).
PARITY_FIGURE = "<= 3e-7 (fp32)"


def _folder_is_nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def convert_original_checkpoint(
    original: str,
    output: str | os.PathLike,
    video_tower: str | None = None,
    image_tower: str | None = None,
    dtype: str | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    allow_pickle: bool = False,
    revision: str | None = None,
    license: str = "apache-2.0",
    **download_kwargs,
) -> Path:
    """Convert an original (`llava_llama`) VideoLLaMB checkpoint into a self-contained HF repo folder.

    Writes into a temporary folder beside `output` and renames it at the end, so a failure never leaves a folder
    that looks complete; refuses a non-empty `output` unless `overwrite`. Returns the output folder.
    """
    import transformers
    from huggingface_hub import ModelCard

    from . import __version__
    from .modeling_videollamb import VideoLlambForConditionalGeneration
    from .processing_videollamb import VideoLlambProcessor

    output = Path(output).absolute()
    if _folder_is_nonempty(output) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it.")
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.incomplete-", dir=output.parent))
    try:
        load = dict(download_kwargs, revision=revision) if revision else dict(download_kwargs)
        model = VideoLlambForConditionalGeneration.from_pretrained(
            original, video_tower=video_tower, image_tower=image_tower, dtype=dtype or "auto",
            use_safetensors=None if allow_pickle else True, **load,
        )  # fmt: skip
        if getattr(model.config, "_original_layout", None) is None:
            raise ValueError(
                f"{original} is not in the authors' layout (`model_type: llava_llama`); nothing to convert."
            )
        layout = model.config._original_layout
        processor = VideoLlambProcessor.from_pretrained(
            original, video_tower=video_tower, image_tower=image_tower, **load
        )
        tokenizer = processor.tokenizer
        generation = model.generation_config
        generation.eos_token_id = tokenizer.eos_token_id
        generation.pad_token_id = tokenizer.unk_token_id
        generation.bos_token_id = tokenizer.bos_token_id
        generation.do_sample = False
        for name in ("temperature", "top_p", "top_k"):
            setattr(generation, name, None)
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        processor.save_pretrained(staging)
        towers = "from the checkpoint"
        if layout.get("towers_loaded_from"):
            towers = "from " + ", ".join(layout["towers_loaded_from"])
        card = MODEL_CARD.format(
            source=original, repo=push_to_hub or output.name, version=__version__, license=license,
            transformers_version=transformers.__version__, revision=f" (revision {revision})" if revision else "",
            towers=towers, dtype=str(model.dtype).removeprefix("torch."), parity=PARITY_FIGURE,
            video_token_id=model.config.video_token_id, image_token_id=model.config.image_token_id,
        )  # fmt: skip
        ModelCard(card).save(staging / "README.md")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    logger.warning("Converted %s -> %s (%.1f MB) in %.1f s.", original, output, size / 1e6,
                   time.perf_counter() - started)  # fmt: skip
    if push_to_hub:
        from transformers.utils.hub import hf_api

        api = hf_api()
        repo_id = api.create_repo(push_to_hub, exist_ok=True, token=download_kwargs.get("token")).repo_id
        api.upload_folder(repo_id=repo_id, folder_path=str(output), commit_message=f"Convert {original}",
                          token=download_kwargs.get("token"))  # fmt: skip
        logger.warning("Pushed %s to %s.", output, repo_id)
    return output


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="videollamb-hf convert",
        description="Convert an original VideoLLaMB checkpoint (LLaVA layout, e.g. ColorfulAI/VideoLLaMB) into a "
        "self-contained Hugging Face repo folder (config, safetensors, processor, remote code, model card).",
    )
    parser.add_argument("original", help="hub id or local folder of the original checkpoint")
    parser.add_argument("output", help="folder to write (must be empty or absent, unless --overwrite)")
    parser.add_argument("--video-tower", help="LanguageBind video tower folder or hub id (default: from the config)")
    parser.add_argument("--image-tower", help="LanguageBind image tower folder or hub id (default: from the config)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="dtype of the written weights (default: the checkpoint's)")  # fmt: skip
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this hub repository")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    parser.add_argument("--revision", help="revision of the original repository")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="accept .bin weights (loaded with torch.load(weights_only=True)); off by default")  # fmt: skip
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        output = convert_original_checkpoint(
            args.original, args.output, video_tower=args.video_tower, image_tower=args.image_tower,
            dtype=None if args.dtype == "auto" else args.dtype, push_to_hub=args.push_to_hub,
            overwrite=args.overwrite, max_shard_size=args.max_shard_size, allow_pickle=args.allow_pickle,
            revision=args.revision,
        )  # fmt: skip
    except (FileExistsError, FileNotFoundError, ValueError, OSError) as error:
        print(f"videollamb-hf convert: error: {error}", file=sys.stderr)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
