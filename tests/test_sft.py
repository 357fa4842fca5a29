"""Fine-tuning through TRL's own SFT script (`python -m videollamb_hf.sft`), on the tiny model and shared clips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VIDEOS, run_launched
from transformers import AutoModelForImageTextToText, AutoProcessor

from videollamb_hf import sft
from videollamb_hf.testing_utils import save_tiny_repo


ANSWERS = {"sample_demo_1.mp4": "A baby reads a book.", "dance.mp4": "People are dancing.",
           "sample_demo_3.mp4": "Hands arrange pepper slices."}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def chat_row(video, answer, question="What happens in the video?"):
    return {"messages": [{"role": "user", "content": [{"type": "video", "path": str(video)},
                                                      {"type": "text", "text": question}]},
                         {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
            "images": []}  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return save_tiny_repo(tmp_path_factory.mktemp("sft-model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft-data") / "train.jsonl"
    sft.write_jsonl([chat_row(VIDEOS / v, a) for v, a in ANSWERS.items()], path)
    return str(path)


def _args(repo, data, out, *extra, steps=30):
    return ["--model_name_or_path", repo, "--dataset_name", data, "--output_dir", str(out),
            "--per_device_train_batch_size", "1", "--max_steps", str(steps), "--learning_rate", "1e-3",
            "--use_cpu", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
            *extra]  # fmt: skip


def _losses(out) -> list[float]:
    state = json.loads(sorted(Path(out).rglob("trainer_state.json"))[-1].read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def _logits(folder, processor):
    model = AutoModelForImageTextToText.from_pretrained(folder)
    chat = chat_row(VIDEOS / "dance.mp4", "People are dancing.")["messages"]
    inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_thirty_steps_lower_the_loss_and_change_the_model(repo, data, tmp_path):
    out = tmp_path / "out"
    assert sft.main(_args(repo, data, out, "--save_strategy", "steps", "--save_steps", "30")) == 0
    losses = _losses(out)
    assert len(losses) == 30
    early, late = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert late < early - 0.3, (early, late)  # a clear margin
    processor = AutoProcessor.from_pretrained(repo)
    before, after = _logits(repo, processor), _logits(str(out), processor)
    assert not torch.allclose(before, after)
    # The towers stayed frozen: identical weights after training.
    trained = AutoModelForImageTextToText.from_pretrained(str(out)).state_dict()
    original = AutoModelForImageTextToText.from_pretrained(repo).state_dict()
    assert all(torch.equal(trained[k], original[k]) for k in original if "_tower." in k)
    assert not all(torch.equal(trained[k], original[k]) for k in original if "memory_bridge." in k)


def test_assistant_only_loss_masks_the_prompt_and_the_visual_slots(repo, data):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    processor = AutoProcessor.from_pretrained(repo)
    collator = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True, max_length=4096)
    batch = collator([chat_row(VIDEOS / "dance.mp4", "People are dancing.")])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    trained = ids[labels != -100]
    assert processor.decode(trained) == "People are dancing.</s>"  # the answer and its end-of-turn token only
    assert not (labels[ids == processor.video_token_id] != -100).any()
    assert ids[0] == processor.tokenizer.bos_token_id and (ids == processor.tokenizer.bos_token_id).sum() == 1
    assert "pixel_values_videos" in batch


def test_guards_against_trl_defaults_that_would_train_wrong(repo, data, tmp_path, caplog):
    with pytest.raises(ValueError, match="--max_length 100 is shorter than the longest example"):
        sft.main(_args(repo, data, tmp_path / "a", "--max_length", "100", steps=1))
    bad = tmp_path / "bad.jsonl"
    sft.write_jsonl([chat_row(VIDEOS / "dance.mp4", "x"), chat_row(tmp_path / "missing.mp4", "y")], bad)
    with pytest.raises(sft.BadRecordsError, match="1 of 2 records"):
        sft.main(_args(repo, str(bad), tmp_path / "c", steps=1))


def test_a_placeholder_without_pixels_is_refused(repo):
    model = AutoModelForImageTextToText.from_pretrained(repo)
    processor = AutoProcessor.from_pretrained(repo)
    ids, _ = processor._tokenize_prompt("USER: <video>\nWhat? ASSISTANT: x</s>", add_special_tokens=True)
    with pytest.raises(ValueError, match="placeholder"):
        model(input_ids=torch.tensor([ids]))


def test_llava_json_converter_reports_and_skips_bad_records(tmp_path):
    records = [
        {"id": "a", "video": "sample_demo_1.mp4",
         "conversations": [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "A baby reads."}]},
        {"id": "b", "image": "readingsky.png",
         "conversations": [{"from": "human", "value": "<image>\nWho is there?"}, {"from": "gpt", "value": "A man."}]},
        {"id": "c", "video": "no_such_clip.mp4",
         "conversations": [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "?"}]},
    ]  # fmt: skip
    source = tmp_path / "llava.json"
    source.write_text(json.dumps(records))
    with pytest.raises(sft.BadRecordsError, match="1 of 3"):
        sft.convert_llava_json(source, VIDEOS)
    rows, bad = sft.convert_llava_json(source, VIDEOS, tmp_path / "out.jsonl", max_bad_fraction=0.5)
    assert [i for i, _ in bad] == [2] and "missing" in bad[0][1]
    assert rows[0]["messages"][0]["content"][0] == {"type": "video", "path": str(VIDEOS / "sample_demo_1.mp4")}
    assert rows[0]["messages"][0]["content"][1] == {"type": "text", "text": "What happens?"}
    assert rows[1]["images"] == [str(VIDEOS / "readingsky.png")] and rows[1]["messages"][1]["role"] == "assistant"
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
    run = subprocess.run([sys.executable, "-m", "videollamb_hf.sft", "convert-llava", str(source), "--media-root",
                          str(VIDEOS), "--output", str(tmp_path / "cli.jsonl")], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 2 and "1 of 3" in run.stderr


def test_lora_adapter_saves_loads_and_merges(repo, data, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    regex = r".*language_model.*\.(q_proj|v_proj)"
    assert sft.main(_args(repo, data, out, "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules",
                          regex, steps=5)) == 0  # fmt: skip
    assert (out / "adapter_config.json").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["target_modules"] == regex  # the language model only, not the towers' or the bridge's q/k/v
    processor = AutoProcessor.from_pretrained(repo)
    base = AutoModelForImageTextToText.from_pretrained(repo)
    peft_model = PeftModel.from_pretrained(base, str(out))
    lora_modules = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert lora_modules and all("language_model" in n for n in lora_modules)
    chat = chat_row(VIDEOS / "dance.mp4", "People are dancing.")["messages"]
    inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        with_adapter = peft_model(**inputs).logits
        merged = peft_model.merge_and_unload()(**inputs).logits
    torch.testing.assert_close(merged, with_adapter, rtol=0, atol=1e-5)
    assert not torch.allclose(with_adapter, _logits(repo, processor))


def test_resume_from_a_checkpoint_continues(repo, data, tmp_path):
    # A constant learning rate, so that a 3-step run is the first half of the 6-step one.
    straight = tmp_path / "straight"
    sft.main(_args(repo, data, straight, "--save_strategy", "steps", "--save_steps", "6", "--lr_scheduler_type",
                   "constant", steps=6))  # fmt: skip
    interrupted = tmp_path / "interrupted"
    every_3 = ("--save_strategy", "steps", "--save_steps", "3", "--lr_scheduler_type", "constant")
    sft.main(_args(repo, data, interrupted, *every_3, steps=3))
    sft.main(_args(repo, data, interrupted, *every_3, "--resume_from_checkpoint", str(interrupted / "checkpoint-3"),
                   steps=6))  # fmt: skip
    log = json.loads((interrupted / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    resumed = [e for e in log if "loss" in e]
    assert [e["step"] for e in resumed] == [1, 2, 3, 4, 5, 6]  # the same steps, continued after step 3
    assert [round(e["loss"], 4) for e in resumed] == [round(x, 4) for x in _losses(straight / "checkpoint-6")]


def test_two_process_ddp_launch_runs(repo, data, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "examples" / "accelerate" / "cpu_ddp_2proc.yaml"), "-m", "videollamb_hf.sft",
               *_args(repo, data, out, steps=2)]  # fmt: skip
    run = run_launched(command, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "'epoch': '0.5'" in run.stdout + run.stderr  # 3 rows over 2 processes: half an epoch per step
    assert (out / "model.safetensors").exists()


SLOW_SAVE = """
import sys, time
import transformers
from videollamb_hf import sft

save = transformers.Trainer.save_model


def slow_save(self, *args, **kwargs):  # rank 0 writes slowly, as on a busy disk
    saved = save(self, *args, **kwargs)
    if self.accelerator.is_main_process:
        time.sleep(10)
    return saved


transformers.Trainer.save_model = slow_save
sys.exit(sft.main(sys.argv[1:]))
"""


def test_two_processes_exit_when_the_main_process_saves_slowly(repo, data, tmp_path):
    # The race CI once hit: TRL's script destroys the process group right after `save_model`, which only rank 0
    # does; without the barrier in our trainer's `end()` rank 1 hangs in the teardown (reproduced with this 10 s
    # delay: the launch never exits).
    script = tmp_path / "slow_save_sft.py"
    script.write_text(SLOW_SAVE)
    out = tmp_path / "slow"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "examples" / "accelerate" / "cpu_ddp_2proc.yaml"), str(script),
               *_args(repo, data, out, steps=1)]  # fmt: skip
    run = run_launched(command, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "model.safetensors").exists()


ACCELERATE_CONFIGS = ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]  # GPUs
ACCELERATE_CONFIGS += ["cpu_ddp_2proc", "cpu_deepspeed_zero2", "cpu_deepspeed_zero3", "cpu_fsdp_2proc"]  # 2 CPU ranks


@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
    assert str(config.distributed_type).split(".")[-1] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}


@pytest.mark.parametrize("name", ["full", "bridge_only", "lora", "paper"])
def test_example_sft_configs_parse_with_trls_parser(name, repo):
    from trl.scripts import sft as trl_sft

    parser = trl_sft.make_parser()
    config = ROOT / "examples" / "sft" / f"{name}.yaml"
    script, training, model, _ = parser.parse_args_and_config(
        ["--config", str(config), "--model_name_or_path", repo, "--dataset_name", "x", "--use_cpu"],
        fail_with_unknown_args=True,
    )
    assert training.assistant_only_loss
    if name == "paper":
        assert (training.learning_rate, training.lr_scheduler_type.value, training.warmup_steps) == (
            2e-5,
            "cosine",
            0.03,
        )
        assert training.max_length == 2048 and training.bf16 and training.gradient_checkpointing
    if name == "lora":
        assert model.use_peft and "language_model" in model.lora_target_modules
    if name == "bridge_only":
        assert training.model_init_kwargs == {"freeze_language_model": True}


def _recurrent_inputs(repo, frames=32):
    processor = AutoProcessor.from_pretrained(repo)
    chat = chat_row(VIDEOS / "dance.mp4", "People are dancing.")["messages"]
    inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt",
                                           processor_kwargs={"num_frames": frames})  # fmt: skip
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] - 8] = -100  # the answer's last tokens
    return inputs, labels


def test_recurrent_loss_equals_the_concatenated_per_segment_loss(repo):
    from videollamb_hf import VideoLlambVideoFeatures
    from videollamb_hf.modeling_videollamb import _pad_to
    from videollamb_hf.scene_tiling import boundaries_to_segments

    model = AutoModelForImageTextToText.from_pretrained(repo)
    inputs, labels = _recurrent_inputs(repo)
    with torch.no_grad():
        loss = model.recurrent_loss(labels=labels, **inputs)
        # By hand: the bridge loop, one language-model pass per segment, one cross-entropy over all of them.
        features = model.model.get_video_features(inputs["pixel_values_videos"])
        cls, pooled = model.model._encode_frames(model.model.video_tower, inputs["pixel_values_videos"][0])
        bridge, memory, cache, sums, counts = model.model.memory_bridge, None, None, 0.0, 0
        segments = boundaries_to_segments(features.scene_boundaries[0])
        assert len(segments) == 4  # top-3 SceneTilling: 4 recurrent steps
        for start, end in segments:
            index = torch.linspace(start, end, min(8, end - start + 1), dtype=torch.int)
            output, memory, cache = bridge.step(pooled[index].reshape(1, -1, pooled.shape[-1]), memory, cache)
            tokens = model.model.multi_modal_projector(output[0])
            step = VideoLlambVideoFeatures(visual_tokens=_pad_to(tokens, model.config.video_seq_length)[None],
                                           num_slots_used=torch.tensor([tokens.shape[0]]))  # fmt: skip
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], video_features=step,
                        labels=labels)  # fmt: skip
            n = int((labels[:, 1:] != -100).sum())
            sums, counts = sums + out.loss * n, counts + n
    torch.testing.assert_close(loss, sums / counts, rtol=1e-6, atol=1e-6)


def test_recurrent_loss_reaches_the_bridge_from_every_segment(repo):
    model = AutoModelForImageTextToText.from_pretrained(repo).train()
    model.config.recurrent_loss = True
    inputs, labels = _recurrent_inputs(repo)
    _, per_segment = model.recurrent_loss(labels=labels, return_segment_losses=True, **inputs)
    assert len(per_segment) == 4
    bridge = model.model.memory_bridge
    for s, (loss_sum, _) in enumerate(per_segment):
        model.zero_grad()
        loss_sum.backward(retain_graph=True)
        assert bridge.read_memory_emb.grad.abs().sum() > 0, s  # the initial memory feeds every segment
        retriever = bridge.retriever.cross_attention.q_proj.weight.grad
        if s == 0:  # the first segment's tokens come before any retrieval
            assert retriever is None or retriever.abs().sum() == 0
        else:  # later segments start from retrieved memories
            assert retriever is not None and retriever.abs().sum() > 0, s
    # A training path that would run the model once (TRL's backbone call) fails loudly instead of skipping it.
    with pytest.raises(RuntimeError, match="recurrent_loss"):
        model(**inputs, labels=labels)


def test_recurrent_loss_trains_through_the_entry_point(repo, data, tmp_path):
    out = tmp_path / "recurrent"
    assert sft.main(_args(repo, data, out, "--recurrent_loss", "--save_strategy", "steps", "--save_steps", "12",
                          steps=12)) == 0  # fmt: skip
    losses = _losses(out)
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert json.loads((out / "config.json").read_text())["recurrent_loss"] is True


def test_activation_checkpointing_covers_towers_bridge_and_llm():
    from transformers.modeling_layers import GradientCheckpointingLayer

    from videollamb_hf.testing_utils import get_tiny_model

    model = get_tiny_model(freeze_towers=False)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    parts = {}
    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer):
            parts.setdefault(name.split(".")[1], []).append(bool(module.gradient_checkpointing))
    assert set(parts) == {"video_tower", "image_tower", "memory_bridge", "language_model"}
    assert all(all(flags) for flags in parts.values())


def test_plain_trl_sft_trains_a_remote_code_repo(repo, data, tmp_path):
    """`trl sft` itself (TRL's CLI, this package never imported there) on a saved repo with `--trust_remote_code`,
    with the flags the README gives."""
    import shutil as _shutil

    folder = tmp_path / "data"
    folder.mkdir()
    _shutil.copy(data, folder / "train.jsonl")
    out = tmp_path / "trl-out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    trl = Path(sys.executable).with_name("trl")
    command = [str(trl) if trl.exists() else "trl", "sft", "--model_name_or_path", repo, "--trust_remote_code",
               "--dataset_name", str(folder), "--output_dir", str(out), "--assistant_only_loss", "--max_length",
               "2048", "--per_device_train_batch_size", "1", "--max_steps", "2", "--use_cpu", "--logging_steps", "1",
               "--save_strategy", "no", "--report_to", "none"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Training completed" in run.stdout + run.stderr
    assert (out / "model.safetensors").exists() and (out / "modeling_videollamb.py").exists()


def test_frame_flip_only_in_training(repo):
    model = AutoModelForImageTextToText.from_pretrained(  # no dropout: train-mode outputs comparable
        repo, train_frame_flip=True, bridge_hidden_dropout=0.0, bridge_attention_dropout=0.0
    )
    inputs, _ = _recurrent_inputs(repo, frames=16)
    pixels = inputs["pixel_values_videos"].repeat(8, 1, 1, 1, 1)  # eight copies of one video
    with torch.no_grad():
        plain = model.model.get_video_features(pixels[:1]).visual_tokens[0]
        mirrored = model.model.get_video_features(pixels[:1].flip(-1)).visual_tokens[0]
        assert all(torch.equal(t, plain) for t in model.model.get_video_features(pixels).visual_tokens)  # eval
        model.train()
        torch.manual_seed(0)
        tokens = model.model.get_video_features(pixels).visual_tokens
    kinds = ["flip" if torch.allclose(t, mirrored, atol=1e-6) else "plain" if torch.allclose(t, plain, atol=1e-6)
             else "?" for t in tokens]  # fmt: skip
    assert "?" not in kinds and 0 < kinds.count("flip") < 8


def test_bridge_only_training_leaves_the_language_model_untouched(repo, data, tmp_path):
    out = tmp_path / "bridge-only"
    assert sft.main(_args(repo, data, out, "--model_init_kwargs", '{"freeze_language_model": true}', steps=3)) == 0
    trained = AutoModelForImageTextToText.from_pretrained(str(out)).state_dict()
    original = AutoModelForImageTextToText.from_pretrained(repo).state_dict()
    frozen = [k for k in original if "language_model." in k or k.startswith("lm_head") or "_tower." in k]
    assert frozen and all(torch.equal(trained[k], original[k]) for k in frozen)
    assert not all(torch.equal(trained[k], original[k]) for k in original if "memory_bridge." in k)


def test_trainer_end_waits_for_every_process_and_leaves_the_group_to_the_entry_point():
    calls = []

    class Tracker:
        def finish(self):
            calls.append("finish")

    class Accelerator:
        trackers = [Tracker()]

        def wait_for_everyone(self):
            calls.append("barrier")

        def end_training(self):
            calls.append("destroy")

    trainer = object.__new__(sft._trainer_class())  # only `end` is exercised: no model needed
    trainer.accelerator = Accelerator()
    trainer.save_state = lambda: calls.append("save_state")  # trainer_state.json, written by the main process
    trainer.end()
    # The group is destroyed later, by `leave_together`, once the trainer and its DDP wrapper are freed.
    assert calls == ["barrier", "save_state", "finish"]
