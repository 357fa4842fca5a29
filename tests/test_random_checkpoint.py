"""The random-weight checkpoints at the released shapes (`testing_utils.save_random_checkpoint`): shapes, key names
and config fields as released (7B on the meta device), and tiny ones written and loaded in both layouts."""

import json
import math

import pytest
import torch
from conftest import tiny_video_inputs
from safetensors import safe_open

from videollamb_hf import VideoLlambConfig, VideoLlambForConditionalGeneration
from videollamb_hf.original_format import original_config_to_videollamb
from videollamb_hf.testing_utils import (
    original_flat_config,
    original_keys,
    random_checkpoint_config,
    random_shard_groups,
    random_tensor,
    random_weight_plan,
    save_random_checkpoint,
)


def test_7b_config_is_the_released_one():
    config = random_checkpoint_config("7b")
    text, video, image = config.text_config, config.vision_config, config.image_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (
        4096, 32, 32, 11008)  # fmt: skip
    assert (text.vocab_size, config.video_token_id, config.image_token_id) == (32002, 32000, 32001)
    assert not text.tie_word_embeddings
    for tower in (video, image):
        assert (tower.hidden_size, tower.num_hidden_layers, tower.num_attention_heads, tower.intermediate_size,
                tower.image_size, tower.patch_size) == (1024, 24, 16, 4096, 224, 14)  # fmt: skip
    assert video.add_time_attn and video.temporal_group_size == 8
    assert (config.bridge_hidden_size, config.bridge_num_attention_heads, config.bridge_intermediate_size,
            config.num_memory_tokens, config.pooled_grid_size) == (1024, 8, 4096, 32, 12)  # fmt: skip
    mid = random_checkpoint_config("mid")
    assert mid.text_config.hidden_size == 1024 and mid.text_config.num_hidden_layers == 8
    assert mid.vision_config.to_dict() == video.to_dict() and mid.bridge_hidden_size == 1024
    with pytest.raises(ValueError, match="size"):
        random_checkpoint_config("13b")


def test_7b_plan_matches_the_model_on_meta_and_the_released_layout():
    config = random_checkpoint_config("7b")
    with torch.device("meta"):
        model = VideoLlambForConditionalGeneration(config)
    native = random_weight_plan(config, "native")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: v[0] for k, v in native.items()}
    original = random_weight_plan(config, "original")
    assert set(original) == set(original_keys(config))
    # The release: about 7.48B parameters, 32,000 vocabulary rows, tower weights inside the checkpoint.
    count = sum(math.prod(shape) for shape, _, _ in original.values())
    assert 7.47e9 < count < 7.49e9
    assert original["model.embed_tokens.weight"][0] == (32000, 4096)
    assert original["lm_head.weight"][0] == (32000, 4096)
    assert original["model.video_tower.video_tower.encoder.layers.23.temporal_embedding"][0] == (1, 8, 1024)
    assert original["model.mm_projector.projector.memory_tokens"][0][-2:] == (32, 1024)
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in original if k.startswith("model.")} >= {
        "model.mm_projector", "model.video_tower", "model.image_tower", "model.layers"}  # fmt: skip
    inits = {k: init for k, (_, init, _) in original.items()}
    assert inits["model.norm.weight"] == "ones" and inits["model.layers.0.input_layernorm.weight"] == "ones"
    assert inits["model.image_tower.image_tower.pre_layrnorm.bias"] == "zeros"
    assert inits["model.layers.0.self_attn.q_proj.weight"] == "normal"
    # 4 shards like the release, none above its quarter by more than its largest tensor.
    groups = random_shard_groups(original, torch.bfloat16, 4)
    sizes = [sum(2 * math.prod(original[k][0]) for k in group) for group in groups]
    assert len(groups) == 4 and sum(sizes) == 2 * count
    assert max(sizes) <= sum(sizes) / 4 + 2 * 32000 * 4096


def test_7b_original_config_fields_translate_back_to_the_7b_config():
    config = random_checkpoint_config("7b")
    flat = original_flat_config(config, "./checkpoints/LanguageBind_Video_merge", dtype="bfloat16")
    assert (flat["model_type"], flat["mm_projector_type"], flat["vocab_size"], flat["mm_hidden_size"],
            flat["mm_num_attention_heads"], flat["mm_intermediate_size"]) == (
        "llava_llama", "rmt_r_transformer1x", 32000, 1024, 8, 4096)  # fmt: skip
    assert "videollamb_hf" not in flat  # the release states nothing beyond the authors' fields
    # Offline, the tower folders are unreadable: the published LanguageBind architecture is assumed.
    fields = original_config_to_videollamb(flat)
    fields.pop("_original_layout")
    translated = VideoLlambConfig(**fields)
    for name in ("text_config", "vision_config", "image_config"):
        ours, theirs = getattr(translated, name).to_dict(), getattr(config, name).to_dict()
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                    "image_size", "patch_size", "add_time_attn"):  # fmt: skip
            assert ours.get(key) == theirs.get(key), (name, key)
    assert (translated.video_token_id, translated.image_token_id) == (32000, 32001)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_native_checkpoint_loads_strictly_with_the_written_values(tmp_path, dtype):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    written = save_random_checkpoint(tmp_path, size="tiny", layout="native", dtype=dtype)
    assert len(written["shards"]) == 2
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == written["total_bytes"]
    model, info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == dtype
    plan = random_weight_plan(written["config"], "native")
    for key, tensor in model.state_dict().items():
        shape, init, _ = plan[key]
        assert torch.equal(tensor, random_tensor(key, shape, init, dtype)), key
    norm = model.model.language_model.norm.weight
    assert torch.equal(norm, torch.ones_like(norm))
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert (processor.video_token_id, processor.image_token_id) == (400, 401)


def test_tiny_original_checkpoint_loads_with_its_tower_folders(tmp_path):
    from transformers import AutoModelForImageTextToText

    written = save_random_checkpoint(tmp_path, size="tiny", layout="original", dtype=torch.float32)
    with open(written["repo"] + "/config.json") as file:
        assert json.load(file)["model_type"] == "llava_llama"
    keys = set()
    for shard in written["shards"]:
        with safe_open(shard, "pt") as file:
            keys |= set(file.keys())
    assert keys == set(original_keys(written["config"]))
    with safe_open(written["video_tower"] + "/model.safetensors", "pt") as tower:  # the same values as in the repo
        name = "vision_model.encoder.layers.0.temporal_embedding"
        expected = random_tensor("model.video_tower.encoder.layers.0.temporal_embedding", (1, 8, 32), "normal",
                                 torch.float32)  # fmt: skip
        assert torch.equal(tower.get_tensor(name), expected)
    model, info = AutoModelForImageTextToText.from_pretrained(
        written["repo"], video_tower=written["video_tower"], image_tower=written["image_tower"],
        output_loading_info=True,
    )  # fmt: skip
    assert not info["missing_keys"] and not info["unexpected_keys"]
    plan = random_weight_plan(written["config"], "native")
    for key, tensor in model.state_dict().items():
        shape, init, _ = plan[key]
        if key.endswith("embed_tokens.weight") or key == "lm_head.weight":  # 400 rows + the 2 placeholder rows
            tensor, shape = tensor[:400], (400, *shape[1:])
        assert torch.equal(tensor, random_tensor(key, shape, init, torch.float32)), key


def test_offloaded_load_runs_video_forward_equal_to_the_full_model(tmp_path):
    """accelerate's big-model inference: `device_map="auto"` with a CPU budget below the model's size puts the rest
    on disk (`offload_folder`); a forward with a video gives the full model's logits."""
    from transformers import AutoModelForImageTextToText

    save_random_checkpoint(tmp_path / "m", size="tiny", layout="native", dtype=torch.float32)
    full = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    offloaded = AutoModelForImageTextToText.from_pretrained(
        tmp_path / "m", device_map="auto", max_memory={"cpu": "100KB"}, offload_folder=str(tmp_path / "offload")
    )
    placement = set(offloaded.hf_device_map.values())
    assert placement == {"cpu", "disk"}, offloaded.hf_device_map
    inputs = tiny_video_inputs(full.config)
    with torch.no_grad():
        expected = full(**inputs).logits
        got = offloaded(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()
    # The chunked long-video path, an image, and generation: the bridge's own weights are used through module calls
    # (accelerate's hooks load them from disk), never read off an offloaded (meta) parameter.
    from videollamb_hf.testing_utils import get_tiny_processor

    video_processor = get_tiny_processor(tmp_path / "processor").video_processor
    frames = torch.randint(0, 256, (16, 20, 24, 3), dtype=torch.uint8).numpy()
    with torch.no_grad():
        a = full.encode_video(frames, video_processor, chunk_frames=8, num_frames=16)
        b = offloaded.encode_video(frames, video_processor, chunk_frames=8, num_frames=16)
        assert torch.allclose(a.visual_tokens, b.visual_tokens, atol=1e-6, rtol=0)
        ids = inputs["input_ids"]
        assert torch.equal(
            full.generate(input_ids=ids, video_features=a, max_new_tokens=4, do_sample=False),
            offloaded.generate(input_ids=ids, video_features=b, max_new_tokens=4, do_sample=False),
        )
        image = {"input_ids": torch.tensor([[1, 5] + [full.config.image_token_id] * full.config.image_seq_length + [6]]),
                 "pixel_values": torch.randn(1, 3, 16, 16)}  # fmt: skip
        assert torch.allclose(offloaded(**image).logits, full(**image).logits, atol=1e-6, rtol=0)
