"""Video decoding with PyAV that decodes only what is sampled.

One demux pass over the packets (no decoding) gives the exact frame count, every frame's timestamp and the
keyframe positions. Sampled frames are then decoded by seeking to the keyframe before a sample and decoding
forward to it, or by decoding on when the next sample is close (fewer frames to decode than a seek would save):
the choice is made per sample from the index. Frames that are not kept are never converted to RGB. The frames
returned are the frames a full decode gives at the same indices (presentation order).

Bad input raises `FileNotFoundError` (missing file) or [`VideoDecodingError`] (a `ValueError`: directory, empty,
corrupt or truncated file, audio-only file, image file, unsupported URL scheme) naming the input; a sampled frame
of a good video that cannot be decoded is replaced by the next frame after it that decodes, or, where none after it
decodes (the end of the stream), by the last frame decoded before it, with a warning either way.
"""

import collections
import io
import os
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np


# Image containers FFmpeg would happily open as one-frame "videos".
_IMAGE_FORMATS = {"image2", "image2pipe", "apng", "webp_pipe", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe"}
# Seek when the keyframe before the next sample lies more than this many frames ahead of the decoder: below it,
# decoding on is cheaper than flushing the decoder (measured in benchmarks/bench_video_decode.py).
SEEK_MIN_GAP = 16
URL_TIMEOUT_S = 60.0
# Videos up to this size keep their packets from the index pass (no second read when decoding from the start).
PACKET_CACHE_MAX_BYTES = 64 * 2**20
# Parallel decoders for sparse samples: one per available core (PyAV releases the GIL while decoding).
MAX_DECODE_WORKERS = max(
    1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
)
ACCEPTED = (
    "a local video file path, an http(s) URL, bytes or a binary file object holding a video, a uint8 array "
    "(frames, height, width, 3), a torch tensor, or a list of PIL images / arrays"
)


class VideoDecodingError(ValueError):
    """A video that cannot be read; the message names the input and what went wrong."""


@dataclass
class VideoIndex:
    """What one demux pass tells about the video stream (presentation order).

    Attributes:
        pts (`np.ndarray` of int64): presentation timestamp of every frame, in `time_base` units.
        keyframes (`np.ndarray` of int64): indices of the keyframes.
        time_base (`Fraction`): seconds per `pts` unit.
        start_pts (`int`): timestamp of the first frame (a start-time offset is subtracted from timestamps).
        fps (`float`): average frame rate (frames / duration).
        duration (`float`): seconds, first frame to the end of the last.
        width, height (`int`): frame size after rotation.
        rotation (`int`): degrees counter-clockwise applied to each decoded frame (read off the first decoded frame;
            `width`/`height` follow it).
    """

    pts: np.ndarray
    keyframes: np.ndarray
    time_base: Fraction
    start_pts: int
    fps: float
    duration: float
    width: int
    height: int
    rotation: int

    @property
    def num_frames(self) -> int:
        return int(self.pts.shape[0])

    def timestamps(self, indices) -> list[float]:
        """Seconds from the first frame, for the frames at `indices`."""
        return [float((int(self.pts[i]) - self.start_pts) * self.time_base) for i in indices]


def describe(source) -> str:
    if isinstance(source, (str, Path)):
        return repr(str(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _download(url: str) -> io.BytesIO:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            return io.BytesIO(response.read())
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise VideoDecodingError(f"Could not download the video at {url!r}: {error}.") from error


def resolve_source(source) -> tuple[str | BinaryIO, str]:
    """What `av.open` gets for a path / URL / bytes / file object, and a name for messages."""
    name = describe(source)
    if isinstance(source, Path):
        source = str(source)
    if isinstance(source, str):
        if "://" in source:
            scheme = source.split("://", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise VideoDecodingError(f"Unsupported URL scheme {scheme!r} in {name}: use http(s) or a local path.")
            return _download(source), name
        if not os.path.exists(source):
            raise FileNotFoundError(f"No such video file: {name}.")
        if os.path.isdir(source):
            raise VideoDecodingError(f"{name} is a directory, not a video file. Accepted: {ACCEPTED}.")
        if os.path.getsize(source) == 0:
            raise VideoDecodingError(f"{name} is an empty file.")
        return source, name
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise VideoDecodingError("The video bytes are empty.")
        return io.BytesIO(bytes(source)), name
    if hasattr(source, "read"):
        return source, name
    raise TypeError(f"Cannot read a video from {type(source).__name__}. Accepted: {ACCEPTED}.")


class VideoReader:
    """An open video: its index, and decoding of frames by index. Use as a context manager.

    Args:
        source: a path, an http(s) URL, bytes or a binary file object.
        threads (`bool`): let FFmpeg decode with threads (`thread_type="AUTO"`).
    """

    def __init__(self, source, threads: bool = True):
        self._input, self.name = resolve_source(source)
        # How to open the same input again for a parallel decoder (paths and in-memory bytes; not user streams).
        if isinstance(self._input, str):
            self._reopen = lambda path=self._input: path
        elif isinstance(self._input, io.BytesIO):
            data = self._input.getbuffer()
            self._reopen = lambda: io.BytesIO(data)
        else:
            self._reopen = None
        try:
            self.container = av.open(self._input, mode="r", metadata_errors="ignore")
        except av.FFmpegError as error:
            raise VideoDecodingError(f"Could not read {self.name} as a video: {error}.") from error
        try:
            if self.container.format.name in _IMAGE_FORMATS:
                raise VideoDecodingError(
                    f"{self.name} is an image ({self.container.format.name}), not a video: pass it as an image."
                )
            if not self.container.streams.video:
                kinds = sorted({s.type for s in self.container.streams}) or ["none"]
                raise VideoDecodingError(f"{self.name} has no video stream (streams: {', '.join(kinds)}).")
            self.stream = self.container.streams.video[0]
            if self.stream.codec_context is None:
                raise VideoDecodingError(f"{self.name}: no decoder is available for its video codec.")
            self.threads = threads
            self.index = self._build_index()
        except av.FFmpegError as error:
            self.container.close()
            raise VideoDecodingError(f"Could not read {self.name} as a video: {error}.") from error
        except BaseException:
            self.container.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.container.close()

    def _packets(self, container=None, stream=None):
        """Demux the video stream; a truncated file ends the stream (with a warning) instead of failing."""
        container = container or self.container
        try:
            yield from container.demux(stream or self.stream)
        except av.FFmpegError as error:
            warnings.warn(
                f"{self.name}: the stream ends early ({error}); using the frames before that point.", stacklevel=2
            )

    def _build_index(self) -> VideoIndex:
        stream = self.stream
        pts, keys = [], []
        # A small video's packets are kept from this pass, so that decoding from the start replays them instead of
        # reading the file a second time.
        cache = [] if self._input_size() <= PACKET_CACHE_MAX_BYTES else None
        for packet in self._packets():
            if packet.size == 0:
                continue
            if cache is not None:
                cache.append(packet)
            if packet.is_discard:
                continue
            if packet.pts is None:
                return self._build_index_by_decoding()
            pts.append(packet.pts)
            keys.append(packet.is_keyframe)
        if not pts:
            raise VideoDecodingError(f"{self.name} holds no video frame.")
        self._packet_cache = cache
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        return self._finish_index(np.asarray(pts, dtype=np.int64)[order], np.asarray(keys, dtype=bool)[order], stream)

    def _input_size(self) -> int:
        if isinstance(self._input, str):
            return os.path.getsize(self._input)
        if isinstance(self._input, io.BytesIO):
            return self._input.getbuffer().nbytes
        return PACKET_CACHE_MAX_BYTES + 1

    def _replay_cached_packets(self):
        """Decoded frames of the whole stream from the packets kept by the index pass."""
        self.stream.codec_context.flush_buffers()  # a fresh start for the decoder; no container seek needed
        return self._decode_packets([*self._packet_cache, None], self.stream)

    def _build_index_by_decoding(self) -> VideoIndex:
        """Fallback for streams without packet timestamps (e.g. raw H.264): decode once to count."""
        self.container.seek(0)
        pts, keys = [], []
        for i, frame in enumerate(self._decoded_frames()):
            pts.append(frame.pts if frame.pts is not None else i)
            keys.append(bool(frame.key_frame) or i == 0)
        if not pts:
            raise VideoDecodingError(f"{self.name} holds no decodable video frame.")
        self._sequential_only = True
        return self._finish_index(np.asarray(pts, dtype=np.int64), np.asarray(keys, dtype=bool), self.stream)

    def _finish_index(self, pts: np.ndarray, keys: np.ndarray, stream) -> VideoIndex:
        keys[0] = True  # decoding always starts somewhere; the first frame is reachable from the start
        time_base = stream.time_base or Fraction(1, 1)
        frame_step = np.median(np.diff(pts)) if pts.shape[0] > 1 else 0
        span = float((int(pts[-1]) - int(pts[0]) + frame_step) * time_base)
        if span <= 0:
            rate = float(stream.average_rate or stream.guessed_rate or 1)
            span = pts.shape[0] / rate
        return VideoIndex(
            pts=pts,
            keyframes=np.flatnonzero(keys),
            time_base=time_base,
            start_pts=int(pts[0]),
            fps=pts.shape[0] / span,
            duration=span,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rotation=0,
        )

    def _decoded_frames(self, container=None, stream=None):
        """Decoded frames from the current position of `container` (default: ours)."""
        return self._decode_packets(self._packets(container, stream), stream or self.stream)

    def _decode_packets(self, packets, stream):
        """Frames decoded from `packets` (`None` flushes); a packet that fails to decode is skipped, with one
        warning per call."""
        warned = False
        for packet in packets:
            try:
                frames = stream.decode(packet)
            except av.FFmpegError as error:
                if not warned:
                    warnings.warn(f"{self.name}: skipping undecodable data ({error}).", stacklevel=2)
                    warned = True
                continue
            yield from frames

    def _note_rotation(self, frame):
        """The display-matrix rotation travels with decoded frames; the index learns it from the first one."""
        rotation = int(round(frame.rotation or 0)) % 360 // 90 * 90
        if rotation != self.index.rotation:
            index = self.index
            if (rotation - index.rotation) % 180:
                index.width, index.height = index.height, index.width
            index.rotation = rotation

    def _to_rgb(self, frame) -> np.ndarray:
        self._note_rotation(frame)
        array = frame.to_ndarray(format="rgb24")
        if self.index.rotation:
            array = np.ascontiguousarray(np.rot90(array, k=self.index.rotation // 90))
        return array

    def get_frames(self, indices) -> np.ndarray:
        """RGB frames at `indices` (presentation order, repeats allowed), `(len(indices), H, W, 3)` uint8."""
        try:
            return self._get_frames(indices)
        except av.FFmpegError as error:  # e.g. a damaged file that cannot seek
            raise VideoDecodingError(f"Could not decode {self.name}: {error}.") from error

    def _get_frames(self, indices) -> np.ndarray:
        index = self.index
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros((0, index.height, index.width, 3), dtype=np.uint8)
        if indices.min() < 0 or indices.max() >= index.num_frames:
            raise IndexError(
                f"Frame indices must lie in [0, {index.num_frames - 1}], got {indices.min()}..{indices.max()}."
            )
        targets = np.unique(indices)
        parts = self._split_for_workers(targets)
        if len(parts) > 1:
            with ThreadPoolExecutor(len(parts)) as pool:
                found = {}
                for part in pool.map(self._decode_in_own_container, parts):
                    found.update(part)
        else:
            if self.threads and not self.stream.codec_context.is_open:  # fixed once the decoder has started
                self.stream.thread_type = "AUTO"
            if MAX_DECODE_WORKERS > 1 and len(targets) > 1:
                with ThreadPoolExecutor(MAX_DECODE_WORKERS) as convert:
                    found = self._decode_targets(targets, self.container, self.stream, convert)
            else:
                found = self._decode_targets(targets, self.container, self.stream)
        return np.stack([found[int(i)] for i in indices])

    def _seeks(self, targets: np.ndarray) -> np.ndarray:
        """Which targets the decoder reaches by seeking (the others by decoding on from the previous target)."""
        keyframes = self.index.keyframes[np.searchsorted(self.index.keyframes, targets, side="right") - 1]
        previous = np.concatenate([[-(10**18)], targets[:-1]])
        return keyframes > previous + SEEK_MIN_GAP

    def _split_for_workers(self, targets: np.ndarray) -> list[np.ndarray]:
        """Sparse samples (several seeks) are decoded by independent decoders in parallel, one per core, each on
        a contiguous share of the seeks; dense samples by one frame-threaded decoder."""
        if self._reopen is None or getattr(self, "_sequential_only", False):
            return [targets]
        seeks = np.flatnonzero(self._seeks(targets))
        workers = min(MAX_DECODE_WORKERS, len(seeks))
        if workers < 2:
            return [targets]
        cuts = seeks[np.linspace(0, len(seeks), workers, endpoint=False).astype(int)][1:]
        return np.split(targets, cuts)

    def _decode_in_own_container(self, targets: np.ndarray) -> dict[int, np.ndarray]:
        with av.open(self._reopen(), mode="r", metadata_errors="ignore") as container:
            return self._decode_targets(targets, container, container.streams.video[self.stream.index])

    def _decode_targets(self, targets: np.ndarray, container, stream, convert=None) -> dict[int, np.ndarray]:
        """RGB frames at sorted unique `targets`. With `convert` (an executor), the RGB conversions run on other
        threads while decoding goes on (a few frames in flight at a time)."""
        index = self.index
        pts = index.pts
        found: dict = {}
        in_flight = collections.deque()
        frames = None
        position = -1  # index of the last frame the decoder returned
        sequential = getattr(self, "_sequential_only", False)
        for target in targets.tolist():
            keyframe = int(index.keyframes[np.searchsorted(index.keyframes, target, side="right") - 1])
            must_seek = frames is None or target <= position
            if not sequential and (must_seek or keyframe > position + SEEK_MIN_GAP):
                if keyframe == 0 and container is self.container and getattr(self, "_packet_cache", None):
                    frames = self._replay_cached_packets()
                else:
                    container.seek(int(pts[keyframe]), stream=stream, backward=True, any_frame=False)
                    frames = self._decoded_frames(container, stream)
                position = -1
            elif frames is None:
                container.seek(0)
                frames = self._decoded_frames(container, stream)
            target_pts = int(pts[target])
            for frame in frames:
                frame_pts = frame.pts
                if frame_pts is None or frame_pts < target_pts:
                    continue
                position = int(np.searchsorted(pts, frame_pts))
                if frame_pts != target_pts:
                    warnings.warn(
                        f"{self.name}: frame {target} could not be decoded; using the next decodable frame instead.",
                        stacklevel=2,
                    )
                if convert is None:
                    found[target] = self._to_rgb(frame)
                else:
                    found[target] = convert.submit(self._to_rgb, frame)
                    in_flight.append(found[target])
                    if len(in_flight) > 4 * MAX_DECODE_WORKERS:
                        in_flight.popleft().result()
                break
            else:
                if found:
                    warnings.warn(
                        f"{self.name}: frame {target} could not be decoded; using the last decoded one.", stacklevel=2
                    )
                    found[target] = found[max(found)]
                else:
                    raise VideoDecodingError(f"{self.name}: no frame could be decoded.")
        return {target: value.result() if convert is not None else value for target, value in found.items()}

    def keyframe_thumbnails(self, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Small grayscale thumbnails of the intra-coded frames only (keyframes and the I-frames encoders put at
        scene cuts); the decoder skips every other frame.

        Returns:
            `(frame indices (K,), thumbnails (K, size, size) uint8)`.
        """
        try:
            return self._keyframe_thumbnails(size)
        except av.FFmpegError as error:
            raise VideoDecodingError(f"Could not decode {self.name}: {error}.") from error

    def _keyframe_thumbnails(self, size: int = 32) -> tuple[np.ndarray, np.ndarray]:

        codec = self.stream.codec_context
        codec.skip_frame = "NONINTRA"
        try:
            self.container.seek(0)
            indices, thumbs = [], []
            for frame in self._decoded_frames():
                if frame.pts is None:
                    continue
                indices.append(int(np.searchsorted(self.index.pts, frame.pts)))
                thumbs.append(frame.reformat(width=size, height=size, format="gray").to_ndarray())
        finally:
            codec.skip_frame = "DEFAULT"
            self.container.seek(0)
        if not thumbs:
            return np.zeros(0, dtype=np.int64), np.zeros((0, size, size), dtype=np.uint8)
        return np.asarray(indices, dtype=np.int64), np.stack(thumbs)


def decode_all_frames(source) -> np.ndarray:
    """Every frame, decoded sequentially: the reference the sampled decoder is checked against."""
    with VideoReader(source) as reader:
        reader.container.seek(0)
        return np.stack([reader._to_rgb(frame) for frame in reader._decoded_frames()])


__all__ = ["VideoDecodingError", "VideoIndex", "VideoReader", "decode_all_frames"]
