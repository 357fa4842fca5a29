"""The ColorfulAI/VideoLLaMB_Mem variant: detected from an original-layout checkpoint, expressed as config fields of
the one bridge, and computing what its code (bigai-nlco/MM-NIAVH's vendored package) describes."""

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VIDEOS
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from videollamb_hf.convert_videollamb_original_to_hf import MEM_VARIANT_FIELDS, convert_original_checkpoint
from videollamb_hf.scene_tiling import boundaries_to_segments, find_scene_boundaries
from videollamb_hf.testing_utils import get_tiny_model, save_tiny_original_repo


@pytest.fixture(scope="module")
def mem(tmp_path_factory):
    return save_tiny_original_repo(tmp_path_factory.mktemp("mem"), variant="mem")


@pytest.fixture
def in_mem_root(mem, monkeypatch):
    monkeypatch.chdir(mem["root"])
    return mem


def test_mem_checkpoint_is_detected_and_every_weight_lands(in_mem_root, caplog):
    config = AutoConfig.from_pretrained(in_mem_root["repo"])
    for name, value in MEM_VARIANT_FIELDS.items():
        expected = 3 if name == "pooled_grid_size" else value  # the tiny checkpoint pools 4x4 -> 3x3
        assert getattr(config, name) == expected, name
    assert not config.vision_config.add_time_attn and config.temporal_group_size == 1
    assert config.video_seq_length == 4 * 8 and config.image_seq_length == 4  # memories of up to 8 segments
    with caplog.at_level(logging.WARNING):
        model = AutoModelForImageTextToText.from_pretrained(in_mem_root["repo"])
    assert "VideoLLaMB_Mem variant" in caplog.text
    state, source = model.state_dict(), in_mem_root["model"].state_dict()
    assert set(state) == set(source)
    for key, value in source.items():
        rows = slice(0, 400) if key.endswith(("embed_tokens.weight", "lm_head.weight")) else slice(None)
        assert torch.equal(state[key][rows], value[rows]), key
    table = {}
    for shard in Path(in_mem_root["repo"]).glob("*.safetensors"):
        table.update(load_file(str(shard)))
    assert torch.equal(
        model.model.memory_bridge.segment_position_embedding.weight, table["model.mm_projector.abs_vid_pe.weight"]
    )
    assert type(model.model.video_tower.encoder.layers[0]).__name__ == "CLIPEncoderLayer"


def test_mem_processor_samples_one_frame_per_second_with_clip_frames(in_mem_root):
    from transformers import CLIPImageProcessorPil

    from videollamb_hf.video_decoding import VideoReader

    processor = AutoProcessor.from_pretrained(in_mem_root["repo"])
    video = processor.video_processor
    assert (video.fps, video.max_frames, video.temporal_group_size, video.frame_transform) == (1, 512, 1, "clip")
    path = str(VIDEOS / "sample_demo_1.mp4")
    pixels = video(path)["pixel_values_videos"][0]
    reader = VideoReader(path)
    n, fps = reader.index.num_frames, reader.index.fps
    count = min(math.ceil(n / fps * 1), 512)  # the NIAVH runner's rule: no rounding to a multiple of 8
    assert pixels.shape[0] == count and count % 8 != 0
    frames = reader.get_frames(np.linspace(0, n - 1, count, dtype=int))
    clip = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    assert torch.equal(pixels, clip(images=list(frames), return_tensors="pt")["pixel_values"])


def _literal_mem_bridge(model, cls, pooled):
    """VideoLLaMB_Mem's bridge as its code reads (rmt_r_transformer_projector.py of MM-NIAVH), from the modules."""
    config, bridge = model.config, model.model.memory_bridge
    if cls.shape[0] <= 3:
        memories = []
        for frame in pooled:
            hidden = torch.cat([bridge.read_memory_emb, frame])[None]
            for layer in bridge.layers:
                hidden = layer(hidden)
            m, p = hidden[:, : config.num_memory_tokens], hidden[:, config.num_memory_tokens :]
            memories.append(bridge.retriever.cross_attention(m, context=p))
        return model.model.multi_modal_projector(torch.cat(memories, dim=1)[0])
    bounds = find_scene_boundaries(cls, mode="threshold", alpha=0.5, max_boundaries=7)
    memory, cache, outs = None, [], []
    for s, (start, end) in enumerate(boundaries_to_segments(bounds)):
        index = torch.linspace(start, end, min(8, end - start + 1), dtype=torch.int)
        segment = (pooled[index] + bridge.segment_position_embedding(torch.tensor([[s]] * len(index)))).reshape(
            1, -1, pooled.shape[-1]
        )
        m0 = bridge.read_memory_emb[None] if memory is None else memory
        hidden = torch.cat([m0, segment], dim=1)
        for layer in bridge.layers:
            hidden = layer(hidden)
        m, p = hidden[:, : config.num_memory_tokens], hidden[:, config.num_memory_tokens :]
        cache.append(p)  # the segment's bridge outputs, not its memory
        memory = bridge.retriever.cross_attention(m, context=torch.cat(cache, dim=1))
        outs.append(memory)
    return model.model.multi_modal_projector(torch.cat(outs, dim=1)[0])


@pytest.mark.parametrize("frames", [2, 3, 4, 9, 40])
def test_mem_bridge_equals_its_literal_description(frames):
    model = get_tiny_model(**dict(MEM_VARIANT_FIELDS, pooled_grid_size=2))
    with torch.no_grad():
        model.model.memory_bridge.segment_position_embedding.weight.normal_()
        model.model.memory_bridge.read_memory_emb.normal_()
        generator = torch.Generator().manual_seed(frames)
        cls = torch.randn(frames, 32, generator=generator)
        pooled = torch.randn(frames, 4, 32, generator=generator)
        features = model.model.bridge_videos([cls], [pooled])
        expected = _literal_mem_bridge(model, cls, pooled)
    used = int(features.num_slots_used[0])
    assert used == expected.shape[0] and used % 4 == 0 and used <= model.config.video_seq_length
    torch.testing.assert_close(features.visual_tokens[0, :used], expected, rtol=0, atol=1e-6)
    assert torch.all(features.visual_tokens[0, used:] == 0)


def test_mem_image_features_are_the_refreshed_memory():
    model = get_tiny_model(**dict(MEM_VARIANT_FIELDS, pooled_grid_size=2))
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.model.get_image_features(pixels)
        _, pooled = model.model._encode_frames(model.model.image_tower, pixels)
        expected = _literal_mem_bridge(model, torch.zeros(1, 32), pooled[:1])
    assert features.shape == (2, 4, 32)
    torch.testing.assert_close(features[0], expected, rtol=0, atol=1e-6)


def test_main_checkpoint_holding_abs_vid_pe_is_refused(tmp_path, monkeypatch):
    main = save_tiny_original_repo(tmp_path / "main")
    monkeypatch.chdir(main["root"])
    shard = Path(main["repo"]) / "model-00001-of-00002.safetensors"
    state = load_file(str(shard))
    state["model.mm_projector.abs_vid_pe.weight"] = torch.zeros(1024, 32)
    save_file(state, str(shard), metadata={"format": "pt"})
    index_path = Path(main["repo"]) / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.mm_projector.abs_vid_pe.weight"] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="abs_vid_pe.*VideoLLaMB_Mem"):
        AutoModelForImageTextToText.from_pretrained(main["repo"])


def test_mem_conversion_round_trip(tmp_path, in_mem_root):
    output = convert_original_checkpoint(in_mem_root["repo"], tmp_path / "mem-converted")
    config = json.loads((output / "config.json").read_text())
    assert config["bridge_output"] == "memories" and config["segment_position_embeddings"] == 1024
    direct = AutoModelForImageTextToText.from_pretrained(in_mem_root["repo"])
    converted = AutoModelForImageTextToText.from_pretrained(str(output))
    processor = AutoProcessor.from_pretrained(str(output))
    assert processor.video_processor.frame_transform == "clip" and processor.video_seq_length == 32
    inputs = processor(text="USER: <video>\nWhat? ASSISTANT:", videos=str(VIDEOS / "dance.mp4"), return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(converted(**inputs).logits, direct(**inputs).logits)
    shutil.rmtree(output)
