"""Video decoding and processing: real clips, generated videos (long GOPs, variable frame rate, rotation, odd
sizes, audio, truncation), exact indices, pixel parity with the original transform chain, errors, URLs."""

import functools
import http.server
import math
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import VIDEOS, reference_frames, scene_frames, write_video
from PIL import Image

from videollamb_hf import VideoDecodingError, VideoLlambVideoProcessor
from videollamb_hf.video_decoding import VideoReader
from videollamb_hf.video_processing_videollamb import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


CLIPS = {  # name: (frames, fps, seconds, width, height), from ../shared/data/videos/README.md
    "dance.mp4": (598, 29.97, 19.95, 640, 480),
    "sample_demo_1.mp4": (243, 25.0, 9.72, 640, 360),
    "sample_demo_3.mp4": (146, 23.976, 6.09, 640, 360),
    "sample_demo_9.mp4": (219, 23.976, 9.13, 596, 336),
    "readingsky.mp4": (30, 30.0, 1.0, 540, 540),
}


@pytest.fixture(scope="module")
def processor():
    return VideoLlambVideoProcessor()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    frames = scene_frames([10, 30, 5, 20])
    pts = np.cumsum([0] + [40, 40, 120, 40, 80] * 13)[:65]
    paths = {
        "long_gop": write_video(root / "long_gop.mp4", scene_frames([120, 80]), gop=100, sc_threshold="0"),
        "vfr": write_video(root / "vfr.mp4", frames, pts=pts, time_base=Fraction(1, 1000)),
        "rotated": write_video(root / "rotated.mp4", frames, rotation=90),
        "odd": write_video(root / "odd.mp4", scene_frames([24], 147, 203)),
        "audio": write_video(root / "audio.mp4", frames, audio=True),
        "offset": write_video(root / "offset.mp4", frames, pts=np.arange(65) + 50, time_base=Fraction(1, 25)),
    }
    noisy = scene_frames([120, 80], noise=20)
    good = write_video(root / "faststart.mp4", noisy, gop=50, faststart=True).read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) * 2 // 3])  # index first, then the cut-off frames
    paths["truncated"] = root / "truncated.mp4"
    tail_index = write_video(root / "tail_index.mp4", noisy, gop=50).read_bytes()
    (root / "truncated_no_index.mp4").write_bytes(tail_index[: len(tail_index) * 2 // 3])  # the index is lost
    paths["truncated_no_index"] = root / "truncated_no_index.mp4"
    return paths


def literal_original_transform(frames: np.ndarray) -> torch.Tensor:
    """Section 2 of the spec on the original's (C, T, H, W) layout: /255, normalise, ShortSideScale(224), centre
    crop with Python's round. Returns (T, 3, 224, 224)."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2) / 255.0  # (C, T, H, W)
    mean = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None, None]
    std = torch.tensor(OPENAI_CLIP_STD)[:, None, None, None]
    x = (x - mean) / std
    c, t, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor((float(h) / w) * 224)), 224
    else:
        new_h, new_w = 224, int(math.floor((float(w) / h) * 224))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    i, j = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
    return x[..., i : i + 224, j : j + 224].permute(1, 0, 2, 3)


# -- real clips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_real_clips_indices_metadata_and_frames(processor, name):
    total, fps, seconds, width, height = CLIPS[name]
    out = processor(str(VIDEOS / name), return_metadata=True)
    meta = out["video_metadata"][0]
    expected = np.linspace(0, total - 1, 16, dtype=int)
    assert meta.frames_indices == expected.tolist()
    assert meta.total_num_frames == total
    assert (meta.width, meta.height) == (width, height)
    assert meta.fps == pytest.approx(fps, abs=0.01) and meta.duration == pytest.approx(seconds, abs=0.02)
    assert meta.timestamps[0] == 0.0 and meta.timestamps[-1] == pytest.approx((total - 1) / fps, abs=0.02)
    pixels = out["pixel_values_videos"]
    assert pixels.shape == (1, 16, 3, 224, 224) and pixels.dtype == torch.float32
    # Pixel parity: our tensor = the original chain on the frames a full decode gives at those indices.
    reference = literal_original_transform(reference_frames(VIDEOS / name, expected))
    torch.testing.assert_close(pixels[0], reference, rtol=0, atol=1e-6)


def test_deterministic(processor):
    a = processor(str(VIDEOS / "dance.mp4"), num_frames=24)["pixel_values_videos"]
    b = processor(str(VIDEOS / "dance.mp4"), num_frames=24)["pixel_values_videos"]
    assert torch.equal(a, b)


def test_random_access_equals_full_decode_on_every_clip():
    rng = np.random.default_rng(0)
    for name, (total, *_rest) in CLIPS.items():
        indices = np.sort(rng.integers(0, total, 40))
        with VideoReader(VIDEOS / name) as reader:
            assert reader.index.num_frames == total
            assert np.array_equal(reader.get_frames(indices), reference_frames(VIDEOS / name, indices))


def test_fps_rule_and_frame_count_rounding(processor):
    dance = str(VIDEOS / "dance.mp4")
    meta = processor(dance, fps=1, return_metadata=True)["video_metadata"][0]
    # 598 frames / 29.97 fps = 19.95 s -> ceil(19.95) = 20 -> 20 - 20 % 8 = 16
    assert meta.frames_indices == np.linspace(0, 597, 16, dtype=int).tolist()
    assert len(processor(dance, fps=2, return_metadata=True)["video_metadata"][0].frames_indices) == 40
    assert len(processor(str(VIDEOS / "readingsky.mp4"), fps=1)["pixel_values_videos"][0]) == 8  # at least 8
    assert processor(dance, fps=100)["pixel_values_videos"].shape[1] == 512  # max_frames
    # fps wins over num_frames; num_frames rounds up to a multiple of 8
    assert processor(dance, fps=1, num_frames=64)["pixel_values_videos"].shape[1] == 16
    assert processor(dance, num_frames=12)["pixel_values_videos"].shape[1] == 16
    assert processor(dance, num_frames=1)["pixel_values_videos"].shape[1] == 8


def test_a_calls_frame_count_beats_a_default_fps():
    from videollamb_hf.video_processing_videollamb import VideoLlambVideoProcessor

    one_fps = VideoLlambVideoProcessor(fps=1, size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    dance = str(VIDEOS / "dance.mp4")
    assert one_fps(dance)["pixel_values_videos"].shape[1] == 16  # the default fps rule
    assert one_fps(dance, num_frames=24)["pixel_values_videos"].shape[1] == 24  # the call's count
    assert one_fps(dance, num_frames=24, fps=2)["pixel_values_videos"].shape[1] == 40  # both in the call: fps
    frames = np.zeros((10, 16, 16, 3), dtype=np.uint8)  # frames have no timing: a count is what they can take
    assert one_fps(frames, num_frames=8)["pixel_values_videos"].shape[1] == 8
    with pytest.raises(ValueError, match="num_frames"):
        one_fps(frames)


def test_start_and_end_time(processor):
    meta = processor(str(VIDEOS / "dance.mp4"), start_time=5.0, end_time=10.0, num_frames=8, return_metadata=True)
    meta = meta["video_metadata"][0]
    assert all(5.0 <= t < 10.0 for t in meta.timestamps)
    first, last = meta.frames_indices[0], meta.frames_indices[-1]
    assert first == math.ceil(5.0 * 30000 / 1001) and last == math.ceil(10.0 * 30000 / 1001) - 1


def test_batches_of_different_lengths_are_padded_with_a_mask(processor):
    out = processor([str(VIDEOS / "dance.mp4"), str(VIDEOS / "readingsky.mp4")], fps=1)
    assert out["pixel_values_videos"].shape == (2, 16, 3, 224, 224)
    assert out["video_frames_mask"].sum(1).tolist() == [16, 8]
    assert torch.equal(out["pixel_values_videos"][1, 8:], torch.zeros(8, 3, 224, 224))


# -- other input types --------------------------------------------------------------------------------------


def test_arrays_tensors_frames_and_bytes_agree(processor):
    path = VIDEOS / "sample_demo_3.mp4"
    frames = reference_frames(path, range(146))
    from_path = processor(str(path))["pixel_values_videos"]
    for video in (
        frames,
        torch.from_numpy(frames),
        torch.from_numpy(frames).permute(0, 3, 1, 2),
        [Image.fromarray(f) for f in frames],
        list(frames),
        path.read_bytes(),
        path,
    ):
        assert torch.equal(processor(video)["pixel_values_videos"], from_path)
    with open(path, "rb") as handle:
        assert torch.equal(processor(handle)["pixel_values_videos"], from_path)
    batch = processor([frames, str(path)])["pixel_values_videos"]
    assert torch.equal(batch[0], from_path[0]) and torch.equal(batch[1], from_path[0])


def test_url_from_a_local_server(processor):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(VIDEOS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/sample_demo_3.mp4"
        assert torch.equal(
            processor(url)["pixel_values_videos"], processor(str(VIDEOS / "sample_demo_3.mp4"))["pixel_values_videos"]
        )
        with pytest.raises(VideoDecodingError, match="Could not download"):
            processor(f"http://127.0.0.1:{server.server_address[1]}/missing.mp4")
    finally:
        server.shutdown()


# -- generated videos ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["long_gop", "vfr", "rotated", "odd", "audio", "offset"])
def test_generated_videos_decode_exactly(processor, generated, kind):
    path = generated[kind]
    with VideoReader(path) as reader:
        total = reader.index.num_frames
        indices = np.linspace(0, total - 1, 16, dtype=int)
        assert np.array_equal(reader.get_frames(indices), reference_frames(path, indices))
    out = processor(str(path), return_metadata=True)
    meta = out["video_metadata"][0]
    assert out["pixel_values_videos"].shape == (1, 16, 3, 224, 224)
    assert meta.frames_indices == indices.tolist()
    if kind == "long_gop":
        assert total == 200 and len(reader.index.keyframes) == 2
    if kind == "vfr":  # real timestamps, not index / fps
        pts = np.cumsum([0] + [40, 40, 120, 40, 80] * 13)[:65]  # ms, as written by the fixture
        assert meta.timestamps == pytest.approx((pts[indices] / 1000).tolist())
    if kind == "rotated":
        assert (meta.rotation, meta.width, meta.height) == (90, 48, 64)
    if kind == "odd":
        assert (meta.width, meta.height) == (203, 147)
    if kind == "offset":
        assert meta.timestamps[0] == 0.0 and total == 65


def test_truncated_file_decodes_what_is_there(processor, generated):
    with pytest.warns(UserWarning):
        out = processor(str(generated["truncated"]), return_metadata=True)
    meta = out["video_metadata"][0]
    assert 0 < meta.total_num_frames < 200
    assert torch.isfinite(out["pixel_values_videos"]).all()
    # An MP4 whose index (at the end) was cut off cannot be read: a clear error.
    with pytest.raises(VideoDecodingError, match="Could not read"):
        processor(str(generated["truncated_no_index"]))


# -- scene-aware sampling -----------------------------------------------------------------------------------


def test_scene_sampling_keeps_a_short_scene(processor, tmp_path):
    lengths = [75, 12, 100, 75]  # the 12-frame scene falls between the 8 uniform samples (0, 37, 74, 111, ...)
    path = write_video(tmp_path / "scenes.mp4", scene_frames(lengths, seed=3), gop=300, keyint_min="10")
    short = (75, 87)
    uniform = processor(str(path), num_frames=8, return_metadata=True)["video_metadata"][0].frames_indices
    assert not any(short[0] <= i < short[1] for i in uniform)
    out = processor(str(path), num_frames=8, sampling="scenes", return_scenes=True, return_metadata=True)
    meta = out["video_metadata"][0]
    with VideoReader(path) as reader:
        intra, _ = reader.keyframe_thumbnails()
    assert 75 in intra.tolist()  # x264 put an intra frame at the cut into the short scene
    assert [s[0] for s in meta.scenes] == intra.tolist()
    assert meta.scenes[1][2] == pytest.approx(75 / 25)
    for start, end, _, _ in meta.scenes:
        assert any(start <= i <= end for i in meta.frames_indices)
    assert any(short[0] <= i < short[1] for i in meta.frames_indices)
    assert len(meta.frames_indices) == 8 and out["pixel_values_videos"].shape[1] == 8


def test_scene_sampling_on_a_real_clip(processor):
    out = processor(str(VIDEOS / "dance.mp4"), sampling="scenes", return_scenes=True)
    meta = out["video_metadata"][0]
    assert len(meta.frames_indices) == 16 and meta.frames_indices == sorted(meta.frames_indices)
    starts = [s[0] for s in meta.scenes]
    assert starts[0] == 0 and len(starts) > 1
    assert all(any(s <= i <= e for i in meta.frames_indices) for s, e, _, _ in meta.scenes)
    assert meta.scenes[-1][1] == 597 and meta.scenes[-1][3] == pytest.approx(19.95, abs=0.01)


# -- errors -------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(processor, tmp_path, generated):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01not a video at all" * 50)
    audio_only = tmp_path / "audio_only.m4a"
    import av

    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    cases = [
        (str(tmp_path / "missing.mp4"), FileNotFoundError, "No such video file"),
        (str(tmp_path), VideoDecodingError, "is a directory"),
        (str(tmp_path / "empty.mp4"), VideoDecodingError, "empty"),
        (str(tmp_path / "garbage.mp4"), VideoDecodingError, "Could not read"),
        (b"\x00" * 10, VideoDecodingError, "Could not read"),
        (str(audio_only), VideoDecodingError, "no video stream"),
        (str(VIDEOS / "readingsky.png"), VideoDecodingError, "is an image"),
        ("ftp://example.com/video.mp4", VideoDecodingError, "Unsupported URL scheme"),
        (12345, TypeError, "Cannot read a video"),
    ]
    for video, error, message in cases:
        with pytest.raises(error, match=message):
            processor(video)
    dance = str(VIDEOS / "dance.mp4")
    for kwargs, message in [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -8}, "num_frames"),
        ({"fps": 0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"start_time": 5.0, "end_time": 5.0}, "start_time < end_time"),
        ({"start_time": 100.0}, "No frame"),
        ({"sampling": "random"}, "sampling"),
    ]:
        with pytest.raises(ValueError, match=message):
            processor(dance, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        processor(np.zeros((4, 8, 8), dtype=np.uint8)[None, ..., None])
    with pytest.raises(TypeError, match="Unexpected"):
        processor(dance, num_frame=8)


def test_flip_is_opt_in(processor):
    path = str(VIDEOS / "sample_demo_3.mp4")
    plain = processor(path)["pixel_values_videos"]
    torch.manual_seed(0)
    flips = [processor(path, do_flip=True)["pixel_values_videos"] for _ in range(8)]
    assert any(torch.equal(f, plain.flip(-1)) for f in flips) and any(torch.equal(f, plain) for f in flips)


def test_save_and_load(tmp_path):
    processor = VideoLlambVideoProcessor(num_frames=24, sampling="scenes")
    processor.save_pretrained(tmp_path)
    loaded = VideoLlambVideoProcessor.from_pretrained(tmp_path)
    assert (loaded.num_frames, loaded.sampling) == (24, "scenes")
    assert loaded.to_dict() == processor.to_dict()


def test_a_corrupt_frame_mid_video_is_replaced_with_a_warning(processor, tmp_path):
    import av

    path = write_video(tmp_path / "good.mp4", scene_frames([60], noise=10), gop=20, faststart=True)
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    position, size = packets[30]
    data[position : position + size] = b"\x00" * size  # one P-frame's payload destroyed
    (tmp_path / "bad.mp4").write_bytes(data)
    with pytest.warns(UserWarning, match="could not be decoded|undecodable"):
        with VideoReader(tmp_path / "bad.mp4") as reader:
            frames = reader.get_frames(np.arange(60))
    assert frames.shape == (60, 48, 64, 3)
    good = reference_frames(path, range(60))
    assert np.array_equal(frames[:20], good[:20])  # the GOP before the damage is untouched
    with pytest.warns(UserWarning):
        assert processor(str(tmp_path / "bad.mp4"))["pixel_values_videos"].isfinite().all()


def test_frame_count_comes_from_the_packets_not_the_header(tmp_path):
    import av

    path = tmp_path / "no_count.mkv"
    with av.open(str(path), "w") as container:  # Matroska stores no frame count
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for array in scene_frames([30]):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    with VideoReader(path) as reader:
        assert reader.index.num_frames == 30
        indices = np.linspace(0, 29, 16, dtype=int)
        assert np.array_equal(reader.get_frames(indices), reference_frames(path, indices))


def test_registered_with_the_video_processor_auto_class(tmp_path):
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from videollamb_hf.testing_utils import get_tiny_config

    VideoLlambVideoProcessor(num_frames=32).save_pretrained(tmp_path)
    get_tiny_config().save_pretrained(tmp_path)
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, VideoLlambVideoProcessor) and loaded.num_frames == 32


@pytest.mark.parametrize("source", ["path", "bytes", "array", "iterator"])
def test_pixel_chunks_join_to_the_one_tensor_path_and_decode_one_chunk_at_a_time(source, monkeypatch):
    processor = VideoLlambVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    path = VIDEOS / "sample_demo_1.mp4"
    if source == "path":
        video = str(path)
    elif source == "bytes":
        video = path.read_bytes()
    else:
        with VideoReader(str(path)) as reader:
            frames = reader.get_frames(np.arange(48))
        video = frames if source == "array" else iter(list(frames))
    options = {"num_frames": 40} if source != "iterator" else {}
    decoded = []
    original = VideoReader.get_frames
    monkeypatch.setattr(VideoReader, "get_frames", lambda self, i: decoded.append(len(i)) or original(self, i))
    metadata, chunks = processor.iter_pixel_chunks(video, 16, **options)
    chunks = list(chunks)
    assert [c.shape[0] for c in chunks] == ([16, 16, 8] if source != "iterator" else [16, 16, 16])
    if source in ("path", "bytes"):
        assert decoded == [16, 16, 8]  # never more than one chunk of frames decoded at once
    reference = processor(frames if source == "iterator" else video, **(options or {"num_frames": 48}),
                          return_metadata=True)  # fmt: skip
    if source in ("path", "bytes"):
        assert metadata.frames_indices == reference["video_metadata"][0].frames_indices
    assert torch.equal(torch.cat(chunks), reference["pixel_values_videos"][0])
    if source in ("path", "bytes"):
        assert processor.sampled_frame_count(video, **options) == 40
    with pytest.raises(ValueError, match="multiple of 8"):
        processor.iter_pixel_chunks(str(path), 12)


def test_pixel_chunks_of_a_rotated_video_carry_its_rotation(processor, generated):
    path = str(generated["rotated"])
    metadata, chunks = processor.iter_pixel_chunks(path, 8, num_frames=16)
    whole = processor(path, num_frames=16, return_metadata=True)
    expected = whole["video_metadata"][0]
    assert (metadata.rotation, metadata.width, metadata.height) == (expected.rotation, expected.width, expected.height)
    assert metadata.rotation == 90
    assert torch.equal(torch.cat(list(chunks)), whole["pixel_values_videos"][0])
