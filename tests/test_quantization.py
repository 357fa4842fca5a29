"""Quantized loading (`videollamb_hf.quantization`): with a quantization config, `from_pretrained` quantizes the
language model's decoder linears with the backend's modules and leaves the towers, the bridge, the projector and the
LM head as plain `nn.Linear` in the load dtype; logits stay within measured bounds of the unquantized model's;
`generate` runs; `storage_bytes` counts what quantized weights occupy.

The tiny LLaMA here has hidden size 128 (`SERVING_TEXT`): bitsandbytes' 4-bit layers need in_features >= 64 (at the
tiny model's 32 the load fails). Relative L2 logit differences from the unquantized fp32 model, measured on 3
random models x 3 inputs: bitsandbytes 8-bit 0.011-0.013, NF4 0.11-0.15, torchao int8 0.008-0.010. The bounds are
about twice the largest."""

import bitsandbytes as bnb
import pytest
import torch
import torchao.quantization
from conftest import tiny_video_inputs
from torch import nn
from transformers import AutoModel, AutoModelForImageTextToText, BitsAndBytesConfig

import videollamb_hf
from videollamb_hf import VideoLlambModel
from videollamb_hf.quantization import UNQUANTIZED_MODULES, keep_unquantized, quantization_config, storage_bytes
from videollamb_hf.testing_utils import SERVING_TEXT, save_tiny_repo


# backend, bits -> (quantized module class, quantized weight class, bound on the relative L2 logit difference,
# bound on the decoder layers' bytes over fp32's).
BACKENDS = {
    ("bitsandbytes", 8): (bnb.nn.Linear8bitLt, bnb.nn.Int8Params, 0.03, 0.27),
    ("bitsandbytes", 4): (bnb.nn.Linear4bit, bnb.nn.Params4bit, 0.25, 0.15),
    ("torchao", 8): (nn.Linear, torchao.quantization.Int8Tensor, 0.025, 0.27),
}
KEPT = ("video_tower", "image_tower", "memory_bridge", "multi_modal_projector")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return save_tiny_repo(tmp_path_factory.mktemp("quantization"), text=SERVING_TEXT)


@pytest.fixture(scope="module")
def reference(repo):
    """The unquantized fp32 model, its inputs (3 random videos) and its logits."""
    model = AutoModelForImageTextToText.from_pretrained(repo)
    inputs = [tiny_video_inputs(model.config, seed=seed) for seed in range(3)]
    with torch.no_grad():
        logits = [model(**x).logits for x in inputs]
    return model, inputs, logits


def linears(module: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer under `module`, plain or quantized, by name."""
    quantized = (nn.Linear, bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    return {name: m for name, m in module.named_modules() if isinstance(m, quantized)}


def assert_plain(module: nn.Module, dtype: torch.dtype):
    found = linears(module)
    assert found
    for name, layer in found.items():
        assert type(layer) is nn.Linear and type(layer.weight) is nn.Parameter, (name, type(layer), type(layer.weight))
        assert layer.weight.dtype == dtype, (name, layer.weight.dtype)


@pytest.mark.parametrize("backend, bits", list(BACKENDS))
def test_only_the_language_model_is_quantized_and_logits_stay_close(repo, reference, backend, bits):
    module_class, weight_class, bound, bytes_ratio = BACKENDS[backend, bits]
    model = AutoModelForImageTextToText.from_pretrained(repo, quantization_config=quantization_config(backend, bits))
    decoder = linears(model.model.language_model)
    assert len(decoder) == 7 * model.config.text_config.num_hidden_layers  # q, k, v, o, gate, up, down
    for name, layer in decoder.items():
        assert type(layer) is module_class and type(layer.weight) is weight_class, (name, type(layer.weight))
    for name in KEPT:
        assert_plain(getattr(model.model, name), torch.float32)
    assert_plain(model.lm_head, torch.float32)
    assert type(model.model.language_model.embed_tokens.weight) is nn.Parameter

    reference_model, inputs, reference_logits = reference
    ratio = storage_bytes(model.model.language_model.layers) / storage_bytes(
        reference_model.model.language_model.layers
    )
    assert ratio < bytes_ratio
    with torch.no_grad():
        for x, expected in zip(inputs, reference_logits):
            logits = model(**x).logits
            relative = float((logits - expected).norm() / expected.norm())
            assert 1e-4 < relative < bound, relative  # quantized (not a no-op), and close

    out = model.generate(**inputs[0], max_new_tokens=4, do_sample=False)
    prompt = inputs[0]["input_ids"]
    assert out.shape == (1, prompt.shape[1] + 4) and torch.equal(out[:, : prompt.shape[1]], prompt)
    with torch.no_grad():  # the first new token is the quantized model's own greedy choice
        assert out[0, prompt.shape[1]] == model(**inputs[0]).logits[0, -1].argmax()


def test_towers_bridge_and_projector_keep_a_bfloat16_load_dtype(repo):
    model = AutoModelForImageTextToText.from_pretrained(
        repo, dtype=torch.bfloat16, quantization_config=quantization_config("bitsandbytes", 8)
    )
    for name in KEPT:
        assert_plain(getattr(model.model, name), torch.bfloat16)
    assert_plain(model.lm_head, torch.bfloat16)
    assert all(type(m) is bnb.nn.Linear8bitLt for m in linears(model.model.language_model).values())
    inputs = tiny_video_inputs(model.config)
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2


def test_a_plain_transformers_config_gets_the_defaults_and_the_backbone_its_own_paths(repo):
    config = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForImageTextToText.from_pretrained(repo, quantization_config=config)
    assert config.llm_int8_skip_modules is None  # the user's object is not changed
    assert sorted(model.hf_quantizer.modules_to_not_convert) == sorted(UNQUANTIZED_MODULES)
    for name in KEPT:
        assert_plain(getattr(model.model, name), torch.float32)

    backbone = AutoModel.from_pretrained(repo, quantization_config=config)
    assert type(backbone) is VideoLlambModel
    assert sorted(backbone.hf_quantizer.modules_to_not_convert) == sorted(VideoLlambModel._keep_unquantized_modules)
    for name in KEPT:
        assert_plain(getattr(backbone, name), torch.float32)
    assert all(type(m) is bnb.nn.Linear8bitLt for m in linears(backbone.language_model).values())


def test_keep_unquantized_replaces_the_defaults(repo):
    config = quantization_config("bitsandbytes", 8, keep_unquantized=["model.video_tower", "model.image_tower"])
    model = AutoModelForImageTextToText.from_pretrained(repo, quantization_config=config)
    assert_plain(model.model.video_tower, torch.float32)
    assert_plain(model.model.image_tower, torch.float32)
    bridge = linears(model.model.memory_bridge).values()
    assert bridge and all(type(m) is bnb.nn.Linear8bitLt for m in bridge)
    assert type(model.lm_head) is bnb.nn.Linear8bitLt  # a user's list replaces transformers' default too


def test_keep_unquantized_fills_only_an_unset_list():
    filled = keep_unquantized(BitsAndBytesConfig(load_in_4bit=True), ["a"])
    assert filled.llm_int8_skip_modules == ["a"] and filled.load_in_4bit
    assert keep_unquantized(
        BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["x"])
    ).llm_int8_skip_modules == ["x"]
    assert keep_unquantized({"load_in_8bit": True})["llm_int8_skip_modules"] == UNQUANTIZED_MODULES
    assert (
        keep_unquantized({"quant_method": "quanto", "weights": "int8"})["modules_to_not_convert"]
        == UNQUANTIZED_MODULES
    )
    assert keep_unquantized({"quant_method": "torchao", "modules_to_not_convert": []})["modules_to_not_convert"] == []
    torchao_config = keep_unquantized(quantization_config("torchao", 8))
    assert torchao_config.modules_to_not_convert == UNQUANTIZED_MODULES


def test_quantization_config_refuses_what_the_backend_cannot_do():
    with pytest.raises(ValueError, match="torchao quantizes to 8 bits here, not 4"):
        quantization_config("torchao", 4)
    with pytest.raises(ValueError, match="`backend` must be one of"):
        quantization_config("gptq", 4)
    assert quantization_config("bitsandbytes", 4).bnb_4bit_quant_type == "nf4"
    assert videollamb_hf.quantization_config is quantization_config


def test_storage_bytes_counts_quantized_weights_at_their_size():
    layer = nn.Sequential(nn.Linear(256, 128))
    assert storage_bytes(layer) == (256 * 128 + 128) * 4
    torchao.quantization.quantize_(layer, torchao.quantization.Int8WeightOnlyConfig())
    weight = layer[0].weight
    assert weight.numel() * weight.element_size() == 256 * 128 * 4  # what the tensor reports: fp32-sized
    # int8 values + an fp32 scale and an int8 zero point per output row + the fp32 bias
    assert storage_bytes(layer) == 256 * 128 + 128 * 4 + 128 + 128 * 4
    shared = nn.Linear(8, 8, bias=False)
    tied = nn.ModuleDict({"a": shared, "b": nn.Linear(8, 8, bias=False)})
    tied["b"].weight = shared.weight
    assert storage_bytes(tied) == 8 * 8 * 4  # one storage counted once
