"""`videollamb-hf convert`: an original VideoLLaMB checkpoint (the authors' LLaVA layout, `model_type:
"llava_llama"`, e.g. `ColorfulAI/VideoLLaMB`) -> a self-contained Hugging Face repo folder (config, safetensors,
processor, remote code, model card), optionally pushed to the Hub.

A leaf of the import graph (only the command line imports it): the reading of the authors' format lives in
`original_format`, whose public names are re-exported here for code that imported them from this module.

    python -m videollamb_hf.convert_videollamb_original_to_hf ORIGINAL OUTPUT
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .configuration_videollamb import VideoLlambConfig
from .file_utils import staged_output_folder
from .modeling_videollamb import VideoLlambForConditionalGeneration
from .original_format import (  # noqa: F401  (re-exported: these names were importable from here)
    CLIP_L14_336_DEFAULTS,
    DOWNLOAD_KWARG_NAMES,
    KNOWN_UNUSED_LANGUAGEBIND_KEYS,
    KNOWN_UNUSED_ORIGINAL_KEYS,
    LANGUAGEBIND_VISION_DEFAULTS,
    MEM_VARIANT_FIELDS,
    ORIGINAL_ARCHITECTURES,
    ORIGINAL_KEY_RENAMINGS,
    ORIGINAL_MODEL_TYPE,
    ORIGINAL_VOCAB_KEYS,
    SUPPORTED_PROJECTOR_TYPES,
    PadPlaceholderRows,
    check_tower_state,
    convert_original_key,
    convert_original_state_dict,
    download_options,
    finish_original_loading,
    is_original_config,
    languagebind_vision_config,
    load_languagebind_tower_weights,
    log_lora_merges,
    original_config_to_videollamb,
    original_weight_conversions,
    tower_source,
)
from .processing_videollamb import VideoLlambProcessor


logger = logging.getLogger(__name__)

MODEL_CARD = """---
license: {license}
library_name: transformers
pipeline_tag: video-text-to-text
tags:
- videollamb
- video-llm
- long-video
- recurrent-memory
base_model: {source}
---

# VideoLLaMB in the Hugging Face layout

A self-contained conversion of `{source}` (the authors' LLaVA layout, `model_type: "llava_llama"`) to the layout of
[videollamb_hf](https://github.com/bigai-nlco/VideoLLaMB): a native transformers config, safetensors shards with
this package's key names, a processor (tokenizer, video and image processors, `llava_v1` chat template) and the
package's modules for `trust_remote_code=True`.

## Use with videollamb_hf installed

```python
import videollamb_hf  # registers the model, processor and pipeline with transformers
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}", dtype="auto", device_map="auto")
processor = AutoProcessor.from_pretrained("{repo}")
messages = [{{"role": "user", "content": [{{"type": "video", "path": "video.mp4"}},
                                         {{"type": "text", "text": "What happens in the video?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=128)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Use without it

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
```
(the code that runs is the copy of videollamb_hf {version} saved in this repository: read it before trusting it).

## Provenance

- Converted from `{source}`{revision} with `videollamb-hf convert` (videollamb_hf {version}, transformers
  {transformers_version}); tower weights: {towers}; dtype: {dtype}.
- Key names: the authors' `model.layers.*`, `model.mm_projector.{{projector,retrieval}}.*`,
  `model.{{video,image}}_tower.*_tower.*` are renamed by the rules in
  `original_format.ORIGINAL_KEY_RENAMINGS`; the embedding and LM head gain two rows (the mean
  row) for the `<video>` (id {video_token_id}) and `<image>` (id {image_token_id}) placeholders, which generation
  never emits.
- Parity with the authors' code (bigai-nlco/VideoLLaMB, transformers 4.39.1), measured on tiny checkpoints in
  this layout: relative logit difference {parity}, identical greedy tokens.
- Generation defaults: greedy, `</s>` ends, `<unk>` pads.

## License and citation

The weights keep the license of the original checkpoint ({license}; LLaMA-2 / Vicuna terms apply to the language
model). Please cite the authors:

```bibtex
@article{{videollamb,
    author    = {{Wang, Yuxuan and Xie, Cihang and Liu, Yang and Zheng, Zilong}},
    title     = {{VideoLLaMB: Long-context Video Understanding with Recurrent Memory Bridges}},
    journal   = {{arxiv}},
    year      = {{2024}}
}}
```
"""
# Measured against the authors' code on tiny checkpoints (see the project's RESULTS.md).
PARITY_FIGURE = "<= 3e-7 (fp32)"


# -- streaming conversion -----------------------------------------------------------------------------------------
# The converted repo is written tensor by tensor: nothing holds the whole model. Each input shard is read through
# safetensors' memory map, each tensor renamed (and padded, LoRA-merged, cast) and written at its place in an output
# shard whose header was laid out beforehand from the model's shapes (built on the meta device). Peak memory: about
# one input shard (its mapped pages) plus one tensor; `load -> save_pretrained` held the whole model.
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}  # fmt: skip


def _parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    text = size.strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


class SafetensorsShardWriter:
    """Writes known tensors (`{name: (shape, dtype)}`, in order) into safetensors shards of at most `max_shard_size`
    bytes (a tensor larger than that gets a shard of its own), one tensor at a time in any order: each file's header
    is written first, each tensor at its offset. The files and index are transformers' (`model.safetensors`, or
    `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`); `close()` checks every tensor came."""

    def __init__(self, directory, layout: dict, max_shard_size: str | int = "5GB"):
        limit = _parse_size(max_shard_size)
        groups, size = [[]], 0
        for name, (shape, dtype) in layout.items():
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            if groups[-1] and size + nbytes > limit:
                groups.append([])
                size = 0
            groups[-1].append((name, tuple(shape), dtype, nbytes))
            size += nbytes
        self.directory = Path(directory)
        self.places, self.files, self.weight_map, self.total = {}, [], {}, 0
        for i, group in enumerate(groups, start=1):
            filename = "model.safetensors" if len(groups) == 1 else f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for name, shape, dtype, nbytes in group:
                header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                                "data_offsets": [offset, offset + nbytes]}  # fmt: skip
                offset += nbytes
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors pads it
            file = open(self.directory / filename, "wb")  # noqa: SIM115 (closed in close())
            file.write(len(encoded).to_bytes(8, "little") + encoded)
            file.truncate(8 + len(encoded) + offset)
            self.files.append(file)
            for name, shape, dtype, _ in group:
                begin = header[name]["data_offsets"][0]
                self.places[name] = (file, 8 + len(encoded) + begin, shape, dtype)
                self.weight_map[name] = filename
            self.total += offset
        self.written = set()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        file, offset, shape, dtype = self.places[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"`{name}` has shape {tuple(tensor.shape)}, the model {shape}.")
        data = tensor.detach().to(dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
        file.seek(offset)
        file.write(memoryview(data))
        self.written.add(name)

    def close(self) -> None:
        for file in self.files:
            file.close()
        missing = sorted(set(self.places) - self.written)
        if missing:
            raise ValueError(f"missing {missing[:10]}")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": self.weight_map}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def original_checkpoint_files(original: str, allow_pickle: bool = False, revision: str | None = None,
                              **download_kwargs) -> list[str]:  # fmt: skip
    """The weight files of an original checkpoint (folder or hub id): safetensors (one file or an index), else,
    only with `allow_pickle`, `pytorch_model.bin` (one or an index)."""
    from transformers.utils import cached_file

    options = {k: v for k, v in download_kwargs.items() if k in DOWNLOAD_KWARG_NAMES and v is not None}

    def fetch(filename):
        if os.path.isdir(original):
            path = os.path.join(original, filename)
            return path if os.path.isfile(path) else None
        return cached_file(original, filename, revision=revision, _raise_exceptions_for_missing_entries=False,
                           **options)  # fmt: skip

    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):  # fmt: skip
        if single.endswith(".bin") and not allow_pickle and (fetch(single) or fetch(index)):
            raise ValueError(
                f"{original} has only pickled `.bin` weights. videollamb_hf converts safetensors only unless told "
                "otherwise: pass --allow-pickle to load them with `torch.load(weights_only=True)`."
            )
        path = fetch(single)
        if path:
            return [path]
        path = fetch(index)
        if path:
            with open(path, encoding="utf-8") as file:
                names = sorted(set(json.load(file)["weight_map"].values()))
            return [fetch(name) for name in names]
    raise FileNotFoundError(f"No weights found in {original} (looked for safetensors and .bin files, or an index).")


def _read_tensors(path: str):
    """(name, tensor) of one weight file, one tensor in memory at a time."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as file:
            for name in file.keys():
                yield name, file.get_tensor(name)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        for name in list(state):
            yield name, state.pop(name)


def stream_original_weights(files: list[str], config, allow_pickle: bool = False):
    """(our name, tensor) for every weight of an original checkpoint's `files`, as `from_pretrained` would load
    them: renamed (`convert_original_key`), the vocabulary grown by the placeholder rows (`PadPlaceholderRows`),
    a LoRA-wrapped image encoder merged (`lora_merged_weight`), the known-unused buffers dropped; then the tower
    weights absent from the checkpoint, from the LanguageBind folders. Unknown keys raise `ValueError`."""
    from .original_format import (
        LANGUAGEBIND_DEFAULT_LORA_ALPHA,
        LORA_PART_KEY,
        _matches_any,
        languagebind_tower_state,
        lora_merged_weight,
        tower_folder,
        unwrap_lora_key,
    )

    layout = config._original_layout
    pad = PadPlaceholderRows()
    lora_parts, seen, unexpected = {}, set(), []
    alpha = layout.get("image_tower_lora_alpha")
    for path in files:
        for key, tensor in _read_tensors(path):
            if _matches_any(key, KNOWN_UNUSED_ORIGINAL_KEYS):
                continue
            match = LORA_PART_KEY.search(key)
            if match:
                module = unwrap_lora_key(match.group(1))
                parts = lora_parts.setdefault(module, {})
                parts[match.group(2)] = tensor
                if len(parts) < 3:
                    continue
                tensor = lora_merged_weight(parts["base_layer"], parts["lora_A"], parts["lora_B"],
                                            LANGUAGEBIND_DEFAULT_LORA_ALPHA if alpha is None else alpha)  # fmt: skip
                layout.setdefault("lora_merged", {})[module] = (parts["lora_A"].shape[0], alpha)
                del lora_parts[module]
                key = f"{module}.weight"
            try:
                name = convert_original_key(unwrap_lora_key(key))
            except KeyError:
                unexpected.append(key)
                continue
            if key in ORIGINAL_VOCAB_KEYS:
                (tensor,) = pad.convert({key: tensor}, [key], [name], config=config).values()
            seen.add(name)
            yield name, tensor
    if lora_parts:
        module, parts = next(iter(lora_parts.items()))
        raise ValueError(f"`{module}`: LoRA-wrapped, but the checkpoint holds only {sorted(parts)}.")
    if unexpected:
        raise ValueError(f"unexpected {sorted(unexpected)[:10]}")
    with torch.device("meta"):
        expected = VideoLlambForConditionalGeneration(config).state_dict()
    for tower in ("video_tower", "image_tower"):
        prefix = f"model.{tower}."
        wanted = {k.removeprefix(prefix): v for k, v in expected.items() if k.startswith(prefix)}
        if not wanted or any(prefix + k in seen for k in wanted):
            continue
        source = tower_folder(layout, tower)
        logger.info("Taking the %s weights from %s (absent from the checkpoint).", tower, source)
        ours, extra = languagebind_tower_state(source, allow_pickle)
        check_tower_state(ours, extra, wanted, source)
        layout.setdefault("towers_loaded_from", []).append(source)
        for key in list(ours):
            yield prefix + key, ours.pop(key)


def _resolve_dtype(dtype, config, files) -> torch.dtype:
    """The written dtype: the one asked for, else the checkpoint config's, else its first floating tensor's."""
    if dtype not in (None, "auto"):
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if isinstance(config.dtype, torch.dtype):
        return config.dtype
    if isinstance(config.dtype, str) and config.dtype != "auto":
        return getattr(torch, config.dtype)
    for _, tensor in _read_tensors(files[0]):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def logging_tqdm(iterable, total: int, desc: str):
    from transformers.utils import logging as hf_logging

    return hf_logging.tqdm(iterable, total=total, desc=desc)


def convert_original_checkpoint(
    original: str,
    output: str | os.PathLike,
    video_tower: str | None = None,
    image_tower: str | None = None,
    dtype: str | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    allow_pickle: bool = False,
    revision: str | None = None,
    license: str = "apache-2.0",
    **download_kwargs,
) -> Path:
    """Convert an original (`llava_llama`) VideoLLaMB checkpoint into a self-contained HF repo folder.

    Writes into a temporary folder beside `output` and renames it at the end, so a failure never leaves a folder
    that looks complete; refuses a non-empty `output` unless `overwrite`. Returns the output folder.
    """
    import transformers
    from huggingface_hub import ModelCard

    output = Path(output).absolute()
    started = time.perf_counter()
    with staged_output_folder(output, overwrite) as staging:
        load = dict(download_kwargs, revision=revision) if revision else dict(download_kwargs)
        config = VideoLlambConfig.from_pretrained(original, video_tower=video_tower, image_tower=image_tower, **load)
        if getattr(config, "_original_layout", None) is None:
            raise ValueError(
                f"{original} is not in the authors' layout (`model_type: llava_llama`); nothing to convert."
            )
        layout = config._original_layout
        files = original_checkpoint_files(original, allow_pickle=allow_pickle, **load)
        target = _resolve_dtype(dtype, config, files)
        config.dtype = target
        for name in ("text_config", "vision_config", "image_config"):
            getattr(config, name).dtype = target
        with torch.device("meta"):
            model = VideoLlambForConditionalGeneration(config).to(target)
        processor = VideoLlambProcessor.from_pretrained(
            original, video_tower=video_tower, image_tower=image_tower, **load
        )
        tokenizer = processor.tokenizer
        generation = model.generation_config
        generation.eos_token_id = tokenizer.eos_token_id
        generation.pad_token_id = tokenizer.unk_token_id
        generation.bos_token_id = tokenizer.bos_token_id
        generation.do_sample = False
        for name in ("temperature", "top_p", "top_k"):
            setattr(generation, name, None)
        # Config, generation config and remote code; the weights follow (save_pretrained would delete shards it
        # did not write).
        model.save_pretrained(staging, state_dict={})
        processor.save_pretrained(staging)
        writer = SafetensorsShardWriter(
            staging, {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}, max_shard_size
        )
        problems = []
        try:
            with download_options(**download_kwargs):
                for name, tensor in logging_tqdm(stream_original_weights(files, config, allow_pickle),
                                                 total=len(writer.places), desc="Converting weights"):  # fmt: skip
                    if name not in writer.places:
                        problems.append(f"unexpected {name}")
                        continue
                    writer.write(name, tensor)
        finally:
            try:
                writer.close()
            except ValueError as error:
                problems.append(str(error))
        if problems:
            raise ValueError(
                "This LLaVA-layout (`llava_llama`) checkpoint does not match VideoLLaMB's layout: "
                + "; ".join(problems)
                + ". Nothing was written under a guessed name; is it a VideoLLaMB checkpoint?"
            )
        log_lora_merges(layout)
        towers = "from the checkpoint"
        if layout.get("towers_loaded_from"):
            towers = "from " + ", ".join(layout["towers_loaded_from"])
        card = MODEL_CARD.format(
            source=original, repo=push_to_hub or output.name, version=__version__, license=license,
            transformers_version=transformers.__version__, revision=f" (revision {revision})" if revision else "",
            towers=towers, dtype=str(model.dtype).removeprefix("torch."), parity=PARITY_FIGURE,
            video_token_id=model.config.video_token_id, image_token_id=model.config.image_token_id,
        )  # fmt: skip
        ModelCard(card).save(staging / "README.md")
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    logger.warning("Converted %s -> %s (%.1f MB) in %.1f s.", original, output, size / 1e6,
                   time.perf_counter() - started)  # fmt: skip
    if push_to_hub:
        from transformers.utils.hub import hf_api

        api = hf_api()
        repo_id = api.create_repo(push_to_hub, exist_ok=True, token=download_kwargs.get("token")).repo_id
        api.upload_folder(repo_id=repo_id, folder_path=str(output), commit_message=f"Convert {original}",
                          token=download_kwargs.get("token"))  # fmt: skip
        logger.warning("Pushed %s to %s.", output, repo_id)
    return output


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="videollamb-hf convert",
        description="Convert an original VideoLLaMB checkpoint (LLaVA layout, e.g. ColorfulAI/VideoLLaMB) into a "
        "self-contained Hugging Face repo folder (config, safetensors, processor, remote code, model card).",
    )
    parser.add_argument("original", help="hub id or local folder of the original checkpoint")
    parser.add_argument("output", help="folder to write (must be empty or absent, unless --overwrite)")
    parser.add_argument("--video-tower", help="LanguageBind video tower folder or hub id (default: from the config)")
    parser.add_argument("--image-tower", help="LanguageBind image tower folder or hub id (default: from the config)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="dtype of the written weights (default: the checkpoint's)")  # fmt: skip
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this hub repository")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    parser.add_argument("--revision", help="revision of the original repository")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="accept .bin weights (loaded with torch.load(weights_only=True)); off by default")  # fmt: skip
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        output = convert_original_checkpoint(
            args.original, args.output, video_tower=args.video_tower, image_tower=args.image_tower,
            dtype=None if args.dtype == "auto" else args.dtype, push_to_hub=args.push_to_hub,
            overwrite=args.overwrite, max_shard_size=args.max_shard_size, allow_pickle=args.allow_pickle,
            revision=args.revision,
        )  # fmt: skip
    except (FileExistsError, FileNotFoundError, ValueError, OSError) as error:
        print(f"videollamb-hf convert: error: {error}", file=sys.stderr)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
