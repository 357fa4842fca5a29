"""Tiny, structurally complete VideoLLaMB pieces for tests, benchmarks and offline smoke runs, and the literal
(slow) SceneTilling reference that the fast one is checked against."""

import torch

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
    from .modeling_videollamb import VideoLlambForConditionalGeneration

    torch.manual_seed(seed)
    return VideoLlambForConditionalGeneration(get_tiny_config(**overrides)).eval()


def literal_depth_scores(similarities: torch.Tensor) -> torch.Tensor:
    """Depth scores exactly as the spec words them (and the original computes them): for each gap, climb left and
    right while the similarity does not decrease. Two nested Python loops, O(n^2) in the worst case."""
    n = similarities.shape[0]
    depth = torch.zeros_like(similarities)
    for i in range(n):
        left = similarities[i]
        for j in range(i - 1, -1, -1):
            if similarities[j] >= left:
                left = similarities[j]
            else:
                break
        right = similarities[i]
        for j in range(i + 1, n):
            if similarities[j] >= right:
                right = similarities[j]
            else:
                break
        depth[i] = left + right - 2 * similarities[i]
    return depth


def literal_scene_boundaries(
    features: torch.Tensor, mode: str = "top_k", top_k: int = 3, alpha: float = 0.5, max_boundaries: int = 15
) -> list[int]:
    """SceneTilling boundaries from `literal_depth_scores`, with the documented choices of `find_scene_boundaries`
    where the original is undefined (k clamped, one frame, fewer than 3 gaps in threshold mode, half precision)."""
    if features.shape[0] == 1:
        return [0]
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    similarities = torch.cosine_similarity(features[:-1], features[1:])
    return literal_boundaries_from_similarities(similarities, mode, top_k, alpha, max_boundaries)


def literal_boundaries_from_similarities(
    similarities: torch.Tensor, mode: str = "top_k", top_k: int = 3, alpha: float = 0.5, max_boundaries: int = 15
) -> list[int]:
    """The literal definition from the similarity curve on (nested-loop depths, then selection)."""
    n = similarities.shape[0] + 1
    depth = literal_depth_scores(similarities)
    if mode == "top_k":
        found = torch.topk(depth, min(top_k, n - 1)).indices.sort()[0].tolist()
    elif n - 1 < 3:
        found = []
    else:
        std, mean = torch.std_mean(depth)
        found = (depth > mean + alpha * std).nonzero().squeeze(-1).tolist()
        if len(found) > max_boundaries:
            found = torch.topk(depth, max_boundaries).indices.sort()[0].tolist()
    if not found or found[-1] != n - 1:
        found.append(n - 1)
    return found


__all__ = [
    "get_tiny_config",
    "get_tiny_model",
    "literal_boundaries_from_similarities",
    "literal_depth_scores",
    "literal_scene_boundaries",
]
