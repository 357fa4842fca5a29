import os
from pathlib import Path

import pytest
import torch

import videollamb_hf  # noqa: F401  (registers the Auto classes)
from videollamb_hf.testing_utils import get_tiny_config, get_tiny_model


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIDEOS = SHARED / "data" / "videos"

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
