"""StreamingCaptioner: online SceneTilling + one bridge step per closed scene, O(1) work per frame."""

import pytest
import torch
from conftest import VIDEOS, scene_frames
from transformers import AutoModelForImageTextToText, AutoProcessor

from videollamb_hf.scene_tiling import find_scene_boundaries
from videollamb_hf.streaming import OnlineSceneTiling, StreamingCaptioner, iter_video_frames
from videollamb_hf.testing_utils import save_tiny_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return save_tiny_repo(tmp_path_factory.mktemp("stream"))


@pytest.fixture
def model_and_processor(repo):
    model = AutoModelForImageTextToText.from_pretrained(repo)
    model.config.scene_tiling_mode = "threshold"  # the offline rule the stream is compared with
    return model, AutoProcessor.from_pretrained(repo)


@pytest.mark.parametrize("lengths", [[10, 14, 8], [16, 16, 8, 8], [40]])
def test_whole_clip_window_gives_offline_boundaries_and_bridge_memory(model_and_processor, lengths):
    model, processor = model_and_processor
    frames = scene_frames(lengths, noise=10, seed=len(lengths))
    captioner = StreamingCaptioner(model, processor, window=len(frames), min_scene_frames=1, max_new_tokens=2)
    events = list(captioner.run((i / 2.0, f) for i, f in enumerate(frames)))
    pixels = processor.video_processor(frames, num_frames=len(frames))["pixel_values_videos"]
    with torch.no_grad():
        features = model.model.get_video_features(pixels)
        cls, _ = model.model._encode_frames(model.model.video_tower, pixels[0])
    offline = find_scene_boundaries(cls, mode="threshold", alpha=model.config.scene_tiling_alpha)
    assert captioner.final_boundaries == offline == features.scene_boundaries[0]
    assert [e.frames[1] for e in events if e.kind == "caption"] == offline
    # The memory after the last scene is the bridge's over the same segments (the tower runs in other chunk
    # sizes here, so equal to float rounding, not bit for bit).
    torch.testing.assert_close(captioner.memory, features.memory, rtol=0, atol=1e-6)
    torch.testing.assert_close(captioner.memory_cache, features.memory_cache[0][None], rtol=0, atol=1e-6)


def test_events_are_in_time_order_and_a_cut_yields_a_caption_near_it(model_and_processor, tmp_path):
    from conftest import write_video

    model, processor = model_and_processor
    with torch.no_grad():  # a tower that sees content only (the random temporal embedding would dominate)
        for layer in model.model.video_tower.encoder.layers:
            layer.temporal_embedding.zero_()
    frames = scene_frames([24, 24, 24], seed=0, noise=4)
    path = write_video(tmp_path / "cuts.mp4", frames, fps=4)
    captioner = StreamingCaptioner(model, processor, window=4, min_scene_frames=4, max_new_tokens=2)
    events = list(captioner.run_file(path, fps=4, questions={5.0: "What is on screen?"}))
    times = [e.timestamp for e in events]
    assert times == sorted(times)
    captions = [e for e in events if e.kind == "caption"]
    ends = [e.frames[1] for e in captions]
    for cut in (23, 47):  # the last frame of each scene
        assert any(abs(end - cut) <= 1 for end in ends), (cut, ends)
    answers = [e for e in events if e.kind == "answer"]
    assert len(answers) == 1 and answers[0].question == "What is on screen?" and answers[0].timestamp == 5.0
    assert all(isinstance(e.text, str) for e in events)
    assert captions[-1].frames[1] == len(frames) - 1
    assert captioner.lag_seconds == pytest.approx(7 / 4)  # one temporal group of 8 frames at 4 fps


def test_online_scenes_close_window_gaps_behind_the_edge():
    tiling = OnlineSceneTiling(window=3, alpha=0.5, min_scene_frames=2)
    similarities = [0.9, 0.95, 0.9, 0.1, 0.9, 0.92, 0.91, 0.93, 0.2, 0.9, 0.95, 0.9, 0.94]
    committed = {}
    for i, s in enumerate(similarities):
        for gap in tiling.push(s):
            committed[gap] = i  # gap index -> newest gap when it closed
    assert committed, "no scene closed"
    for gap, newest in committed.items():
        assert newest - gap == 3  # decided exactly W gaps behind the live edge
        assert similarities[gap] < 0.5  # the dips
    assert tiling.finish()[-1] == len(similarities)


def test_memory_cache_bound_and_reset(model_and_processor):
    model, processor = model_and_processor
    frames = scene_frames([16, 16, 16, 16], noise=10)
    bounded = StreamingCaptioner(model, processor, window=2, min_scene_frames=1, max_cache_segments=2, captions=False)
    list(bounded.run((i / 2.0, f) for i, f in enumerate(frames)))
    assert len(bounded.scenes) > 2
    assert bounded.memory_cache.shape[1] == 2 * model.config.num_memory_tokens
    bounded.reset()
    assert bounded.memory is None and bounded.scenes == [] and bounded.cls == []
    unbounded = StreamingCaptioner(model, processor, window=2, min_scene_frames=1, captions=False)
    list(unbounded.run((i / 2.0, f) for i, f in enumerate(frames)))
    assert unbounded.memory_cache.shape[1] == len(unbounded.scenes) * model.config.num_memory_tokens
    # A reset captioner gives what a fresh one gives.
    list(bounded.run((i / 2.0, f) for i, f in enumerate(frames)))
    assert [s for s in bounded.scenes] == unbounded.scenes


def test_questions_and_bad_input(model_and_processor):
    model, processor = model_and_processor
    captioner = StreamingCaptioner(model, processor, max_new_tokens=2)
    with pytest.raises(ValueError, match="Nothing to answer"):
        captioner.ask("What?")
    frames = scene_frames([8], noise=10)
    for i, frame in enumerate(frames):
        captioner.feed(frame, i * 0.5)
    (answer,) = captioner.ask("What now?")
    assert answer.kind == "answer" and answer.frames == (0, 7) and answer.scene == (0.0, 3.5)
    with pytest.raises(ValueError, match="go back"):
        captioner.feed(frames[0], 1.0)
    with pytest.raises(ValueError, match="RGB"):
        captioner.feed(frames[0][..., 0], 10.0)


def test_iter_video_frames_samples_at_fps():
    frames = list(iter_video_frames(VIDEOS / "sample_demo_1.mp4", fps=2))
    times = [t for t, _ in frames]
    assert times == sorted(times) and times[0] == 0.0
    # the frame shown at each multiple of 0.5 s: at most one source frame (< 0.1 s here) before it
    assert all(0 <= k * 0.5 - t < 0.1 for k, t in enumerate(times))
    assert frames[0][1].ndim == 3 and frames[0][1].shape[-1] == 3
    with pytest.raises(ValueError, match="fps"):
        next(iter_video_frames(VIDEOS / "sample_demo_1.mp4", fps=0))
