"""Fine-tune VideoLLaMB with plain `transformers.Trainer` machinery (`VideoLlambTrainer`, `VideoLlambDataCollator`)
instead of TRL's script: the same rows, flags and losses as `videollamb-hf sft`, launchable the same ways.

    python examples/trainer_sft.py --model_name_or_path MODEL --data rows.jsonl --output_dir out \\
        --per_device_train_batch_size 1 --learning_rate 2e-5 [--mode full|bridge_only|lora] [--recurrent_loss]
    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml examples/trainer_sft.py ...

Rows: JSON/JSONL chat rows with `messages` (video / image blocks), as `videollamb-hf sft` takes them. Every
`TrainingArguments` flag works; on a machine without GPUs bf16 is off and multi-process launches use gloo
(`videollamb_hf.training.cpu_launch_defaults`). Writes the model (or the LoRA adapters) and trainer_state.json to
`--output_dir`.
"""

import sys
from dataclasses import dataclass, field

from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser, TrainingArguments, set_seed

import videollamb_hf  # noqa: F401  (registers the model and processor)
from videollamb_hf import sft, training


@dataclass
class Options:
    model_name_or_path: str = field(metadata={"help": "hub id, saved or original-layout folder"})
    data: str = field(metadata={"help": "JSON / JSONL chat rows"})
    mode: str = field(default="full", metadata={"help": "full | bridge_only | lora"})
    recurrent_loss: bool = field(default=False, metadata={"help": "the original's per-segment loss"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def main(argv: list[str]) -> int:
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    for name, value in training.cpu_launch_defaults(given).items():
        argv += [f"--{name}", str(value)]
    options, args = HfArgumentParser((Options, TrainingArguments)).parse_args_into_dataclasses(argv)
    if options.mode not in ("full", "bridge_only", "lora"):
        raise SystemExit(f"--mode must be full, bridge_only or lora, not {options.mode!r}")
    args.remove_unused_columns = False  # the collator reads the `messages` column
    rows, _ = sft.filter_rows(sft.read_records(options.data))
    processor = AutoProcessor.from_pretrained(options.model_name_or_path)
    model = AutoModelForImageTextToText.from_pretrained(
        options.model_name_or_path,
        recurrent_loss=options.recurrent_loss,
        freeze_language_model=options.mode == "bridge_only",
    )
    if options.mode == "lora":
        from peft import LoraConfig, get_peft_model

        set_seed(args.seed)  # the adapters' random init from the run's seed, whatever the load drew
        lora = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                          target_modules=options.lora_target_modules, task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(model, lora)
    from datasets import Dataset

    trainer = training.VideoLlambTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=training.VideoLlambDataCollator(processor),
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.end()  # every process waits for the save, then trainer_state.json is written
    sft.leave_together()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
