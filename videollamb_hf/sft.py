"""Fine-tuning VideoLLaMB with TRL's own SFT script: `python -m videollamb_hf.sft` (or `videollamb-hf sft`) takes
exactly `trl sft`'s flags and YAML configs, imports this package (so original-layout and saved repos load without
`--trust_remote_code`), prepares the data, guards TRL's defaults that would train wrong, then runs
`trl.scripts.sft.main`.

Data: rows in the chat format TRL expects: `messages` with `{"type": "video", "path": ...}` /
`{"type": "image", ...}` blocks, plus an `images` column (may be empty). `--dataset_name` may be a JSON / JSONL
file (TRL's script takes only a folder or a hub id), a folder or a hub id. `convert-llava` turns the original
LLaVA-style JSON (`video`/`image` + `conversations` with `from: human|gpt` and `<video>`/`<image>` tags) into that
format, reporting and skipping records whose media are missing or unreadable.

Guards (TRL 1.16): assistant-only loss is on unless asked otherwise (TRL's vision collator would otherwise train
on every token, the placeholder slots included); `max_length` is checked against the longest prompt with its
placeholder slots before training starts (TRL's default 1,024 is shorter than one video's 1,152 slots, and
truncation would cut a placeholder run); a row whose media is missing fails or is skipped (never trained on as
placeholders without pixels).

    python -m videollamb_hf.sft --model_name_or_path ColorfulAI/VideoLLaMB --dataset_name data.jsonl \\
        --output_dir out --per_device_train_batch_size 1 --learning_rate 2e-5
    python -m videollamb_hf.sft convert-llava llava.json --media-root DIR --output data.jsonl
"""

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path


logger = logging.getLogger(__name__)

MEDIA_KEYS = {"video": ("path", "video", "url"), "image": ("path", "image", "url")}


class BadRecordsError(ValueError):
    """Too many records had missing or unreadable media."""


def _trainer_class():
    """`VideoLlambSFTTrainer`: TRL's `SFTTrainer` with `videollamb_hf.training.VideoLlambTrainerMixin`: the
    model's recurrent loss when `config.recurrent_loss` is set (TRL's own path trains through the backbone and its
    fused LM head, which would skip it; the backbone refuses that path in training), FSDP on machines without
    GPUs, the trainer state saved next to the model, and an `end()` that waits for every process before the
    process group is destroyed."""
    from trl import SFTTrainer

    from .training import VideoLlambTrainerMixin

    return type("VideoLlambSFTTrainer", (VideoLlambTrainerMixin, SFTTrainer), {"__module__": __name__})


# -- data -------------------------------------------------------------------------------------------------------------


def _media_ok(path: str, kind: str) -> str | None:
    """None if the media file can be opened, else why not."""
    if not os.path.isfile(path):
        return "missing"
    try:
        if kind == "video":
            from .video_decoding import VideoReader

            VideoReader(path).close()
        else:
            from PIL import Image

            with Image.open(path) as image:
                image.verify()
    except Exception as error:  # noqa: BLE001 - any failure to open is a bad record, reported below
        return f"unreadable ({type(error).__name__}: {error})"
    return None


def llava_record_to_chat(record: dict, media_root: str | os.PathLike = ".") -> dict:
    """One original LLaVA-style record -> `{"messages": [...], "images": [...]}` (video/image paths resolved under
    `media_root`). `<video>` / `<image>` tags become media blocks at the start of their turn, as the chat template
    puts them."""
    root = Path(media_root)
    media = {kind: record.get(kind) for kind in ("video", "image") if record.get(kind)}
    for kind, value in media.items():
        media[kind] = [str(root / v) for v in (value if isinstance(value, list) else [value])]
    messages, images = [], []
    for turn in record.get("conversations", []):
        role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}.get(turn.get("from"))
        if role is None:
            raise ValueError(f"Unknown speaker {turn.get('from')!r} in record {record.get('id')!r} (human|gpt).")
        text = turn.get("value", "")
        content = []
        for kind, tag in (("video", "<video>"), ("image", "<image>")):
            for _ in range(text.count(tag)):
                queue = media.get(kind) or []
                if not queue:
                    raise ValueError(f"Record {record.get('id')!r} has a {tag} tag but no `{kind}` field.")
                path = queue.pop(0)
                content.append({"type": kind, "path": path})
                if kind == "image":
                    images.append(path)
            text = text.replace(tag + "\n", "").replace(tag, "")
        content.append({"type": "text", "text": text.strip()})
        messages.append({"role": role, "content": content})
    return {"messages": messages, "images": images}


def media_of(row: dict) -> list[tuple[str, str]]:
    """`(kind, path)` of every video / image block of a chat row."""
    found = []
    for message in row.get("messages", []):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            kind = block.get("type")
            if kind in MEDIA_KEYS:
                path = next((block[k] for k in MEDIA_KEYS[kind] if isinstance(block.get(k), str)), None)
                if path is not None:
                    found.append((kind, path))
    return found


def filter_rows(rows: list[dict], max_bad_fraction: float = 0.0, check_media: bool = True) -> tuple[list, list]:
    """Keep the rows whose media open; returns `(good rows, [(index, reason), ...])`. Raises `BadRecordsError` when
    more than `max_bad_fraction` of the rows are bad (every bad record is listed in the message's log)."""
    good, bad = [], []
    for index, row in enumerate(rows):
        if not row.get("messages"):
            bad.append((index, "no `messages`"))
            continue
        problems = [f"{kind} {path}: {why}" for kind, path in media_of(row)
                    if check_media and (why := _media_ok(path, kind))]  # fmt: skip
        if problems:
            bad.append((index, "; ".join(problems)))
            continue
        row = dict(row)
        row.setdefault("images", [])  # TRL takes its vision path only when the column exists
        good.append(row)
    for index, reason in bad:
        logger.warning("Skipping record %d: %s", index, reason)
    if rows and len(bad) / len(rows) > max_bad_fraction:
        raise BadRecordsError(
            f"{len(bad)} of {len(rows)} records have missing or unreadable media (more than the allowed "
            f"{max_bad_fraction:.0%}; first: record {bad[0][0]}: {bad[0][1]}). Fix them or raise --max-bad-fraction."
        )
    return good, bad


def convert_llava_json(path, media_root, output=None, max_bad_fraction: float = 0.0) -> tuple[list, list]:
    """Convert an original LLaVA-style JSON / JSONL file. Writes JSONL to `output` when given. Returns
    `(rows, bad)`."""
    records = read_records(path)
    rows, conversion_errors = [], []
    for index, record in enumerate(records):
        try:
            rows.append(llava_record_to_chat(record, media_root))
        except ValueError as error:
            rows.append({"messages": []})
            conversion_errors.append((index, str(error)))
    good, bad = filter_rows(rows, max_bad_fraction=1.0)
    bad = sorted({i: r for i, r in bad + conversion_errors}.items())
    if records and len(bad) / len(records) > max_bad_fraction:
        raise BadRecordsError(
            f"{len(bad)} of {len(records)} records are bad (allowed {max_bad_fraction:.0%}); first: record "
            f"{bad[0][0]}: {bad[0][1]}."
        )
    if output is not None:
        write_jsonl(good, output)
    return good, bad


def read_records(path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else [data]


def write_jsonl(rows, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_rows(dataset_name: str, split: str = "train", config: str | None = None) -> list[dict]:
    """Rows of a JSON/JSONL file, a folder holding them, or a hub dataset (with `datasets`)."""
    from datasets import load_dataset

    if os.path.isfile(dataset_name):
        return read_records(dataset_name)
    dataset = load_dataset(dataset_name, name=config)
    return [dict(row) for row in dataset[split]]


def longest_prompt(rows: list[dict], processor) -> int:
    """Tokens of the longest row, placeholder slots included (what `max_length` must fit)."""
    longest = 0
    for row in rows:
        prompt = processor.apply_chat_template(row["messages"], tokenize=False)
        ids, _ = processor._tokenize_prompt(prompt, add_special_tokens=True)
        longest = max(longest, len(ids))
    return longest


# -- entry point ------------------------------------------------------------------------------------------------------


def _given(argv: list[str], config: dict, name: str) -> bool:
    return f"--{name}" in argv or any(a.startswith(f"--{name}=") for a in argv) or name in config


def main(argv=None) -> int:
    """TRL's SFT script with this package imported, our data preparation and guards."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert-llava"]:
        return convert_main(argv[1:])
    import yaml
    from transformers import AutoProcessor
    from trl.scripts import sft as trl_sft

    import videollamb_hf  # noqa: F401  (registers the model, processor and original-layout loading)

    from .training import cpu_launch_defaults

    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--max_bad_fraction", type=float, default=0.0)
    ours.add_argument("--recurrent_loss", action="store_true", help="the original's per-segment loss")
    extra, argv = ours.parse_known_args(argv)
    config = {}
    if "--config" in argv:
        config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {}
        if "recurrent_loss" in config or "max_bad_fraction" in config:  # ours, not TRL's: keep them from its parser
            config_path = Path(tempfile.mkdtemp(prefix="videollamb-sft-config-")) / "config.yaml"
            trl_config = {k: v for k, v in config.items() if k not in ("recurrent_loss", "max_bad_fraction")}
            config_path.write_text(yaml.safe_dump(trl_config))
            argv[argv.index("--config") + 1] = str(config_path)
            extra.max_bad_fraction = config.get("max_bad_fraction", extra.max_bad_fraction)
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")} | set(config)
    for name, value in cpu_launch_defaults(given).items():  # bf16 off and gloo on machines without GPUs
        argv += [f"--{name}", str(value)]
    parser = trl_sft.make_parser(prog="videollamb-hf sft")
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(
        argv, fail_with_unknown_args=True
    )
    recurrent = extra.recurrent_loss or bool(config.get("recurrent_loss"))
    if recurrent:
        training_args.model_init_kwargs = dict(training_args.model_init_kwargs or {}, recurrent_loss=True)
    if not _given(argv, config, "assistant_only_loss"):
        training_args.assistant_only_loss = True
        logger.warning("assistant_only_loss on (default of videollamb_hf.sft): the prompt and the visual slots are "
                       "not trained on.")  # fmt: skip
    if not script_args.dataset_name:
        raise ValueError("--dataset_name is needed (a JSON/JSONL file, a folder or a hub id).")
    rows = load_rows(script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_config)
    rows, _ = filter_rows(rows, max_bad_fraction=extra.max_bad_fraction)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    longest = longest_prompt(rows, processor)
    if not _given(argv, config, "max_length"):
        training_args.max_length = max(2048, longest)
    if training_args.max_length is not None and training_args.max_length < longest:
        raise ValueError(
            f"--max_length {training_args.max_length} is shorter than the longest example ({longest} tokens with its "
            "placeholder slots: a video takes config.video_seq_length of them); truncation would cut a placeholder "
            f"run. Pass --max_length {longest} or more."
        )
    # TRL's script reads a folder: write the prepared rows there (under the output dir, nothing elsewhere).
    data_dir = Path(tempfile.mkdtemp(prefix="videollamb-sft-data-", dir=_ensure(training_args.output_dir)))
    write_jsonl(rows, data_dir / f"{script_args.dataset_train_split}.jsonl")
    script_args.dataset_name, script_args.dataset_config = str(data_dir), None
    import trl
    from trl.trainer import sft_trainer

    original_trainer, original_get_peft_model = trl.SFTTrainer, sft_trainer.get_peft_model
    trl.SFTTrainer = _trainer_class()  # TRL's script builds `trl.SFTTrainer`: hand it ours for this run
    sft_trainer.get_peft_model = _seeded_get_peft_model(original_get_peft_model, training_args.seed)
    if recurrent:
        logger.warning("Recurrent loss: the prompt runs once per segment (VideoLlambSFTTrainer).")
    try:
        trl_sft.main(script_args, training_args, model_args, dataset_args)
    finally:
        trl.SFTTrainer, sft_trainer.get_peft_model = original_trainer, original_get_peft_model
    leave_together()
    return 0


def _seeded_get_peft_model(get_peft_model, seed: int):
    """PEFT's `get_peft_model`, with the generator seeded first. TRL seeds before it builds the model, and the
    adapters' random init (LoRA's `lora_A`) then draws whatever the load left: under DeepSpeed ZeRO-3's `zero.Init`
    the load draws (it initialises every module it builds) where a plain load does not, so the adapters started
    elsewhere (measured: lora_A 0.33 apart, losses 2e-4 apart by step 8). Seeded here, they start from the run's
    seed under every engine."""
    from transformers import set_seed

    def seeded(*args, **kwargs):
        set_seed(seed)
        return get_peft_model(*args, **kwargs)

    return seeded


def leave_together() -> None:
    """End of a multi-process run: free what still holds the process group (the trainer, the DDP wrapper), then
    every rank waits for the others and the group is destroyed, all ranks together."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _ensure(folder) -> str:
    Path(folder).mkdir(parents=True, exist_ok=True)
    return str(folder)


def convert_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="videollamb-hf sft convert-llava",
                                     description="LLaVA-style JSON (video/image + conversations) -> TRL chat JSONL")  # fmt: skip
    parser.add_argument("input")
    parser.add_argument("--media-root", default=".", help="folder the `video` / `image` paths are relative to")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--max-bad-fraction", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        rows, bad = convert_llava_json(args.input, args.media_root, args.output, args.max_bad_fraction)
    except (BadRecordsError, ValueError, OSError) as error:
        print(f"videollamb-hf sft convert-llava: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(rows)} records written to {args.output}; {len(bad)} skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
