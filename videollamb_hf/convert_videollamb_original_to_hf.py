"""`videollamb-hf convert`: an original VideoLLaMB checkpoint (the authors' LLaVA layout, `model_type:
"llava_llama"`, e.g. `ColorfulAI/VideoLLaMB`) -> a self-contained Hugging Face repo folder (config, safetensors,
processor, remote code, model card), optionally pushed to the Hub.

A leaf of the import graph (only the command line imports it): the reading of the authors' format lives in
`original_format`, whose public names are re-exported here for code that imported them from this module.

    python -m videollamb_hf.convert_videollamb_original_to_hf ORIGINAL OUTPUT
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__
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
    convert_original_key,
    convert_original_state_dict,
    download_options,
    finish_original_loading,
    is_original_config,
    languagebind_vision_config,
    load_languagebind_tower_weights,
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
        model = VideoLlambForConditionalGeneration.from_pretrained(
            original, video_tower=video_tower, image_tower=image_tower, dtype=dtype or "auto",
            use_safetensors=None if allow_pickle else True, **load,
        )  # fmt: skip
        if getattr(model.config, "_original_layout", None) is None:
            raise ValueError(
                f"{original} is not in the authors' layout (`model_type: llava_llama`); nothing to convert."
            )
        layout = model.config._original_layout
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
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        processor.save_pretrained(staging)
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
