"""Fuzzing the decoder: mutated real clips either decode to finite tensors of the right shape or raise one of the
documented errors, within a time bound enforced from outside the decoder (a watchdog child process)."""

import random
import warnings

import pytest
from conftest import VIDEOS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from videollamb_hf.testing_utils import DecodeWatchdog, mutate_video_bytes


CLIPS = {name: (VIDEOS / name).read_bytes() for name in ("readingsky.mp4", "sample_demo_3.mp4")}
ACCEPTED = {"decoded", "clear error"}


@pytest.fixture(scope="module")
def watchdog():
    with DecodeWatchdog(timeout_s=20.0) as dog:
        assert dog.outcome(CLIPS["readingsky.mp4"]) == ("decoded", "")
        yield dog


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    clip=st.sampled_from(sorted(CLIPS)),
    seed=st.integers(0, 2**32 - 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), max_size=16),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
def test_mutated_clips_decode_or_fail_clearly(watchdog, clip, seed, flips, keep):
    data = bytearray(mutate_video_bytes(CLIPS[clip], CLIPS["sample_demo_3.mp4"], random.Random(seed)))
    for position, bit in flips:
        if data:
            data[int(position * len(data))] ^= 1 << bit
    if keep is not None:
        data = data[: int(keep * len(data))]
    kind, detail = watchdog.outcome(bytes(data))
    assert kind in ACCEPTED, detail


def test_the_time_bound_is_enforced_and_the_decoder_restarts():
    with DecodeWatchdog(timeout_s=20.0) as dog:
        assert dog.outcome(CLIPS["readingsky.mp4"]) == ("decoded", "")
        dog.timeout_s = 1e-4
        assert dog.outcome(CLIPS["sample_demo_3.mp4"])[0] == "over the time bound"
        dog.timeout_s = 20.0
        assert dog.outcome(CLIPS["readingsky.mp4"]) == ("decoded", "")


def test_regressions_found_by_the_fuzz_benchmark():
    """Inputs of `benchmarks/fuzz_video.py --seed 0` that once escaped: 3276, 4759, 4839 as `av.PermissionError`
    (a damaged file refusing to seek), 6364, 7178, 7562 as `AttributeError` (a stream whose codec has no decoder).
    They must decode or fail clearly, in this process too."""
    from videollamb_hf import VideoLlambVideoProcessor

    names = ("readingsky.mp4", "sample_demo_3.mp4", "sample_demo_9.mp4")
    clips = [(VIDEOS / name).read_bytes() for name in names]
    rng = random.Random(0)
    wanted = {3276, 4759, 4839, 6364, 7178, 7562}
    processor = VideoLlambVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    for i in range(max(wanted) + 1):
        data = mutate_video_bytes(rng.choice(clips), rng.choice(clips), rng)
        if i in wanted:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pixels = processor(data, num_frames=8)["pixel_values_videos"]
                assert pixels.shape == (1, 8, 3, 32, 32) and pixels.isfinite().all()
            except ValueError as error:
                assert "Could not" in str(error) or "no frame" in str(error) or "no decoder" in str(error)
