"""Reading the authors' layout (`videollamb_hf.original_format`): LoRA-wrapped LanguageBind image encoders merge on
load, tower architectures come from the checkpoint's own tensors where no tower config can be read, and video-only
checkpoints (no `mm_image_tower`) build no image tower."""

import copy
import logging
from pathlib import Path

import pytest
import torch
from conftest import tiny_video_inputs
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from videollamb_hf import VideoLlambConfig, VideoLlambForConditionalGeneration
from videollamb_hf.original_format import (
    LANGUAGEBIND_DEFAULT_LORA_ALPHA,
    lora_merged_weight,
    tower_config_from_shapes,
)
from videollamb_hf.testing_utils import save_tiny_original_repo


LORA = {"r": 2, "alpha": 8}  # not the class default (16): the merge must read it from the tower config
WIDE_TOWER = {"hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 256}  # heads = width // 64


def _checkpoint_tensors(repo) -> dict:
    state = {}
    for shard in sorted(Path(repo).glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def _offline(tmp_path) -> dict:
    """Load options under which nothing can be fetched: no network, an empty hub cache."""
    (tmp_path / "empty-hub-cache").mkdir(exist_ok=True)
    return {"local_files_only": True, "cache_dir": str(tmp_path / "empty-hub-cache")}


class LiteralLoraLinear(torch.nn.Module):
    """PEFT's wrapped forward at inference, written out: `x @ W.T + b + scale * (x @ A.T) @ B.T`."""

    def __init__(self, weight, bias, lora_a, lora_b, lora_alpha):
        super().__init__()
        self.weight, self.bias, self.lora_a, self.lora_b = weight, bias, lora_a, lora_b
        self.scale = lora_alpha / lora_a.shape[0]

    def forward(self, x):
        return x @ self.weight.T + self.bias + self.scale * (x @ self.lora_a.T) @ self.lora_b.T


def _literal_lora_image_tower(model, tensors: dict, prefix: str, lora_alpha: float):
    """A copy of `model` whose image tower runs the wrapped projections literally from the checkpoint's base weight,
    bias, lora_A and lora_B (`prefix`: the encoder's key prefix up to `layers.`)."""
    reference = copy.deepcopy(model)
    encoder = reference.model.image_tower.encoder
    for index, layer in enumerate(encoder.layers):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            key = f"{prefix}layers.{index}.self_attn.{name}"
            literal = LiteralLoraLinear(
                tensors[f"{key}.base_layer.weight"], tensors[f"{key}.base_layer.bias"],
                tensors[f"{key}.lora_A.default.weight"], tensors[f"{key}.lora_B.default.weight"], lora_alpha,
            )  # fmt: skip
            setattr(layer.self_attn, name, literal)
    return reference


@pytest.fixture(scope="module")
def lora_repo(tmp_path_factory):
    # 3 shards, keys dealt round-robin in sorted order: a layer's base weight, lora_A and lora_B land apart.
    return save_tiny_original_repo(tmp_path_factory.mktemp("lora"), num_shards=3, image_tower_lora=LORA)


def test_lora_parts_of_one_layer_sit_in_different_shards(lora_repo):
    key = "model.image_tower.image_tower.encoder.base_model.model.layers.0.self_attn.q_proj"
    shards = {}
    for shard in Path(lora_repo["repo"]).glob("*.safetensors"):
        for name in load_file(str(shard)):
            shards[name] = shard.name
    parts = {
        shards[f"{key}.{part}"] for part in ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight")
    }
    assert len(parts) > 1


def test_lora_wrapped_image_encoder_in_the_checkpoint_merges_and_equals_the_wrapped_forward(
    lora_repo, monkeypatch, caplog
):
    monkeypatch.chdir(lora_repo["root"])  # the tower folder (and its lora_alpha) is readable
    with caplog.at_level(logging.WARNING):
        model = VideoLlambForConditionalGeneration.from_pretrained(lora_repo["repo"]).eval()
    assert "Merged LoRA weights into 8 image-tower projections (r=2, lora_alpha=8)" in caplog.text
    tensors = _checkpoint_tensors(lora_repo["repo"])
    lora_a = tensors[
        "model.image_tower.image_tower.encoder.base_model.model.layers.1.self_attn.v_proj.lora_A.default.weight"
    ]
    assert lora_a.abs().min() > 0  # nonzero random LoRA weights
    reference = _literal_lora_image_tower(
        model, tensors, "model.image_tower.image_tower.encoder.base_model.model.", LORA["alpha"]
    )
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, literal = model.get_image_features(pixels), reference.get_image_features(pixels)
    torch.testing.assert_close(ours, literal, rtol=1e-5, atol=1e-5)
    # The merge is not a no-op: the base weights alone give other features.
    plain = copy.deepcopy(model)
    key = "model.image_tower.image_tower.encoder.base_model.model.layers.0.self_attn.q_proj.base_layer.weight"
    with torch.no_grad():
        plain.model.image_tower.encoder.layers[0].self_attn.q_proj.weight.copy_(tensors[key])
        assert not torch.allclose(plain.get_image_features(pixels), literal, atol=1e-3)


def test_converted_lora_repo_saves_plain_weights(lora_repo, tmp_path, monkeypatch):
    from videollamb_hf.convert_videollamb_original_to_hf import convert_original_checkpoint

    monkeypatch.chdir(lora_repo["root"])
    output = convert_original_checkpoint(lora_repo["repo"], tmp_path / "converted")
    saved = _checkpoint_tensors(output)
    assert not any("lora_" in k or "base_layer" in k or "base_model" in k for k in saved)
    reloaded = VideoLlambForConditionalGeneration.from_pretrained(output).eval()
    direct = VideoLlambForConditionalGeneration.from_pretrained(lora_repo["repo"]).eval()
    for key, value in direct.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_lora_wrapped_tower_folder_merges_with_its_config_alpha(tmp_path, caplog):
    without = save_tiny_original_repo(tmp_path / "lora-folder", include_towers=False, image_tower_lora=LORA)
    folder = load_file(str(Path(without["image_tower"]) / "model.safetensors"))
    assert "vision_model.encoder.base_model.model.layers.0.self_attn.k_proj.lora_B.default.weight" in folder
    with caplog.at_level(logging.WARNING):
        model = VideoLlambForConditionalGeneration.from_pretrained(
            without["repo"], video_tower=without["video_tower"], image_tower=without["image_tower"]
        ).eval()
    assert "merged LoRA weights into 8 projections (r=2, lora_alpha=8)" in caplog.text
    reference = _literal_lora_image_tower(model, folder, "vision_model.encoder.base_model.model.", LORA["alpha"])
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixels), reference.get_image_features(pixels), rtol=1e-5, atol=1e-5
        )


def test_lora_alpha_falls_back_to_the_class_default_with_a_warning(tmp_path, monkeypatch, caplog):
    repo = save_tiny_original_repo(tmp_path / "lora16", image_tower_lora={"r": 2, "alpha": 16})
    monkeypatch.chdir(tmp_path)  # `./checkpoints/LanguageBind_Image` is not here, nor in the (empty) hub cache
    with caplog.at_level(logging.WARNING):
        model = VideoLlambForConditionalGeneration.from_pretrained(repo["repo"], **_offline(tmp_path)).eval()
    assert f"merged with the authors' class default lora_alpha={LANGUAGEBIND_DEFAULT_LORA_ALPHA}" in caplog.text
    tensors = _checkpoint_tensors(repo["repo"])
    reference = _literal_lora_image_tower(
        model, tensors, "model.image_tower.image_tower.encoder.base_model.model.", 16
    )
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixels), reference.get_image_features(pixels), rtol=1e-5, atol=1e-5
        )


def test_lora_merged_weight_is_the_formula():
    generator = torch.Generator().manual_seed(0)
    weight, lora_a, lora_b = (torch.randn(*s, generator=generator) for s in ((6, 5), (3, 5), (6, 3)))
    torch.testing.assert_close(lora_merged_weight(weight, lora_a, lora_b, 12), weight + 4 * lora_b @ lora_a)
    with pytest.raises(ValueError, match="LoRA shapes do not fit"):
        lora_merged_weight(weight, lora_a, lora_b.T, 12)


# -- towers from the checkpoint's tensors --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_repo(tmp_path_factory):
    return save_tiny_original_repo(tmp_path_factory.mktemp("wide"), tower=WIDE_TOWER)


def _logits(model, config):
    with torch.no_grad():
        return model(**tiny_video_inputs(config)).logits


def test_towers_unreadable_offline_are_derived_from_the_checkpoint_tensors(wide_repo, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(wide_repo["root"])
    present = AutoModelForImageTextToText.from_pretrained(wide_repo["repo"]).eval()
    assert present.config.vision_config.num_attention_heads == 2
    expected = _logits(present, present.config)
    # The config names `./checkpoints/LanguageBind_Video_merge` and `./checkpoints/LanguageBind_Image`: absent from
    # here, and the hub ids they stand for are not cached.
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        absent = AutoModelForImageTextToText.from_pretrained(wide_repo["repo"], **_offline(tmp_path)).eval()
    assert "derived from them: hidden_size=128, intermediate_size=256, num_hidden_layers=2" in caplog.text
    assert "num_attention_heads=2 ASSUMED" in caplog.text
    for name in ("vision_config", "image_config"):
        tower = getattr(absent.config, name)
        assert (tower.hidden_size, tower.num_attention_heads, tower.intermediate_size) == (128, 2, 256), name
        assert (tower.image_size, tower.patch_size, tower.num_hidden_layers) == (16, 4, 2), name
    assert absent.config.vision_config.add_time_attn
    torch.testing.assert_close(_logits(absent, absent.config), expected, rtol=0, atol=0)
    processor = AutoProcessor.from_pretrained(wide_repo["repo"], **_offline(tmp_path))
    assert processor.video_processor.crop_size["height"] == 16


def test_a_tower_off_the_head_width_rule_gets_the_warning(tmp_path, monkeypatch, caplog):
    odd = save_tiny_original_repo(tmp_path / "odd", tower=dict(WIDE_TOWER, num_attention_heads=4))  # 32-wide heads
    monkeypatch.chdir(odd["root"])
    present = AutoModelForImageTextToText.from_pretrained(odd["repo"]).eval()
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        absent = AutoModelForImageTextToText.from_pretrained(odd["repo"], **_offline(tmp_path)).eval()
    assert "num_attention_heads=2 ASSUMED" in caplog.text and "Pass `video_tower=`" in caplog.text
    assert absent.config.vision_config.num_attention_heads == 2
    # What the warning is about: with the wrong head count the numbers differ.
    assert not torch.allclose(_logits(absent, absent.config), _logits(present, present.config), atol=1e-4)


def test_shapes_of_the_published_architecture_give_the_published_config():
    width, layers = 1024, 24
    prefix = "model.image_tower.image_tower."
    shapes = {
        f"{prefix}embeddings.patch_embedding.weight": (width, 3, 14, 14),
        f"{prefix}embeddings.position_embedding.weight": (257, width),
        **{f"{prefix}encoder.layers.{i}.mlp.fc1.weight": (4096, width) for i in range(layers)},
    }
    from videollamb_hf.original_format import LANGUAGEBIND_VISION_DEFAULTS

    config = tower_config_from_shapes(shapes, "image_tower", "image tower", None, LANGUAGEBIND_VISION_DEFAULTS)
    assert config == dict(LANGUAGEBIND_VISION_DEFAULTS, add_time_attn=False)
    assert tower_config_from_shapes({}, "video_tower", "video tower", None, LANGUAGEBIND_VISION_DEFAULTS) is None


# -- video-only checkpoints -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_only(tmp_path_factory):
    # Towers that follow ViT's head width (so that the offline load, which must assume it, is exact too).
    return save_tiny_original_repo(
        tmp_path_factory.mktemp("video-only"), variant="mem", image_tower=False, tower=WIDE_TOWER
    )


def test_video_only_mem_checkpoint_loads_without_an_image_tower(video_only, tmp_path, monkeypatch):
    monkeypatch.chdir(video_only["root"])
    assert not (Path(video_only["root"]) / "checkpoints" / "LanguageBind_Image").exists()
    config = VideoLlambConfig.from_pretrained(video_only["repo"])
    assert not config.has_image_tower and config._original_layout["image_tower"] is None
    model = AutoModelForImageTextToText.from_pretrained(video_only["repo"]).eval()
    assert model.model.image_tower is None
    assert not any("image_tower" in k for k in model.state_dict())
    # The video path is exact: the same logits as the same checkpoint written with an image tower.
    full = save_tiny_original_repo(tmp_path / "with-image-tower", variant="mem", tower=WIDE_TOWER)
    monkeypatch.chdir(full["root"])
    with_image = AutoModelForImageTextToText.from_pretrained(full["repo"]).eval()
    assert with_image.model.image_tower is not None
    inputs = tiny_video_inputs(model.config)
    with torch.no_grad():
        ours, expected = model(**inputs).logits, with_image(**inputs).logits
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no image tower"):
        model.get_image_features(torch.zeros(1, 3, 16, 16))
    # And it also loads offline with the CLIP folder absent: the tower from the checkpoint's tensors.
    monkeypatch.chdir(tmp_path)
    offline = AutoModelForImageTextToText.from_pretrained(video_only["repo"], **_offline(tmp_path)).eval()
    assert offline.model.image_tower is None
    with torch.no_grad():
        torch.testing.assert_close(offline(**inputs).logits, ours, rtol=0, atol=0)


def test_video_only_checkpoint_converts_and_reloads(video_only, tmp_path, monkeypatch):
    from videollamb_hf.convert_videollamb_original_to_hf import convert_original_checkpoint

    monkeypatch.chdir(video_only["root"])
    output = convert_original_checkpoint(video_only["repo"], tmp_path / "converted")
    reloaded = AutoModelForImageTextToText.from_pretrained(output).eval()
    assert not reloaded.config.has_image_tower and reloaded.model.image_tower is None
    direct = AutoModelForImageTextToText.from_pretrained(video_only["repo"]).eval()
    inputs = tiny_video_inputs(direct.config)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, direct(**inputs).logits, rtol=0, atol=0)
