"""The authors' key names (written out here from their module structure) map one to one onto our model."""

import pytest

from videollamb_hf.convert_videollamb_original_to_hf import convert_original_key, convert_original_state_dict
from videollamb_hf.testing_utils import get_tiny_model, original_keys


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


def test_keys_no_rule_covers_are_refused():
    with pytest.raises(KeyError, match="vision_tower.0.weight"):
        convert_original_key("model.vision_tower.0.weight")
