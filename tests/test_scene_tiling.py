"""SceneTilling against the literal definition (the original's nested loops, re-written as a reference in
`testing_utils`)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from videollamb_hf.scene_tiling import boundaries_to_segments, depth_scores, find_scene_boundaries, frame_similarities
from videollamb_hf.testing_utils import literal_depth_scores
from videollamb_hf.testing_utils import literal_scene_boundaries as literal_boundaries


# Small integer-valued features make ties (equal similarities, depth 0) common, as in short real videos.
tied_features = st.integers(1, 48).flatmap(
    lambda n: st.integers(1, 4).flatmap(
        lambda d: st.lists(st.lists(st.integers(-2, 2), min_size=d, max_size=d), min_size=n, max_size=n)
    )
)
float_features = st.integers(1, 48).flatmap(
    lambda n: st.lists(
        st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=3, max_size=3), min_size=n, max_size=n
    )
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tied_features)
def test_depth_scores_bit_identical_on_tied_inputs(rows):
    sim = frame_similarities(torch.tensor(rows, dtype=torch.float32))
    assert torch.equal(depth_scores(sim), literal_depth_scores(sim))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tied_features, float_features), st.integers(1, 6), st.sampled_from([0.0, 0.5, 1.5]))
def test_boundaries_equal_literal_definition(rows, top_k, alpha):
    features = torch.tensor(rows, dtype=torch.float32)
    assert find_scene_boundaries(features, "top_k", top_k=top_k) == literal_boundaries(features, "top_k", top_k)
    assert find_scene_boundaries(features, "threshold", alpha=alpha, max_boundaries=top_k) == literal_boundaries(
        features, "threshold", alpha=alpha, max_boundaries=top_k
    )


@pytest.mark.parametrize("seed", range(20))
def test_long_random_sequences_match(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(100, 400, (1,), generator=g))
    features = torch.randn(n, 16, generator=g)
    if seed % 2:  # piecewise-constant scenes with noise: long climbs, the loop's worst case
        features = torch.randn(8, 16, generator=g).repeat_interleave(math.ceil(n / 8), 0)[:n]
        features += 0.01 * torch.randn(n, 16, generator=g)
    sim = frame_similarities(features)
    assert torch.equal(depth_scores(sim), literal_depth_scores(sim))
    for mode in ("top_k", "threshold"):
        assert find_scene_boundaries(features, mode) == literal_boundaries(features, mode)


@pytest.mark.parametrize("shape", [(1, 8), (2, 1), (300, 1024), (5000, 32), (129, 1024), (4097, 33)])
def test_blocked_similarities_equal_one_cosine_call(shape):
    features = torch.randn(shape, generator=torch.Generator().manual_seed(shape[0]))
    expected = torch.cosine_similarity(features[:-1], features[1:])
    assert torch.equal(frame_similarities(features), expected)


def test_monotone_similarity_is_one_long_climb():
    sim = torch.linspace(0, 1, 50)
    assert torch.equal(depth_scores(sim), literal_depth_scores(sim))
    assert torch.equal(depth_scores(sim.flip(0)), literal_depth_scores(sim.flip(0)))


def test_nan_similarities_break_climbs_like_the_original():
    sim = torch.tensor([0.2, float("nan"), 0.5, 0.4, 0.9, float("nan"), 0.1])
    assert torch.equal(depth_scores(sim).isnan(), literal_depth_scores(sim).isnan())
    ok = ~depth_scores(sim).isnan()
    assert torch.equal(depth_scores(sim)[ok], literal_depth_scores(sim)[ok])


def test_constant_video_ties_break_like_topk():
    features = torch.ones(16, 8)
    depth = depth_scores(frame_similarities(features))
    assert torch.equal(depth, torch.zeros(15))
    expected = torch.topk(depth, 3).indices.sort()[0].tolist() + [15]
    assert find_scene_boundaries(features) == expected


def test_zero_vectors_give_no_nan():
    features = torch.zeros(10, 4)
    features[5:] = 1.0
    sim = frame_similarities(features)
    assert not sim.isnan().any() and not depth_scores(sim).isnan().any()
    assert torch.equal(sim[:5], torch.zeros(5))  # a zero vector is orthogonal to everything, itself included
    assert find_scene_boundaries(features, "top_k", top_k=1) == literal_boundaries(features, "top_k", 1)


def test_single_frame_and_clamped_k():
    assert find_scene_boundaries(torch.randn(1, 4)) == [0]
    assert find_scene_boundaries(torch.randn(2, 4), top_k=3) == [0, 1]
    assert find_scene_boundaries(torch.randn(3, 4), top_k=10) == [0, 1, 2]


def test_threshold_with_fewer_than_three_gaps_has_no_interior_boundary():
    for n in (2, 3):
        assert find_scene_boundaries(torch.randn(n, 4), "threshold") == [n - 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scored_in_float32(dtype):
    features = torch.randn(40, 8).to(dtype)
    assert frame_similarities(features).dtype == torch.float32
    assert find_scene_boundaries(features) == find_scene_boundaries(features.float())


def test_four_clear_scenes_are_found():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 11, 9, 7]
    features = torch.cat([torch.randn(1, 32, generator=g).expand(n, 32) for n in lengths])
    features = features + 0.01 * torch.randn(features.shape, generator=g)
    assert find_scene_boundaries(features) == [4, 15, 24, 31]
    assert boundaries_to_segments([4, 15, 24, 31]) == [(0, 4), (5, 15), (16, 24), (25, 31)]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="no frame"):
        find_scene_boundaries(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="shape"):
        find_scene_boundaries(torch.zeros(4))
    with pytest.raises(ValueError, match="mode"):
        find_scene_boundaries(torch.zeros(4, 2), mode="kmeans")
