"""Quantized loading: the language model's decoder linears quantized to 8 or 4 bits, everything else as loaded.

The towers, the memory bridge and the projector are a small part of the released model (0.74B of its 7.5B parameters)
and every visual token goes through them, so a quantized load keeps them, and the LM head (as transformers does), in
the load dtype. The mechanism is transformers' own: each quantizer skips the modules its config lists
(`llm_int8_skip_modules` for bitsandbytes, `modules_to_not_convert` for torchao, quanto and others), each entry a
dotted path from the model's root that also covers everything under it ("model.video_tower" skips
`model.video_tower.*`; `transformers.quantizers.quantizers_utils.should_convert_module`). A list the user gives
replaces transformers' default (the LM head) entirely, so ours names the LM head too. `from_pretrained` fills the
list with the class's `_keep_unquantized_modules` when the user's config leaves it unset.

Backends, as measured on CPU beside torch 2.13.0 (`benchmarks/RESULTS.md`): bitsandbytes (8-bit LLM.int8, 4-bit
NF4) and torchao (int8 weight-only), both in the `quantization` extra; optimum-quanto (int8, int4) works through the
same list but is not declared.
"""

import copy
import inspect
from collections.abc import Iterable

import torch
from transformers import BitsAndBytesConfig, QuantoConfig, TorchAoConfig
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING


# Bits each backend quantizes to here (torchao 0.18's int4 weight-only configs do not run on CPU).
BACKENDS = {"bitsandbytes": (8, 4), "torchao": (8,), "quanto": (8, 4)}

# What a quantized load of VideoLlambForConditionalGeneration keeps in the load dtype (its `_keep_unquantized_modules`;
# VideoLlambModel's are the same without "model." and the head).
UNQUANTIZED_MODULES = [
    "model.video_tower",
    "model.image_tower",
    "model.memory_bridge",
    "model.multi_modal_projector",
    "lm_head",
]


def _skip_field(config_class) -> str | None:
    """The argument of a quantization config class that lists the modules to leave alone, if it has one."""
    parameters = inspect.signature(config_class.__init__).parameters
    return next((name for name in ("llm_int8_skip_modules", "modules_to_not_convert") if name in parameters), None)


def keep_unquantized(quantization_config, modules: Iterable[str] = tuple(UNQUANTIZED_MODULES)):
    """A copy of `quantization_config` that leaves `modules` unquantized, unless it lists modules to skip already
    (the user's list then stands, as in transformers).

    Args:
        quantization_config: a transformers quantization config (`BitsAndBytesConfig`, `TorchAoConfig`, ...) or its
            dict form (bitsandbytes when it sets `load_in_8bit` / `load_in_4bit`, else named by `quant_method`).
        modules: dotted module paths from the model's root (transformers' skip-list syntax).

    Returns:
        The same kind of object (a config or a dict); `quantization_config` itself when its class has no skip list.
    """
    if isinstance(quantization_config, dict):
        bnb = quantization_config.get("load_in_8bit") or quantization_config.get("load_in_4bit")
        method = "bitsandbytes_8bit" if bnb else quantization_config.get("quant_method")
        config_class = AUTO_QUANTIZATION_CONFIG_MAPPING.get(method)
        name = _skip_field(config_class) if config_class is not None else None
        if name is None or quantization_config.get(name) is not None:
            return quantization_config
        return dict(quantization_config, **{name: list(modules)})
    name = _skip_field(type(quantization_config))
    if name is None or getattr(quantization_config, name) is not None:
        return quantization_config
    quantization_config = copy.copy(quantization_config)
    setattr(quantization_config, name, list(modules))
    return quantization_config


def quantization_config(backend: str = "bitsandbytes", bits: int = 8, keep_unquantized: Iterable[str] | None = None):
    """A transformers quantization config that quantizes VideoLLaMB's language model to `bits` with `backend`.

    Pass it as `from_pretrained(..., quantization_config=...)`: the towers, the bridge, the projector and the LM head
    stay in the load dtype unless `keep_unquantized` says otherwise.

    Args:
        backend: "bitsandbytes" (8: LLM.int8; 4: NF4), "torchao" (8: int8 weight-only, per output channel) or
            "quanto" (8: int8; 4: int4 weights).
        bits: 8 or 4 (see `BACKENDS`).
        keep_unquantized: modules to leave unquantized, as dotted paths from the model's root (e.g.
            `[*UNQUANTIZED_MODULES, "model.language_model.layers.0"]`), replacing the model class's defaults;
            `None` keeps the defaults.
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {sorted(BACKENDS)}, got {backend!r}.")
    if bits not in BACKENDS[backend]:
        raise ValueError(f"{backend} quantizes to {' or '.join(map(str, BACKENDS[backend]))} bits here, not {bits}.")
    skip = None if keep_unquantized is None else list(keep_unquantized)
    if backend == "bitsandbytes":
        if bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=skip)
    if backend == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=skip)
    return QuantoConfig(weights=f"int{bits}", modules_to_not_convert=skip)


def storage_bytes(module: torch.nn.Module) -> int:
    """Bytes the weights of `module` occupy: every tensor of its state dict (tensor subclasses such as torchao's
    and quanto's opened into the plain tensors they hold; bitsandbytes' scales and quantization states included),
    each storage counted once and whole. `get_memory_footprint` counts torchao and quanto int8 weights at their
    nominal fp32 size; this counts their bytes."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    seen, total = set(), 0
    pending = [t for t in module.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)]
    while pending:
        tensor = pending.pop()
        if is_traceable_wrapper_subclass(tensor):
            names, _ = tensor.__tensor_flatten__()
            pending.extend(getattr(tensor, name) for name in names)
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


__all__ = ["BACKENDS", "UNQUANTIZED_MODULES", "keep_unquantized", "quantization_config", "storage_bytes"]
