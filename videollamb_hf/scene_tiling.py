"""SceneTilling: cut a video into semantic segments from one feature vector per frame.

The similarity of neighbouring frames forms a curve over the gaps between frames; a gap's *depth* is how far the
curve climbs on both sides of it before it turns down (TextTiling's depth score). The deepest gaps are scene
boundaries. VideoLLaMB's bridge takes the 3 deepest (`mode="top_k"`); its streaming demo keeps every gap deeper
than mean + alpha * std (`mode="threshold"`).

The original scores depths with two nested Python loops (O(n^2) in the worst case). Here each gap's climb is found
with one cumulative max/min over "break" positions, O(n), and the depth values are bit-identical to the loop's
(a peak is always one of the similarity values, and the final arithmetic is the same), so the `torch.topk` call
that picks boundaries breaks ties exactly as the original does on the same device.
"""

from typing import Literal

import torch


_SIMILARITY_BLOCK_ELEMENTS = 1 << 17


def frame_similarities(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each frame with the next one.

    Args:
        features (`torch.Tensor` of shape `(num_frames, dim)`): one feature vector per frame. float16/bfloat16 are
            scored in float32.

    Returns:
        `torch.Tensor` of shape `(num_frames - 1,)`, float32 (float64 stays float64). Zero vectors give 0, not NaN
        (`torch.cosine_similarity` clamps the norms).
    """
    if features.ndim != 2:
        raise ValueError(f"`features` must have shape (num_frames, dim), got {tuple(features.shape)}.")
    if not features.is_floating_point() or features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    # Row blocks that stay in cache: several times faster on long videos, and each row's value is the very one a
    # single `torch.cosine_similarity` call gives (the per-row computation does not depend on the block).
    rows = max(1, _SIMILARITY_BLOCK_ELEMENTS // max(1, features.shape[1]))
    num_gaps = features.shape[0] - 1
    return torch.cat(
        [
            torch.cosine_similarity(features[start:stop], features[start + 1 : stop + 1])
            for start, stop in ((s, min(s + rows, num_gaps)) for s in range(0, num_gaps, rows))
        ]
        or [features.new_zeros(0)]
    )


def depth_scores(similarities: torch.Tensor) -> torch.Tensor:
    """Depth of every gap: `left_peak + right_peak - 2 * similarity`.

    The left peak of gap i is reached by walking left while the similarity does not decrease
    (`sim[j - 1] >= sim[j]`); the right peak likewise to the right. Walking stops at the first "break", so the peak
    is the similarity at the nearest break, found for all gaps at once with a cumulative max (left) or min (right)
    over the break positions.

    Args:
        similarities (`torch.Tensor` of shape `(num_gaps,)`).

    Returns:
        `torch.Tensor` of shape `(num_gaps,)`, same dtype, equal bit for bit to the original nested loops.
    """
    sim = similarities
    n = sim.shape[0]
    if n == 0:
        return sim.clone()
    positions = torch.arange(n, device=sim.device)
    # The walk left from j continues to j - 1 only if sim[j - 1] >= sim[j]; written as `not >=` so that NaN breaks
    # the walk exactly as the original comparison does.
    left_break = torch.ones(n, dtype=torch.bool, device=sim.device)
    left_break[1:] = ~(sim[:-1] >= sim[1:])
    left_end = torch.where(left_break, positions, 0).cummax(0).values
    right_break = torch.ones(n, dtype=torch.bool, device=sim.device)
    right_break[:-1] = ~(sim[1:] >= sim[:-1])
    right_end = torch.where(right_break, positions, n - 1).flip(0).cummin(0).values.flip(0)
    return sim[left_end] + sim[right_end] - 2 * sim


def find_scene_boundaries(
    features: torch.Tensor,
    mode: Literal["top_k", "threshold"] = "top_k",
    top_k: int = 3,
    alpha: float = 0.5,
    max_boundaries: int = 15,
) -> list[int]:
    """Scene boundaries of a video: sorted frame indices, each the last frame of a segment.

    Args:
        features (`torch.Tensor` of shape `(num_frames, dim)`): one feature per frame (VideoLLaMB: the video
            tower's CLS token).
        mode (`str`): `"top_k"`: the `top_k` deepest gaps. `"threshold"`: gaps deeper than mean + `alpha` * std
            (unbiased std), the `max_boundaries` deepest if more.
        top_k (`int`): boundaries in top-k mode; clamped to the number of gaps (the original raises instead).
        alpha (`float`): threshold mode's multiple of the standard deviation.
        max_boundaries (`int`): threshold mode's cap.

    Returns:
        `list[int]`, strictly increasing, always ending with `num_frames - 1`. One frame gives `[0]`; threshold mode
        with fewer than 3 gaps gives no interior boundary (the choice made here where the spread of the depths is
        not meaningful).
    """
    num_frames = features.shape[0]
    if num_frames == 0:
        raise ValueError("`features` holds no frame: SceneTilling needs at least one.")
    if mode not in ("top_k", "threshold"):
        raise ValueError(f"`mode` must be 'top_k' or 'threshold', got {mode!r}.")
    if num_frames == 1:
        return [0]
    return boundaries_from_depths(
        depth_scores(frame_similarities(features)), mode, top_k=top_k, alpha=alpha, max_boundaries=max_boundaries
    )


def boundaries_from_depths(
    depths: torch.Tensor,
    mode: Literal["top_k", "threshold"] = "top_k",
    top_k: int = 3,
    alpha: float = 0.5,
    max_boundaries: int = 15,
) -> list[int]:
    """The boundary selection of [`find_scene_boundaries`] from the depth scores of its `num_frames - 1` gaps."""
    num_gaps = depths.shape[0]
    if mode == "top_k":
        # Same call as the original (`torch.topk(depth, k).indices.sort()`), so ties break the same way.
        boundaries = torch.topk(depths, min(top_k, num_gaps)).indices.sort()[0].tolist()
    elif num_gaps < 3:
        boundaries = []
    else:
        std, mean = torch.std_mean(depths)
        boundaries = (depths > mean + alpha * std).nonzero().squeeze(-1).tolist()
        if len(boundaries) > max_boundaries:
            boundaries = torch.topk(depths, max_boundaries).indices.sort()[0].tolist()
    if not boundaries or boundaries[-1] != num_gaps:
        boundaries.append(num_gaps)
    return boundaries


def boundaries_to_segments(boundaries: list[int]) -> list[tuple[int, int]]:
    """`[3, 7, 15]` -> `[(0, 3), (4, 7), (8, 15)]`: inclusive (start, end) frame indices of each segment."""
    starts = [0] + [b + 1 for b in boundaries[:-1]]
    return list(zip(starts, boundaries))


__all__ = [
    "boundaries_from_depths",
    "boundaries_to_segments",
    "depth_scores",
    "find_scene_boundaries",
    "frame_similarities",
]
