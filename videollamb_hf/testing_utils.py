"""Tiny, structurally complete VideoLLaMB pieces for tests, benchmarks and offline smoke runs."""

from .configuration_videollamb import VideoLlambConfig


TINY_TOWER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 16,
    "patch_size": 4,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

TINY_TEXT = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "vocab_size": 100,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}


def get_tiny_config(**overrides) -> VideoLlambConfig:
    """A tiny VideoLLaMB: towers of 2 layers and width 32 on 16x16 px frames (patch 4: a 4x4 grid pooled to 2x2),
    LLaMA of hidden 32 and vocabulary 100 (placeholders 98 `<video>` and 99 `<image>`), a bridge of 4 memory tokens.
    A video then takes 8 x 4 = 32 slots, an image 4. `overrides` replace any field (sub-configs as dicts)."""
    fields = {
        "text_config": dict(TINY_TEXT),
        "vision_config": dict(TINY_TOWER),
        "image_config": dict(TINY_TOWER, model_type="clip_vision_model"),
        "video_token_id": 98,
        "image_token_id": 99,
        "num_memory_tokens": 4,
        "bridge_hidden_size": 32,
        "bridge_num_attention_heads": 4,
        "bridge_intermediate_size": 64,
        "pooled_grid_size": 2,
        "tower_chunk_size": 16,
    }
    fields.update(overrides)
    return VideoLlambConfig(**fields)


def get_tiny_model(seed: int = 0, **overrides):
    """A randomly initialised tiny [`VideoLlambForConditionalGeneration`] in eval mode (see `get_tiny_config`)."""
    import torch

    from .modeling_videollamb import VideoLlambForConditionalGeneration

    torch.manual_seed(seed)
    return VideoLlambForConditionalGeneration(get_tiny_config(**overrides)).eval()


__all__ = ["get_tiny_config", "get_tiny_model"]
