"""Fine-tuning with plain `transformers.Trainer` (or TRL's `SFTTrainer`, which `videollamb_hf.sft` builds on):

- `VideoLlambDataCollator`: chat rows with video / image blocks -> a padded batch through the processor, with
  labels -100 outside the assistant turns, on the placeholder slots and on padding (exactly one BOS per row);
- `VideoLlambTrainerMixin` / `VideoLlambTrainer`: the recurrent loss when `config.recurrent_loss` is set,
  normalised over every label token of all processes (as transformers normalises its own loss), FSDP on machines
  without GPUs (accelerate sets FSDP up only for GPU types: without this each rank would train alone), the
  trainer state written next to the model, and an `end()` that waits for every process;
- `cpu_launch_defaults`: what a multi-process launch on a machine without GPUs needs in `TrainingArguments`.

    from transformers import Trainer, TrainingArguments
    from videollamb_hf.training import VideoLlambDataCollator

    args = TrainingArguments("out", per_device_train_batch_size=1, remove_unused_columns=False)
    Trainer(model, args, train_dataset=rows, data_collator=VideoLlambDataCollator(processor)).train()
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any


logger = logging.getLogger(__name__)


def _launched() -> bool:
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 and int(os.environ.get("WORLD_SIZE", 1)) > 1


def _engine() -> str | None:
    """The engine `accelerate launch` asked for through its environment: "deepspeed", "fsdp" or None."""
    for name in ("deepspeed", "fsdp"):
        if os.environ.get(f"ACCELERATE_USE_{name.upper()}", "false").lower() == "true":
            return name
    return None


def cpu_launch_defaults(given: set[str]) -> dict[str, Any]:
    """`TrainingArguments` values a launch on a machine without GPUs needs, for the names not in `given`:

    - `bf16=False` (TRL's `SFTConfig` defaults to bf16, which transformers refuses without a GPU unless `use_cpu`);
    - `ddp_backend="gloo"` under a multi-process launch: for DeepSpeed and FSDP accelerate leaves the backend
      unset off GPUs, and DeepSpeed then reports one process on every rank (each rank trains on the whole batch,
      with no reduction: measured losses 2x those of one process).

    Raises when `use_cpu` is given under a DeepSpeed / FSDP launch: transformers then sets both engines aside and
    each rank trains as plain DDP, silently."""
    import torch

    if torch.cuda.is_available():
        return {}
    defaults = {}
    if "bf16" not in given:
        defaults["bf16"] = False
    if _launched():
        engine = _engine()
        if engine and "use_cpu" in given:
            raise ValueError(
                f"--use_cpu turns {engine} off in transformers (each rank would train as plain DDP); drop it: on a "
                "machine without GPUs the launch runs on the CPU anyway, over gloo."
            )
        if "ddp_backend" not in given:
            defaults["ddp_backend"] = "gloo"
    return defaults


def enable_fsdp_on_cpu(trainer) -> bool:
    """Under `accelerate launch` with an FSDP config on a machine without GPUs, accelerate 1.15 builds no FSDP
    plugin (it does so only for GPU distributed types) and every rank trains its own whole model. Set the plugin
    (from the launcher's `FSDP_*` environment) and `DistributedType.FSDP` on the accelerator's state, as on a GPU.
    FSDP2 (`fully_shard`) runs this way over gloo; returns whether it was enabled."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = trainer.accelerator
    if _engine() != "fsdp" or getattr(accelerator.state, "fsdp_plugin", None) is not None:
        return False
    if accelerator.device.type != "cpu":
        return False
    if accelerator.num_processes < 2:
        return False
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(
            "FSDP on CPU runs as FSDP2 only (fsdp_version: 2): FSDP1's full state dict, gathered with "
            "offload_to_cpu and rank0_only as accelerate does, crashes rank 0 on CPU."
        )
    state = AcceleratorState()
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    logger.warning("FSDP2 on CPU (rank %d): the FSDP plugin set from the launch config; accelerate sets it up on "
                   "GPUs only.", accelerator.process_index)  # fmt: skip
    return True


def _is_trl_sft(trainer) -> bool:
    return any(cls.__module__.startswith("trl.") and cls.__name__ == "SFTTrainer" for cls in type(trainer).__mro__)


class VideoLlambTrainerMixin:
    """Mixed into `transformers.Trainer` (`VideoLlambTrainer`) and TRL's `SFTTrainer` (`videollamb_hf.sft`)."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        if not getattr(base.config, "recurrent_loss", False):
            if getattr(self, "is_fsdp_enabled", False) and _is_trl_sft(self):
                # TRL 1.16's fused LM head (`add_fused_lm_head`) reads the head's weight outside its forward: under
                # FSDP2 it gathers it with `full_tensor()`, whose backward keeps each rank's own gradient and no
                # reduce-scatter ever runs for the head (measured: the head's gradient 0.79 off the one-process
                # run's). Take transformers' own loss, through the model's forward, instead.
                from transformers import Trainer

                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self._recurrent_loss(model, inputs, return_outputs, num_items_in_batch)

    def _recurrent_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """The model's recurrent loss (one LM pass per segment), normalised as transformers normalises its own
        loss: over the label tokens of every process together (`average_tokens_across_devices`, the default;
        off, each process takes its own mean, as the authors' DeepSpeed runs did), and divided over the
        gradient-accumulation steps here, since the Trainer does not divide a loss it believes normalised.

        The forward goes through the wrapped model (DDP, DeepSpeed and FSDP hook their gathers and reductions
        there) with `recurrent_loss_terms=True`."""
        import torch

        keys = ("input_ids", "labels", "pixel_values_videos", "attention_mask", "video_frames_mask", "pixel_values")
        loss_sum, items = model(**{k: inputs[k] for k in keys if inputs.get(k) is not None},
                                recurrent_loss_terms=True)  # fmt: skip
        world = self.accelerator.num_processes
        if self.args.average_tokens_across_devices and world > 1:
            count = torch.tensor([float(items)], device=self.accelerator.device)
            total = self.accelerator.reduce(count, reduction="sum")[0]
            loss = loss_sum * world / total.clamp(min=1).to(loss_sum.device)
        else:
            loss = loss_sum / max(float(items), 1.0)
        if num_items_in_batch is not None:  # the Trainer then leaves the accumulation steps to the loss
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, None) if return_outputs else loss

    def end(self):
        # TRL's script calls `trainer.end()` right after `save_model`, which only the main process does: the
        # other ranks must wait for it (else they tear the group down while rank 0 writes, and hang: reproduced
        # with a slow save). The group itself is destroyed by `videollamb_hf.sft.leave_together` once TRL's
        # script has returned and the trainer and its DDP wrapper are freed.
        self.accelerator.wait_for_everyone()
        self.save_state()  # trainer_state.json next to the model: the full-precision per-step losses
        for tracker in self.accelerator.trackers:
            tracker.finish()


def __getattr__(name):
    # `VideoLlambTrainer` is built on first use: importing this module does not import the Trainer.
    if name == "VideoLlambTrainer":
        from transformers import Trainer

        trainer = type("VideoLlambTrainer", (VideoLlambTrainerMixin, Trainer), {
            "__doc__": "`transformers.Trainer` with the recurrent loss, FSDP on CPU and a waiting `end()` "
                       "(`VideoLlambTrainerMixin`).",
            "__module__": __name__,
        })  # fmt: skip
        globals()[name] = trainer
        return trainer
    raise AttributeError(name)


# -- data -------------------------------------------------------------------------------------------------------------


@dataclass
class VideoLlambDataCollator:
    """Chat rows -> a training batch, through the processor's chat template.

    Each row has `messages` in the chat format (`{"type": "video", "path": ...}` / `{"type": "image", ...}`
    blocks, as `videollamb_hf.sft` takes them). The batch is padded on the right; `labels` are the input ids
    with -100 on padding, on the video / image placeholder slots and (with `assistant_only_loss`, the default)
    everywhere outside the assistant turns, which the chat template marks with `{% generation %}`. Every row
    carries exactly one BOS (the template's); a row that does not is refused.

    With `transformers.Trainer`, pass `remove_unused_columns=False` in the arguments: the Trainer otherwise drops
    the `messages` column before the collator sees it (the collator says so when it happens).
    """

    processor: Any
    assistant_only_loss: bool = True
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    processor_kwargs: dict = field(default_factory=dict)

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        if not rows or any("messages" not in row for row in rows):
            keys = sorted(rows[0]) if rows else []
            raise ValueError(
                f"VideoLlambDataCollator takes rows with a `messages` column; got columns {keys}. With "
                "transformers.Trainer pass remove_unused_columns=False (it drops columns the model's forward "
                "does not name)."
            )
        kwargs = {
            "padding": True,
            "padding_side": "right",
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "truncation": self.max_length is not None,
            "max_length": self.max_length,
            "add_special_tokens": False,  # the chat template writes the BOS
            **self.processor_kwargs,
        }
        batch = self.processor.apply_chat_template(
            [row["messages"] for row in rows],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=self.assistant_only_loss,
            processor_kwargs=kwargs,
        )
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        tokenizer = self.processor.tokenizer
        if tokenizer.bos_token_id is not None:
            bos = ((input_ids == tokenizer.bos_token_id) & (attention_mask == 1)).sum(-1)
            if not torch.all(bos == 1):
                raise ValueError(f"Every row must carry exactly one BOS token; counts per row: {bos.tolist()}.")
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        placeholders = [self.processor.video_token_id, self.processor.image_token_id]
        labels = labels.masked_fill(torch.isin(input_ids, torch.tensor(placeholders)), -100)
        if self.assistant_only_loss:
            labels = labels.masked_fill(batch.pop("assistant_masks") == 0, -100)
        batch["labels"] = labels
        return dict(batch)
