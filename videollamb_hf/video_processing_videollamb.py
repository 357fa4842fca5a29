"""VideoLlambVideoProcessor: videos in (paths, URLs, bytes, arrays, frames), `pixel_values_videos` out.

Frame sampling follows the original (`np.linspace(0, n - 1, num_frames, dtype=int)` over the n decodable frames,
or its fps rule), decoding touches only the sampled frames (see `video_decoding`), and the transform is the
original video path in torch: `/255`, CLIP normalisation, bilinear short side to 224 (pytorchvideo's
`ShortSideScale`), centre crop with Python rounding. It is deterministic: the original's random horizontal flip at
inference is not reproduced; `do_flip=True` turns it on as a training augmentation.

Rules (documented choices):
- `fps` given (per call, or as the default when the call gives no `num_frames`) decides the count with the
  original's rule (`n = ceil(seconds * fps)`, then `min(max_frames, max(8, n - n % 8))`); otherwise `num_frames` is
  used, rounded UP to a multiple of the temporal group size (8): 12 -> 16, 1 -> 8. A per-call argument beats a
  default: `num_frames=` in a call overrides a default `fps` (e.g. VideoLLaMB_Mem's 1 fps); with both in one call,
  `fps` wins.
- `start_time` / `end_time` (seconds from the first frame) restrict sampling to frames with
  `start_time <= t < end_time`.
- `sampling="scenes"`: a sparse pre-pass decodes only the intra-coded frames (the decoder skips all others) into
  tiny grayscale thumbnails and runs SceneTilling (threshold mode) on them (with fewer than 4 intra frames, each
  starts a scene); the frame budget is then spread over
  the scenes found (at least one frame per scene while the budget allows, the rest in proportion to scene length,
  uniform within a scene), so a short scene in a long video is not skipped. Limitation: a cut is seen only where
  the encoder put an intra frame, which encoders do at scene changes (x264: at most every `keyint_min` frames,
  25 by default), so a scene shorter than that right after another cut can be missed. Its cost is one decode of
  the intra frames (`benchmarks/bench_video_decode.py`).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata

from .scene_tiling import find_scene_boundaries
from .video_decoding import ACCEPTED, VideoDecodingError, VideoReader, describe


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Frames transformed at a time: bounds the float copy of full-resolution frames.
_TRANSFORM_CHUNK = 16


class VideoLlambVideosKwargs(VideosKwargs, total=False):
    """Extra per-call video options (see the module docstring)."""

    sampling: str
    start_time: float
    end_time: float
    max_frames: int
    return_scenes: bool
    do_flip: bool


@dataclass
class VideoLlambVideoMetadata(VideoMetadata):
    """Per-video metadata: transformers' fields plus the sampled frames' real timestamps (variable frame rate
    safe) and, with `return_scenes=True`, the scenes found (`[(start_frame, end_frame, start_s, end_s), ...]`)."""

    frames_timestamps: list[float] | None = None
    scenes: list[tuple[int, int, float, float]] | None = None
    rotation: int = 0

    @property
    def timestamps(self) -> list[float]:
        if self.frames_timestamps is not None:
            return self.frames_timestamps
        return super().timestamps


def round_up_to_group(num_frames: int, group: int) -> int:
    return max(group, math.ceil(num_frames / group) * group)


def frames_for_fps(seconds: float, fps: float, max_frames: int, group: int) -> int:
    """The original's fps rule: `n = ceil(seconds * fps)`, then `min(max_frames, max(8, n - n % 8))`."""
    n = math.ceil(seconds * fps)
    return min(max_frames, max(group, n - n % group))


def uniform_indices(first: int, count: int, num_frames: int) -> np.ndarray:
    """`first + np.linspace(0, count - 1, num_frames, dtype=int)`: the original's sampler on a frame range."""
    return first + np.linspace(0, count - 1, num_frames, dtype=int)


def spread_over_scenes(segments: list[tuple[int, int]], num_frames: int) -> np.ndarray:
    """Spread `num_frames` samples over inclusive frame ranges: one per scene while the budget allows (longest
    scenes first), the rest by largest remainder in proportion to length; uniform within each scene."""
    lengths = np.array([end - start + 1 for start, end in segments], dtype=np.float64)
    counts = np.zeros(len(segments), dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    counts[order[: min(num_frames, len(segments))]] = 1
    remaining = num_frames - counts.sum()
    if remaining > 0:
        share = lengths / lengths.sum() * remaining
        counts += np.floor(share).astype(np.int64)
        left = num_frames - counts.sum()
        counts[np.argsort(-(share - np.floor(share)), kind="stable")[:left]] += 1
    parts = [
        np.linspace(start, end, count, dtype=int) for (start, end), count in zip(segments, counts.tolist()) if count
    ]
    return np.sort(np.concatenate(parts))


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """pytorchvideo's `ShortSideScale`: the short side becomes `size`, the long side `floor(long / short * size)`."""
    if width < height:
        return int(math.floor(height / width * size)), size
    return size, int(math.floor(width / height * size))


def center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop of `(..., H, W)` with the offsets `int(round((side - crop) / 2))` (Python's round)."""
    top = int(round((frames.shape[-2] - height) / 2.0))
    left = int(round((frames.shape[-1] - width) / 2.0))
    return frames[..., top : top + height, left : left + width]


def transform_video_frames(
    frames: np.ndarray | torch.Tensor,
    size: int = 224,
    crop: tuple[int, int] = (224, 224),
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """The original video transform, `(T, H, W, 3)` uint8 -> `(T, 3, crop_h, crop_w)` float32, in frame chunks."""
    frames = torch.as_tensor(frames)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    height, width = frames.shape[1:3]
    new_size = short_side_size(height, width, size)
    out = []
    for chunk in frames.split(_TRANSFORM_CHUNK):
        x = chunk.permute(0, 3, 1, 2).float() / 255.0  # (t, 3, H, W)
        x = (x - mean_t) / std_t  # the original normalises before resizing
        x = F.interpolate(x, size=new_size, mode="bilinear", align_corners=False)
        out.append(center_crop(x, *crop))
    return torch.cat(out)


def _frames_from_array(video) -> np.ndarray:
    """`(T, H, W, 3)` uint8 from an array, a tensor (channels last or first) or a list of PIL images / arrays."""
    if isinstance(video, (list, tuple)):
        frames = [np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f) for f in video]
        if not frames:
            raise ValueError("Got an empty list of frames.")
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"All frames of a video must have the same shape, got {sorted(shapes)}.")
        video = np.stack(frames)
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        if video.ndim == 4 and video.shape[1] in (1, 3) and video.shape[-1] not in (1, 3):
            video = video.permute(0, 2, 3, 1)
        video = video.numpy()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"A video array must have shape (frames, height, width, 3), got {video.shape}.")
    if video.shape[0] == 0:
        raise ValueError("Got a video array with no frame.")
    if video.dtype != np.uint8:
        if np.issubdtype(video.dtype, np.floating) and video.size and 0.0 <= video.min() and video.max() <= 1.0:
            raise ValueError("Float frames in [0, 1] are ambiguous: pass uint8 frames (0-255).")
        video = np.clip(video, 0, 255).astype(np.uint8)
    return video


def _is_frame(item) -> bool:
    if hasattr(item, "convert") and hasattr(item, "size"):  # PIL image
        return True
    return isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 3


def make_batched_videos(videos) -> list:
    """A single video or a batch of them -> a list of videos."""
    if isinstance(videos, (str, Path, bytes, bytearray, memoryview)) or hasattr(videos, "read"):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 5:
            return list(videos)
        return [videos]
    if isinstance(videos, (list, tuple)):
        if not videos:
            raise ValueError(f"Got an empty list of videos. Accepted: {ACCEPTED}.")
        if all(_is_frame(v) for v in videos):
            return [list(videos)]
        return list(videos)
    raise TypeError(f"Cannot read a video from {type(videos).__name__}. Accepted: {ACCEPTED}.")


class VideoLlambVideoProcessor(VideoProcessorMixin):
    r"""Video processor of VideoLLaMB (PyAV decoding, original sampling and transform, no torchvision).

    Args:
        num_frames (`int`, defaults to 16): frames per video (rounded up to a multiple of `temporal_group_size`).
        fps (`float`, *optional*): sample by video time instead (see the module docstring); wins over the default
            `num_frames`, and over a `num_frames` given in the same call; a call's `num_frames` overrides it.
        max_frames (`int`, defaults to 512): cap of the fps rule.
        temporal_group_size (`int`, defaults to 8): the video tower's group; frame counts are multiples of it.
        sampling (`str`, defaults to `"uniform"`): `"uniform"` (the original) or `"scenes"`.
        size (`dict`, defaults to `{"shortest_edge": 224}`), crop_size (`dict`, defaults to 224 x 224).
        image_mean, image_std: CLIP normalisation.
        do_flip (`bool`, defaults to `False`): random horizontal flip (p = 0.5) per video, for training only.
        scene_alpha (`float`, defaults to 0.5): SceneTilling threshold for `sampling="scenes"`.
        frame_transform (`str`, defaults to `"languagebind"`): `"languagebind"` (the released model's video
            transform: `/255`, normalise, bilinear short side, crop) or `"clip"` (VideoLLaMB_Mem: CLIP's image
            processor on every frame, i.e. PIL bicubic short side, crop, `/255`, normalise).
    """

    model_input_names = ["pixel_values_videos", "video_frames_mask"]
    valid_kwargs = VideoLlambVideosKwargs
    num_frames = 16
    fps = None
    max_frames = 512
    temporal_group_size = 8
    sampling = "uniform"
    size = {"shortest_edge": 224}
    crop_size = {"height": 224, "width": 224}
    image_mean = list(OPENAI_CLIP_MEAN)
    image_std = list(OPENAI_CLIP_STD)
    do_flip = False
    scene_alpha = 0.5
    thumbnail_size = 32
    frame_transform = "languagebind"

    def __init__(self, **kwargs):
        super().__init__()
        self._set_attributes(**kwargs)

    def _set_attributes(self, **kwargs):
        for key, value in kwargs.items():
            setattr(self, key, value)

    def to_dict(self):
        output = super().to_dict()
        for key in (
            "num_frames", "fps", "max_frames", "temporal_group_size", "sampling", "size", "crop_size",
            "image_mean", "image_std", "do_flip", "scene_alpha", "thumbnail_size", "frame_transform",
        ):  # fmt: skip
            output[key] = getattr(self, key)
        return output

    def _transform(self, frames, size: int, crop: tuple[int, int]) -> torch.Tensor:
        if self.frame_transform == "languagebind":
            return transform_video_frames(frames, size, crop, self.image_mean, self.image_std)
        if self.frame_transform == "clip":
            # VideoLLaMB_Mem applies `CLIPImageProcessor` to every frame: use transformers' own (PIL backend).
            from transformers import CLIPImageProcessorPil

            processor = CLIPImageProcessorPil(
                size={"shortest_edge": size}, crop_size={"height": crop[0], "width": crop[1]},
                image_mean=self.image_mean, image_std=self.image_std,
            )  # fmt: skip
            frames = np.asarray(torch.as_tensor(frames).numpy() if isinstance(frames, torch.Tensor) else frames)
            return processor(images=list(frames), return_tensors="pt")["pixel_values"]
        raise ValueError(f"`frame_transform` must be 'languagebind' or 'clip', got {self.frame_transform!r}.")

    # -- sampling -----------------------------------------------------------------------------------------------

    def _frame_count(self, num_frames, fps, seconds, max_frames) -> int:
        group = self.temporal_group_size
        if fps is not None:
            if not fps > 0:
                raise ValueError(f"`fps` must be positive, got {fps}.")
            return frames_for_fps(seconds, fps, max_frames, group)
        if num_frames is None or int(num_frames) != num_frames or num_frames <= 0:
            raise ValueError(f"`num_frames` must be a positive integer, got {num_frames}.")
        return round_up_to_group(int(num_frames), group)

    def _time_range(self, reader: VideoReader, start_time, end_time) -> tuple[int, int]:
        index = reader.index
        first, stop = 0, index.num_frames
        if start_time is None and end_time is None:
            return first, stop
        start_time = 0.0 if start_time is None else float(start_time)
        end_time = math.inf if end_time is None else float(end_time)
        if start_time < 0 or start_time >= end_time:
            raise ValueError(f"Need 0 <= start_time < end_time, got start_time={start_time}, end_time={end_time}.")
        seconds = (index.pts - index.start_pts).astype(np.float64) * float(index.time_base)
        inside = np.flatnonzero((seconds >= start_time) & (seconds < end_time))
        if inside.size == 0:
            raise ValueError(
                f"No frame of {reader.name} lies in [{start_time}, {end_time}) s (the video lasts {index.duration:.3f} s)."
            )
        return int(inside[0]), int(inside[-1]) + 1

    def _scene_segments(self, reader: VideoReader, first: int, stop: int) -> list[tuple[int, int]]:
        keys, thumbs = reader.keyframe_thumbnails(self.thumbnail_size)
        keep = (keys >= first) & (keys < stop)
        keys, thumbs = keys[keep], thumbs[keep]
        if keys.size < 2:
            return [(first, stop - 1)]
        features = torch.from_numpy(thumbs.reshape(keys.size, -1).astype(np.float32))
        features = features - features.mean(
            dim=1, keepdim=True
        )  # cosine of centred thumbnails: contrast, not brightness
        if keys.size - 1 >= 3:
            boundaries = find_scene_boundaries(features, mode="threshold", alpha=self.scene_alpha)
        else:  # too few intra frames for a threshold: each one the encoder put there starts a scene
            boundaries = list(range(keys.size))
        starts = [first] + [int(keys[b + 1]) for b in boundaries[:-1]]
        ends = [s - 1 for s in starts[1:]] + [stop - 1]
        return list(zip(starts, ends))

    def _decode_video(self, video, num_frames, fps, max_frames, start_time, end_time, sampling, return_scenes):
        with VideoReader(video) as reader:
            indices, scenes = self._plan(reader, num_frames, fps, max_frames, start_time, end_time, sampling,
                                         return_scenes)  # fmt: skip
            frames = reader.get_frames(indices)
            # After decoding: the rotation (and so width / height) is read off the first decoded frame.
            metadata = self._metadata(reader, indices, scenes if return_scenes else None)
        return frames, metadata

    def _plan(self, reader, num_frames, fps, max_frames, start_time, end_time, sampling, return_scenes):
        """The frame indices to sample from an opened video, and its scenes where asked (nothing decoded but
        keyframe thumbnails for `sampling="scenes"`)."""
        index = reader.index
        first, stop = self._time_range(reader, start_time, end_time)
        count = stop - first
        seconds = count / index.fps
        k = self._frame_count(num_frames, fps, seconds, max_frames)
        scenes = None
        if sampling == "scenes" or return_scenes:
            segments = self._scene_segments(reader, first, stop)
            times = index.timestamps(range(index.num_frames))
            end_times = times[1:] + [index.duration]
            scenes = [(s, e, times[s], end_times[e]) for s, e in segments]
        if sampling == "scenes":
            indices = spread_over_scenes(segments, k)
        else:
            indices = uniform_indices(first, count, k)
        return indices, scenes

    def _metadata(self, reader, indices, scenes) -> "VideoLlambVideoMetadata":
        index = reader.index
        return VideoLlambVideoMetadata(
            total_num_frames=index.num_frames,
            fps=index.fps,
            width=index.width,
            height=index.height,
            duration=index.duration,
            video_backend="pyav",
            frames_indices=indices.tolist(),
            frames_timestamps=index.timestamps(indices),
            scenes=scenes,
            rotation=index.rotation,
        )

    def _sample_array(self, video, num_frames, fps, sampling):
        frames = _frames_from_array(video)
        if fps is not None:
            raise ValueError(
                "`fps` sampling needs the video's timing: pass a file, URL or bytes, or use `num_frames`."
            )
        if sampling == "scenes":
            raise ValueError("`sampling='scenes'` needs an encoded video (it reads keyframes): pass a file or bytes.")
        k = self._frame_count(num_frames, None, None, None)
        indices = uniform_indices(0, frames.shape[0], k)
        metadata = VideoLlambVideoMetadata(
            total_num_frames=frames.shape[0],
            width=frames.shape[2],
            height=frames.shape[1],
            video_backend="array",
            frames_indices=indices.tolist(),
        )
        return frames[indices], metadata

    # -- chunked decoding (long videos) ----------------------------------------------------------------------------

    def _options(self, num_frames, fps, max_frames, sampling):
        count_asked = num_frames is not None and fps is None  # a call's frame count beats the default fps
        num_frames = self.num_frames if num_frames is None else num_frames
        fps = None if count_asked else (self.fps if fps is None else fps)
        max_frames = self.max_frames if max_frames is None else max_frames
        sampling = self.sampling if sampling is None else sampling
        if sampling not in ("uniform", "scenes"):
            raise ValueError(f"`sampling` must be 'uniform' or 'scenes', got {sampling!r}.")
        return num_frames, fps, max_frames, sampling

    def sampled_frame_count(self, video, num_frames=None, fps=None, max_frames=None, start_time=None,
                            end_time=None, sampling=None) -> int | None:  # fmt: skip
        """How many frames `preprocess` would sample from `video` (a path, URL or bytes: one demux pass, no
        decoding), or None for other inputs."""
        if not (isinstance(video, (str, Path, bytes, bytearray, memoryview)) or hasattr(video, "read")):
            return None
        num_frames, fps, max_frames, sampling = self._options(num_frames, fps, max_frames, sampling)
        with VideoReader(video) as reader:
            first, stop = self._time_range(reader, start_time, end_time)
            return self._frame_count(num_frames, fps, (stop - first) / reader.index.fps, max_frames)

    def iter_pixel_chunks(self, video, chunk_frames: int = 64, num_frames=None, fps=None, max_frames=None,
                          start_time=None, end_time=None, sampling=None):  # fmt: skip
        """A long video as `preprocess` would sample and transform it, `chunk_frames` frames at a time: only one
        chunk of decoded frames and pixels exists at once (a 10,000-frame video at 224 px is 6 GB as one fp32
        pixel tensor).

        Args:
            video: a path, URL, bytes or binary file (sampled as `preprocess` does), a `(T, H, W, 3)` array / tensor
                or list of frames (sampled uniformly), or any other iterable of `(H, W, 3)` frames (all of them
                are taken, in order).
            chunk_frames: frames per chunk, a positive multiple of `temporal_group_size`.

        Returns:
            `(metadata, chunks)`: a [`VideoLlambVideoMetadata`] (None for a frame iterator) and an iterator of
            `(t, 3, crop_h, crop_w)` float32 tensors, equal, joined, to `preprocess(video)["pixel_values_videos"][0]`.
        """
        group = self.temporal_group_size
        if int(chunk_frames) != chunk_frames or chunk_frames <= 0 or chunk_frames % group:
            raise ValueError(f"`chunk_frames` must be a positive multiple of {group}, got {chunk_frames}.")
        num_frames, fps, max_frames, sampling = self._options(num_frames, fps, max_frames, sampling)
        size = self.size["shortest_edge"]
        crop = (self.crop_size["height"], self.crop_size["width"])
        if isinstance(video, (str, Path, bytes, bytearray, memoryview)) or hasattr(video, "read"):
            reader = VideoReader(video)
            try:
                indices, _ = self._plan(reader, num_frames, fps, max_frames, start_time, end_time, sampling, False)
                # The first chunk is decoded now: the metadata's rotation is read off the first decoded frame.
                first = self._transform(reader.get_frames(indices[:chunk_frames]), size, crop)
                metadata = self._metadata(reader, indices, None)
            except BaseException:
                reader.close()
                raise

            def chunks():
                with reader:
                    yield first
                    for begin in range(chunk_frames, len(indices), chunk_frames):
                        yield self._transform(reader.get_frames(indices[begin : begin + chunk_frames]), size, crop)

            return metadata, chunks()
        if start_time is not None or end_time is not None:
            raise ValueError("`start_time`/`end_time` need the video's timing: pass a file, URL or bytes.")
        if isinstance(video, (np.ndarray, torch.Tensor, list, tuple)):
            frames, metadata = self._sample_array(video, num_frames, fps, sampling)
            return metadata, (self._transform(frames[b : b + chunk_frames], size, crop)
                              for b in range(0, len(frames), chunk_frames))  # fmt: skip
        if not hasattr(video, "__iter__"):
            raise TypeError(f"Cannot read a video from {describe(video)}. Accepted: {ACCEPTED}, or frame iterators.")

        def from_iterator():
            buffer = []
            for frame in video:
                buffer.append(np.asarray(frame))
                if len(buffer) == chunk_frames:
                    yield self._transform(np.stack(buffer), size, crop)
                    buffer = []
            if buffer:
                yield self._transform(np.stack(buffer), size, crop)

        return None, from_iterator()

    # -- main entry ---------------------------------------------------------------------------------------------

    def preprocess(
        self,
        videos,
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        sampling: str | None = None,
        do_flip: bool | None = None,
        return_metadata: bool = False,
        return_scenes: bool = False,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Decode, sample and transform one video or a batch.

        Returns:
            `BatchFeature` with `pixel_values_videos (B, T, 3, 224, 224)`; `video_frames_mask (B, T)` when the
            videos have different frame counts (shorter ones padded at the end); `video_metadata` (a list of
            [`VideoLlambVideoMetadata`]) with `return_metadata=True` or `return_scenes=True`.
        """
        unknown = set(kwargs) - set(VideoLlambVideosKwargs.__annotations__) - {"device", "video_metadata"}
        if unknown:
            raise TypeError(f"Unexpected video processor arguments: {sorted(unknown)}.")
        num_frames, fps, max_frames, sampling = self._options(num_frames, fps, max_frames, sampling)
        do_flip = self.do_flip if do_flip is None else do_flip
        size = self.size["shortest_edge"]
        crop = (self.crop_size["height"], self.crop_size["width"])

        pixel_values, metadata = [], []
        for video in make_batched_videos(videos):
            if isinstance(video, (str, Path, bytes, bytearray, memoryview)) or hasattr(video, "read"):
                frames, meta = self._decode_video(
                    video, num_frames, fps, max_frames, start_time, end_time, sampling, return_scenes
                )
            elif isinstance(video, (np.ndarray, torch.Tensor, list, tuple)):
                if start_time is not None or end_time is not None:
                    raise ValueError("`start_time`/`end_time` need the video's timing: pass a file, URL or bytes.")
                frames, meta = self._sample_array(video, num_frames, fps, sampling)
            else:
                raise TypeError(f"Cannot read a video from {describe(video)}. Accepted: {ACCEPTED}.")
            pixels = self._transform(frames, size, crop)
            if do_flip and torch.rand(()) < 0.5:  # training augmentation only (off by default)
                pixels = pixels.flip(-1)
            pixel_values.append(pixels)
            metadata.append(meta)

        lengths = [p.shape[0] for p in pixel_values]
        longest = max(lengths)
        data = {
            "pixel_values_videos": torch.stack(
                [F.pad(p, (0, 0, 0, 0, 0, 0, 0, longest - p.shape[0])) for p in pixel_values]
            )
        }
        if len(set(lengths)) > 1:
            data["video_frames_mask"] = torch.arange(longest)[None] < torch.tensor(lengths)[:, None]
        if return_metadata or return_scenes:
            data["video_metadata"] = metadata
        return BatchFeature(data=data, tensor_type=None if return_tensors in (None, "pt") else return_tensors)


__all__ = [
    "VideoDecodingError",
    "VideoLlambVideoMetadata",
    "VideoLlambVideoProcessor",
    "transform_video_frames",
]
