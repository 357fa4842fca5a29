import pytest
from transformers import AutoConfig

from videollamb_hf import VideoLlambConfig, VideoLlambVisionConfig
from videollamb_hf.testing_utils import get_tiny_config


def test_defaults_are_the_released_7b_model():
    config = VideoLlambConfig()
    assert config.model_type == "videollamb"
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (4096, 32)
    assert config.text_config.vocab_size == 32002  # LLaMA's 32000 + <video> + <image>
    assert (config.video_token_id, config.image_token_id) == (32000, 32001)
    for tower in (config.vision_config, config.image_config):
        assert (tower.hidden_size, tower.num_hidden_layers, tower.num_attention_heads) == (1024, 24, 16)
        assert (tower.image_size, tower.patch_size, tower.hidden_act) == (224, 14, "quick_gelu")
    assert isinstance(config.vision_config, VideoLlambVisionConfig)
    assert config.vision_config.temporal_group_size == config.temporal_group_size == 8
    assert config.num_memory_tokens == 32 and config.bridge_num_layers == 1
    assert (config.bridge_hidden_size, config.bridge_num_attention_heads, config.bridge_intermediate_size) == (
        1024,
        8,
        4096,
    )
    assert (config.bridge_hidden_act, config.bridge_layer_norm_eps) == ("gelu", 1e-12)
    assert config.bridge_hidden_dropout == config.bridge_attention_dropout == 0.1
    assert (config.pooled_grid_size, config.max_frames_per_segment) == (12, 8)
    assert (config.scene_tiling_mode, config.scene_tiling_top_k) == ("top_k", 3)
    assert (config.scene_tiling_alpha, config.scene_tiling_max_boundaries) == (0.5, 15)
    assert (config.vision_feature_layer, config.num_frames) == (-2, 16)
    assert config.video_seq_length == 1152 and config.image_seq_length == 144


def test_seq_lengths_follow_the_bridge_fields():
    config = get_tiny_config(pooled_grid_size=3, max_frames_per_segment=4)
    assert config.image_seq_length == 9 and config.video_seq_length == 36


def test_roundtrip_through_autoconfig(tmp_path):
    config = get_tiny_config(scene_tiling_mode="threshold")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VideoLlambConfig)
    expected = {key: value for key, value in config.to_dict().items() if key != "_name_or_path"}
    assert {key: value for key, value in loaded.to_dict().items() if key != "_name_or_path"} == expected
    assert isinstance(loaded.vision_config, VideoLlambVisionConfig)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"bridge_hidden_size": 48}, "bridge_hidden_size"),
        ({"pooled_grid_size": 5}, "pooled_grid_size"),
        ({"bridge_num_attention_heads": 5}, "multiple"),
        ({"tower_chunk_size": 12}, "tower_chunk_size"),
        ({"video_token_id": 100}, "vocabulary"),
    ],
)
def test_inconsistent_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_tiny_config(**overrides)
