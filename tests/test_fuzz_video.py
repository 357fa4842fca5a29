"""Fuzzing the decoder: mutated real clips either decode to finite tensors of the right shape or raise one of the
documented errors, within a time bound enforced from outside the decoder (a watchdog child process)."""

import random

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
