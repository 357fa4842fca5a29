"""The authors' key names (written out here from their module structure) map one to one onto our model."""

import pytest

from videollamb_hf.convert_videollamb_original_to_hf import convert_original_key, convert_original_state_dict
from videollamb_hf.testing_utils import get_tiny_model


def _linear(prefix):
    return [f"{prefix}.weight", f"{prefix}.bias"]


def original_keys(config):
    keys = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"]
    for i in range(config.text_config.num_hidden_layers):
        p = f"model.layers.{i}"
        keys += [f"{p}.self_attn.{x}_proj.weight" for x in "qkvo"]
        keys += [f"{p}.mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        keys += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
    for tower, layers, temporal in (
        ("model.video_tower.video_tower", config.vision_config.num_hidden_layers, True),
        ("model.image_tower.image_tower", config.image_config.num_hidden_layers, False),
    ):
        keys += [f"{tower}.embeddings.class_embedding", f"{tower}.embeddings.patch_embedding.weight"]
        keys += [f"{tower}.embeddings.position_embedding.weight"]
        keys += _linear(f"{tower}.pre_layrnorm") + _linear(f"{tower}.post_layernorm")
        for i in range(layers):
            p = f"{tower}.encoder.layers.{i}"
            for attn in ("self_attn", "temporal_attn") if temporal else ("self_attn",):
                for x in ("q", "k", "v", "out"):
                    keys += _linear(f"{p}.{attn}.{x}_proj")
            keys += _linear(f"{p}.layer_norm1") + _linear(f"{p}.layer_norm2")
            keys += _linear(f"{p}.mlp.fc1") + _linear(f"{p}.mlp.fc2")
            if temporal:
                keys += [f"{p}.temporal_embedding"] + _linear(f"{p}.temporal_layer_norm1")
    attention = ["q_proj", "k_proj", "v_proj", "residual.dense", "residual.layernorm"]
    for i in range(config.bridge_num_layers):
        p = f"model.mm_projector.projector.layers.{i}"
        for part in ("selfattention", "crossattention"):
            for x in attention:
                keys += _linear(f"{p}.{part}.{x}")
        keys += _linear(f"{p}.mlp.0") + _linear(f"{p}.residual.dense") + _linear(f"{p}.residual.layernorm")
    keys += _linear("model.mm_projector.projector.proj.0")
    keys += ["model.mm_projector.projector.read_memory_emb", "model.mm_projector.projector.memory_tokens"]
    for part in ("selfattention", "crossattention"):
        for x in attention:
            keys += _linear(f"model.mm_projector.retrieval.layers.0.{part}.{x}")
    return keys


@pytest.mark.parametrize("bridge_layers", [1, 2])
def test_original_keys_map_exactly_onto_our_state_dict(bridge_layers):
    model = get_tiny_model(bridge_num_layers=bridge_layers)
    keys = original_keys(model.config)
    converted = [convert_original_key(k) for k in keys]
    assert len(set(converted)) == len(converted)
    assert set(converted) == set(model.state_dict())


def test_known_names():
    assert convert_original_key("model.mm_projector.projector.layers.0.mlp.0.weight") == (
        "model.memory_bridge.layers.0.intermediate.weight"
    )
    assert convert_original_key("model.mm_projector.retrieval.layers.0.crossattention.residual.layernorm.bias") == (
        "model.memory_bridge.retriever.cross_attention.output.layer_norm.bias"
    )
    assert (
        convert_original_key("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    )


def test_converted_state_dict_loads_strictly():
    model = get_tiny_model()
    ours = model.state_dict()
    inverse = {convert_original_key(k): k for k in original_keys(model.config)}
    original = {inverse[k]: v for k, v in ours.items()}
    result = model.load_state_dict(convert_original_state_dict(original), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_unknown_keys_are_refused():
    with pytest.raises(KeyError, match="mm_projector.projector.pos_emb"):
        convert_original_key("model.mm_projector.projector.pos_emb.weight")
