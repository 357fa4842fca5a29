"""Plain `transformers.Trainer` with `VideoLlambDataCollator` (and `VideoLlambTrainer` for the recurrent loss):
the batch it builds, and the same per-step losses as `videollamb-hf sft` on the same rows, seed and batch."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import VIDEOS, run_launched
from transformers import AutoModelForImageTextToText, AutoProcessor

from videollamb_hf import sft
from videollamb_hf.testing_utils import save_tiny_repo
from videollamb_hf.training import VideoLlambDataCollator, cpu_launch_defaults


ROOT = Path(__file__).resolve().parents[1]


def chat_row(video, answer, question="What happens in the video?"):
    content = [{"type": "text", "text": question}]
    if video is not None:
        content.insert(0, {"type": "video", "path": str(video)})
    return {"messages": [{"role": "user", "content": content},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}  # fmt: skip


ROWS = [chat_row(VIDEOS / "dance.mp4", "People are dancing."),
        chat_row(VIDEOS / "sample_demo_1.mp4", "A baby reads a book.", "Who is in the video?"),
        chat_row(VIDEOS / "sample_demo_3.mp4", "Hands arrange pepper slices."),
        chat_row(VIDEOS / "dance.mp4", "A dance.", "Describe the video in a few words, please.")]  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return save_tiny_repo(tmp_path_factory.mktemp("trainer-model"))


def test_collator_labels_only_the_assistant_turns_with_one_bos(repo):
    processor = AutoProcessor.from_pretrained(repo)
    rows = [ROWS[0], chat_row(None, "Yes, it is a long answer here.", "Is this a question with no video?")]
    batch = VideoLlambDataCollator(processor)(rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape and batch["pixel_values_videos"].shape[0] == 1
    tokenizer = processor.tokenizer
    assert ((ids == tokenizer.bos_token_id) & (mask == 1)).sum(-1).tolist() == [1, 1]
    assert (mask[0] == 0).any() or (mask[1] == 0).any()  # the rows have different lengths: padding on the right
    for row, (row_ids, row_labels, row_mask) in zip(rows, zip(ids, labels, mask)):
        assert torch.all(row_labels[row_mask == 0] == -100)
        placeholders = (row_ids == processor.video_token_id) | (row_ids == processor.image_token_id)
        assert torch.all(row_labels[placeholders] == -100)
        kept = tokenizer.decode(row_ids[row_labels != -100])
        assert kept == row["messages"][1]["content"][0]["text"] + tokenizer.eos_token  # the answer and its EOS
    # The same tensors as TRL's vision collator with assistant-only loss (what `videollamb-hf sft` trains on).
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    trl_batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(
        [dict(row, images=[]) for row in rows]
    )
    for key in ("input_ids", "attention_mask", "labels", "pixel_values_videos"):
        assert torch.equal(batch[key], trl_batch[key]), key


def test_collator_without_assistant_only_still_masks_placeholders_and_padding(repo):
    processor = AutoProcessor.from_pretrained(repo)
    batch = VideoLlambDataCollator(processor, assistant_only_loss=False)(ROWS[:2])
    ids, labels = batch["input_ids"], batch["labels"]
    placeholder = ids == processor.video_token_id
    assert placeholder.any() and torch.all(labels[placeholder] == -100)
    assert torch.equal(labels[~placeholder & (batch["attention_mask"] == 1)],
                       ids[~placeholder & (batch["attention_mask"] == 1)])  # fmt: skip


def test_collator_says_what_to_do_when_the_trainer_dropped_the_messages(repo):
    processor = AutoProcessor.from_pretrained(repo)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        VideoLlambDataCollator(processor)([{"input_ids": [1, 2]}])


def test_cpu_launch_defaults(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert cpu_launch_defaults(set()) == {"bf16": False}
    assert cpu_launch_defaults({"bf16"}) == {}
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cpu_launch_defaults(set()) == {"bf16": False, "ddp_backend": "gloo"}
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="--use_cpu turns deepspeed off"):
        cpu_launch_defaults({"use_cpu"})


STEPS = 4


def _trainer_losses(repo, out, recurrent):
    """Plain `Trainer` (or `VideoLlambTrainer` for the recurrent loss) with the collator, in this process."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from videollamb_hf import training

    processor = AutoProcessor.from_pretrained(repo)
    model = AutoModelForImageTextToText.from_pretrained(repo, recurrent_loss=recurrent)
    args = TrainingArguments(str(out), per_device_train_batch_size=2, max_steps=STEPS, learning_rate=1e-3,
                             logging_steps=1, save_strategy="no", report_to="none", seed=0, use_cpu=True,
                             activation_checkpointing=True, remove_unused_columns=False)  # fmt: skip
    trainer_class = training.VideoLlambTrainer if recurrent else Trainer
    trainer = trainer_class(model, args, train_dataset=Dataset.from_list(ROWS),
                            data_collator=VideoLlambDataCollator(processor))  # fmt: skip
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("recurrent", [False, True], ids=["standard", "recurrent"])
def test_trainer_with_the_collator_gives_the_sft_losses(repo, tmp_path, recurrent):
    data = tmp_path / "rows.jsonl"
    sft.write_jsonl([dict(row, images=[]) for row in ROWS], data)
    out = tmp_path / "sft"
    command = [sys.executable, "-m", "videollamb_hf.sft", "--model_name_or_path", repo, "--dataset_name", str(data),
               "--output_dir", str(out), "--per_device_train_batch_size", "2", "--max_steps", str(STEPS),
               "--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
               "--seed", "0", "--use_cpu", "--gradient_checkpointing", *(["--recurrent_loss"] if recurrent else [])]  # fmt: skip
    run = run_launched(command, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    want = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    got = _trainer_losses(repo, tmp_path / "trainer", recurrent)
    assert len(got) == len(want) == STEPS
    worst = max(abs(g - w) / abs(w) for g, w in zip(got, want))
    assert worst <= 1e-5, f"Trainer {got} vs videollamb-hf sft {want}"
