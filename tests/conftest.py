import os
from pathlib import Path

import pytest
import torch

import videollamb_hf  # noqa: F401  (registers the Auto classes)
from videollamb_hf.testing_utils import get_tiny_config, get_tiny_model


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIDEOS = SHARED / "data" / "videos"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_video_inputs(config, seed: int = 0, frames: int = 16) -> dict:
    """A prompt with one video's placeholder slots and random 16 x 16 px frames, for the tiny checkpoints."""
    generator = torch.Generator().manual_seed(seed)
    ids = [1, 5, 6, 7] + [config.video_token_id] * config.video_seq_length + [8, 9, 10]
    return {
        "input_ids": torch.tensor([ids]),
        "pixel_values_videos": torch.randn(1, frames, 3, 16, 16, generator=generator),
    }


@pytest.fixture(scope="session")
def tiny_config():
    return get_tiny_config()


@pytest.fixture(scope="session")
def tiny_model():
    """Shared read-only tiny model (eval mode, fp32). Tests that change a model build their own."""
    return get_tiny_model()


def scene_frames(lengths, height=48, width=64, seed=0, noise=0):
    """uint8 frames (sum(lengths), H, W, 3): one blocky random picture per scene, a moving line inside (every frame
    differs), optional per-pixel noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = []
    for length in lengths:
        base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:height, :width]
        for i in range(length):
            frame = np.clip(base.astype(np.int16) + rng.integers(-noise, noise + 1, base.shape), 0, 255).astype(
                np.uint8
            )
            frame[:, (i * 2) % width] = 255  # a moving line makes every frame distinct
            frames.append(frame)
    return np.stack(frames)


def write_video(
    path, frames, fps=25, gop=12, pts=None, rotation=None, audio=False, time_base=None, faststart=False, **options
):
    """Encode `frames (T, H, W, 3)` to `path` with PyAV/libx264 (one slice per frame, like real files).

    Args:
        gop: keyframe interval. pts: explicit presentation timestamps (variable frame rate), in `time_base`.
        rotation: display-matrix rotation (degrees counter-clockwise). audio: add an AAC track.
    """
    from fractions import Fraction

    import av

    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        # 4:2:0 needs even sizes; odd-sized test videos use 4:4:4 (as some real odd-sized files do)
        stream.pix_fmt = "yuv420p" if frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 else "yuv444p"
        stream.thread_type = "FRAME"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "bf": "2", **options}
        if time_base is not None:
            stream.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array[: stream.height, : stream.width], format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = time_base or Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            import numpy as np

            samples = np.zeros((1, 1024 * 20), dtype=np.float32)
            audio_frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            audio_frame.sample_rate = 16000
            for packet in sound.encode(audio_frame):
                container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def reference_frames(path, indices):
    """Frames at `indices` from a plain sequential PyAV decode (the ground truth)."""
    import av
    import numpy as np

    wanted = set(int(i) for i in indices)
    found = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                array = frame.to_ndarray(format="rgb24")
                if frame.rotation:
                    array = np.rot90(array, k=int(frame.rotation) // 90)
                found[i] = array
    return np.stack([found[int(i)] for i in indices])


@pytest.fixture(scope="session")
def tiny_processor(tmp_path_factory):
    from videollamb_hf.testing_utils import get_tiny_processor

    return get_tiny_processor(tmp_path_factory.mktemp("tiny_tokenizer"))


def run_launched(command, timeout=600, **kwargs):
    """`subprocess.run(command, capture_output=True, text=True)` for multi-process launches, diagnosable when they
    hang: on timeout the launcher and every process it started get SIGABRT (with PYTHONFAULTHANDLER=1 each dumps its Python
    stacks into the captured stderr) and the test fails with that output instead of a bare TimeoutExpired."""
    import contextlib
    import signal
    import subprocess

    env = dict(kwargs.pop("env", None) or os.environ, PYTHONFAULTHANDLER="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True, **kwargs)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil  # accelerate's dependency

        # torchrun starts each worker in a session of its own: signal every descendant, not only the group.
        family = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"{command[:6]}... did not finish in {timeout} s; stacks at the time:\n{stderr[-12000:]}\n"
                    f"stdout tail:\n{stdout[-2000:]}")  # fmt: skip
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# -- CI: a skipped test must have an allow-listed reason ------------------------------------------------------------

SKIP_ALLOWLIST = Path(__file__).resolve().with_name("skip_allowlist.txt")
_SKIPPED = pytest.StashKey[list]()
_DISALLOWED = pytest.StashKey[list]()


def skip_allowlist(path=SKIP_ALLOWLIST):
    """The allowed skip reasons: one regular expression per line of `path` (`#` lines are comments)."""
    import re

    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return [re.compile(line) for line in lines if line and not line.startswith("#")]


def _record_skip(config, report):
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped too: not a skip
        longrepr = report.longrepr
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
        config.stash.setdefault(_SKIPPED, []).append((report.nodeid, reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _record_skip(item.config, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module skipped as a whole (a module-level importorskip)
    _record_skip(collector.config, report)
    return report


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true, a skip whose reason is not on tests/skip_allowlist.txt fails the run."""
    if os.environ.get("CI", "").lower() != "true":
        return
    allowed = skip_allowlist()
    skipped = session.config.stash.get(_SKIPPED, [])
    disallowed = [(nodeid, reason) for nodeid, reason in skipped if not any(p.search(reason) for p in allowed)]
    session.config.stash[_DISALLOWED] = disallowed
    if disallowed and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    disallowed = config.stash.get(_DISALLOWED, [])
    if disallowed:
        terminalreporter.write_sep("=", f"{len(disallowed)} skip(s) not allowed under CI=true", red=True, bold=True)
        for nodeid, reason in disallowed:
            terminalreporter.write_line(f"SKIPPED (fails CI) {nodeid}: {reason}")
        terminalreporter.write_line(
            f"Each reason matches no pattern of {SKIP_ALLOWLIST.relative_to(SKIP_ALLOWLIST.parents[1])}: install "
            "what the test needs, or allow-list the reason there if it can never run on the CI machine."
        )
