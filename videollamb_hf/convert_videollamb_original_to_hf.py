"""Key names of the authors' LLaVA-layout checkpoints (`model_type: "llava_llama"`) -> this package's layout.

`ORIGINAL_TO_HF_KEY_MAPPING` is an ordered list of `(regex, replacement)` pairs, applied first-match-wins to each
key of the authors' `state_dict()` (prefixes `lm_head`, `model.embed_tokens`, `model.layers`, `model.norm`,
`model.mm_projector.{projector,retrieval}`, `model.video_tower.video_tower`, `model.image_tower.image_tower`).
"""

import re


_ATTENTION = r"(q_proj|k_proj|v_proj)"

ORIGINAL_TO_HF_KEY_MAPPING: list[tuple[str, str]] = [
    # Language model.
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    # Towers (LanguageBind keeps CLIP's names below `vision_model`).
    (r"^model\.video_tower\.video_tower\.", r"model.video_tower."),
    (r"^model\.image_tower\.image_tower\.", r"model.image_tower."),
    # Memory bridge.
    (r"^model\.mm_projector\.projector\.(read_memory_emb|memory_tokens)$", r"model.memory_bridge.\1"),
    (
        rf"^model\.mm_projector\.projector\.layers\.(\d+)\.selfattention\.{_ATTENTION}\.",
        r"model.memory_bridge.layers.\1.attention.\2.",
    ),
    (
        r"^model\.mm_projector\.projector\.layers\.(\d+)\.selfattention\.residual\.dense\.",
        r"model.memory_bridge.layers.\1.attention.output.dense.",
    ),
    (
        r"^model\.mm_projector\.projector\.layers\.(\d+)\.selfattention\.residual\.layernorm\.",
        r"model.memory_bridge.layers.\1.attention.output.layer_norm.",
    ),
    (
        rf"^model\.mm_projector\.projector\.layers\.(\d+)\.crossattention\.{_ATTENTION}\.",
        r"model.memory_bridge.layers.\1.cross_attention.\2.",
    ),
    (
        r"^model\.mm_projector\.projector\.layers\.(\d+)\.crossattention\.residual\.dense\.",
        r"model.memory_bridge.layers.\1.cross_attention.output.dense.",
    ),
    (
        r"^model\.mm_projector\.projector\.layers\.(\d+)\.crossattention\.residual\.layernorm\.",
        r"model.memory_bridge.layers.\1.cross_attention.output.layer_norm.",
    ),
    (r"^model\.mm_projector\.projector\.layers\.(\d+)\.mlp\.0\.", r"model.memory_bridge.layers.\1.intermediate."),
    (
        r"^model\.mm_projector\.projector\.layers\.(\d+)\.residual\.dense\.",
        r"model.memory_bridge.layers.\1.output.dense.",
    ),
    (
        r"^model\.mm_projector\.projector\.layers\.(\d+)\.residual\.layernorm\.",
        r"model.memory_bridge.layers.\1.output.layer_norm.",
    ),
    (r"^model\.mm_projector\.projector\.proj\.0\.", r"model.multi_modal_projector.linear."),
    # Retriever: one layer; its self-attention is unused but present.
    (
        rf"^model\.mm_projector\.retrieval\.layers\.0\.(crossattention|selfattention)\.{_ATTENTION}\.",
        r"model.memory_bridge.retriever.\1.\2.",
    ),
    (
        r"^model\.mm_projector\.retrieval\.layers\.0\.(crossattention|selfattention)\.residual\.dense\.",
        r"model.memory_bridge.retriever.\1.output.dense.",
    ),
    (
        r"^model\.mm_projector\.retrieval\.layers\.0\.(crossattention|selfattention)\.residual\.layernorm\.",
        r"model.memory_bridge.retriever.\1.output.layer_norm.",
    ),
]

_RETRIEVER_NAMES = {"crossattention": "cross_attention", "selfattention": "self_attention"}


def convert_original_key(key: str) -> str:
    """The name of an original checkpoint key in this package, e.g.
    `model.mm_projector.projector.layers.0.mlp.0.weight` -> `model.memory_bridge.layers.0.intermediate.weight`.

    Raises:
        `KeyError` for a key that no rule covers (nothing is ever loaded under a guessed name).
    """
    for pattern, replacement in ORIGINAL_TO_HF_KEY_MAPPING:
        new, count = re.subn(pattern, replacement, key)
        if count:
            for old_name, new_name in _RETRIEVER_NAMES.items():
                new = new.replace(f"retriever.{old_name}.", f"retriever.{new_name}.")
            return new
    if key == "lm_head.weight":
        return key
    raise KeyError(f"No rule maps the original checkpoint key {key!r} to this package's layout.")


def convert_original_state_dict(state_dict: dict) -> dict:
    """Rename every key of an original `state_dict()` (see `convert_original_key`)."""
    return {convert_original_key(key): value for key, value in state_dict.items()}


__all__ = ["ORIGINAL_TO_HF_KEY_MAPPING", "convert_original_key", "convert_original_state_dict"]
