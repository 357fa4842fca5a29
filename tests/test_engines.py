"""Training engines run for real: DeepSpeed ZeRO-2, ZeRO-3 and FSDP2, each on 2 CPU processes (gloo) through
`accelerate launch --config_file examples/accelerate/cpu_*.yaml -m videollamb_hf.sft`, against one process with
the same global batch (2 processes x 1 per device vs 1 process x 2; no gradient accumulation).

What is asserted: per-step losses equal to the one-process run's to 1e-4 relative; trainable parameters after
step 1 to 1e-5; the saved (ZeRO-3 16-bit consolidated / FSDP full state dict) model loads with `from_pretrained`,
whole, with the frozen towers bit-identical to before training and the logits of the one-process model; resume
from a mid-run checkpoint continues with the uninterrupted run's losses. `pytest -k zero2`, `-k zero3` and
`-k fsdp` select one engine's tests.

The tiny model here has the bridge's dropout at 0: dropout masks depend on how the batch is laid out over
processes (they are drawn per process), so with dropout no layout can reproduce another's losses."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import VIDEOS, run_launched
from safetensors.torch import load_file
from test_sft import chat_row

from videollamb_hf import sft
from videollamb_hf.testing_utils import save_tiny_repo


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"zero2": "cpu_deepspeed_zero2.yaml", "zero3": "cpu_deepspeed_zero3.yaml", "fsdp": "cpu_fsdp_2proc.yaml"}
MODES = {
    "full": [],
    "bridge_only": ["--model_init_kwargs", '{"freeze_language_model": true}'],
    "lora": "--use_peft --lora_r 4 --lora_alpha 8 --lora_dropout 0 --lora_target_modules".split()
    + [".*language_model.*\\.(q_proj|v_proj)"],
    "recurrent": ["--recurrent_loss"],
}
QUESTIONS = ["What happens in the video?", "Describe the video.", "What is shown?"]
ANSWERS = {"sample_demo_1.mp4": "A baby reads a book.", "dance.mp4": "People are dancing.",
           "sample_demo_3.mp4": "Hands arrange pepper slices."}  # fmt: skip
STEPS = 8
TOWERS = ("model.video_tower.", "model.image_tower.")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return save_tiny_repo(tmp_path_factory.mktemp("engines-model"), bridge_attention_dropout=0.0,
                          bridge_hidden_dropout=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = [chat_row(VIDEOS / video, answer, q) for q in QUESTIONS for video, answer in ANSWERS.items()][:8]
    path = tmp_path_factory.mktemp("engines-data") / "train.jsonl"
    sft.write_jsonl(rows, path)  # 8 rows: every global batch of 2 is full, in every layout
    return str(path)


def _args(repo, data, out, mode, per_device, *extra):
    return ["--model_name_or_path", repo, "--dataset_name", data, "--output_dir", str(out),
            "--per_device_train_batch_size", str(per_device), "--max_steps", str(STEPS), "--learning_rate", "1e-3",
            "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--report_to", "none",
            "--seed", "0", "--gradient_checkpointing", *MODES[mode], *extra]  # fmt: skip


def launch(engine, repo, data, out, mode, *extra):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "examples" / "accelerate" / CONFIGS[engine]), "-m", "videollamb_hf.sft",
               *_args(repo, data, out, mode, 1, *extra)]  # fmt: skip
    # cwd: the DeepSpeed configs name their JSON relative to the checkout, as the README runs them.
    run = run_launched(command, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-6000:]
    return run


_references = {}


def reference(repo, data, tmp_path_factory, mode):
    """One process, 2 rows a step: the run every engine must reproduce (cached per mode)."""
    if mode not in _references:
        out = tmp_path_factory.mktemp(f"reference-{mode}")
        command = [sys.executable, "-m", "videollamb_hf.sft", *_args(repo, data, out, mode, 2, "--use_cpu")]
        run = run_launched(command, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
        assert run.returncode == 0, run.stderr[-4000:]
        _references[mode] = out
    return _references[mode]


def losses(out) -> list[float]:
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def assert_losses_match(out, ref, rtol=1e-4):
    got, want = losses(out), losses(ref)
    assert len(got) == len(want) == STEPS
    worst = max(abs(g - w) / abs(w) for g, w in zip(got, want))
    assert worst <= rtol, f"per-step losses differ by {worst:.2e} relative:\n{got}\n{want}"
    return worst


def weights(folder) -> dict:
    files = sorted(Path(folder).glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    state = {}
    for file in files:
        state.update(load_file(file))
    return state


def assert_step_one_parameters_match(out, ref, initial, atol=1e-5):
    """The trainable parameters (those that changed in the one-process run) after step 1, to `atol` absolute (the
    weights are of order 0.02-1; a relative measure is meaningless for the biases that start at 0 and whose
    gradients are at rounding level, e.g. attention key biases, which the softmax ignores)."""
    got, want = weights(Path(out) / "checkpoint-1"), weights(Path(ref) / "checkpoint-1")
    assert set(got) == set(want)
    changed = [k for k in want if k not in initial or not torch.equal(want[k], initial[k])]  # adapters: all
    assert changed
    worst = max(float((got[k] - want[k]).abs().max()) for k in changed)
    assert worst <= atol, f"parameters after step 1 differ by {worst:.2e}"
    return worst


def assert_saved_model_whole(out, repo, ref):
    """`from_pretrained` loads the engine's final save strictly, with the frozen towers bit-identical to the
    untrained repo and the logits of the one-process run's final model."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    saved, initial = weights(out), weights(repo)
    assert set(saved) == set(initial), set(saved) ^ set(initial)
    for key in saved:
        assert saved[key].shape == initial[key].shape, key  # nothing partitioned
        if key.startswith(TOWERS):
            assert torch.equal(saved[key], initial[key]), key
    processor = AutoProcessor.from_pretrained(repo)
    chat = chat_row(VIDEOS / "dance.mp4", "People are dancing.", QUESTIONS[0])["messages"]
    inputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
    logits = []
    for folder in (out, ref):
        model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
        assert not any(info.values()), info
        with torch.no_grad():
            logits.append(model(**inputs).logits)
    difference = float((logits[0] - logits[1]).abs().max() / logits[1].abs().max())
    assert difference <= 1e-4, f"saved logits differ from the one-process model's by {difference:.2e}"
    return difference


def assert_resume_continues(engine, repo, data, out, resumed):
    """Resume from step 4's checkpoint (optimizer states, scheduler, every rank's RNG): steps 5-8 give the
    uninterrupted run's losses."""
    launch(engine, repo, data, resumed, "full", "--resume_from_checkpoint", str(out / "checkpoint-4"))
    state = json.loads((resumed / "trainer_state.json").read_text())
    after = [e["loss"] for e in state["log_history"] if "loss" in e and e["step"] > 4]
    assert len(after) == STEPS - 4
    difference = max(abs(a - b) / abs(b) for a, b in zip(after, losses(out)[4:]))
    assert difference <= 1e-5, (after, losses(out)[4:])
    return difference


def assert_remote_code_is_ours(folder):
    """The saved repo's remote code is this package's (FSDP2 swaps the model's class for one of torch's)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    assert (
        config["auto_map"]["AutoModelForImageTextToText"] == "modeling_videollamb.VideoLlambForConditionalGeneration"
    )
    assert (Path(folder) / "modeling_videollamb.py").exists()
    assert not list(Path(folder).glob("_fsdp*.py"))


def report(name, **figures):
    print(f"[engines] {name}: " + ", ".join(f"{k}={v:.2e}" for k, v in figures.items()))


# -- ZeRO-2 -----------------------------------------------------------------------------------------------------------


def test_zero2_full_fine_tune_matches_one_process_and_resumes(repo, data, tmp_path, tmp_path_factory):
    ref = reference(repo, data, tmp_path_factory, "full")
    out = tmp_path / "zero2"
    launch("zero2", repo, data, out, "full")
    loss_diff = assert_losses_match(out, ref)
    param_diff = assert_step_one_parameters_match(out, ref, weights(repo))
    logit_diff = assert_saved_model_whole(out, repo, ref)
    resume_diff = assert_resume_continues(engine="zero2", repo=repo, data=data, out=out, resumed=tmp_path / "again")
    report("zero2 full", loss=loss_diff, step1_params=param_diff, saved_logits=logit_diff, resume=resume_diff)


@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_lora_matches_one_process(engine, repo, data, tmp_path, tmp_path_factory):
    # Under ZeRO-3 the load (zero.Init) draws from the generator where a plain load does not: the entry point seeds
    # again right before PEFT's random adapter init, so both start from the same adapters.
    ref = reference(repo, data, tmp_path_factory, "lora")
    out = tmp_path / f"{engine}-lora"
    launch(engine, repo, data, out, "lora")
    loss_diff = assert_losses_match(out, ref)
    param_diff = assert_step_one_parameters_match(out, ref, {})
    got, want = weights(out), weights(ref)  # the adapters
    assert set(got) == set(want) and any("lora_A" in k for k in got)
    adapter_diff = max(float((got[k] - want[k]).abs().max()) for k in got)
    assert adapter_diff <= 1e-4
    report(f"{engine} lora", loss=loss_diff, step1_adapters=param_diff, final_adapters=adapter_diff)


# -- ZeRO-3 -----------------------------------------------------------------------------------------------------------


def test_zero3_full_fine_tune_saves_a_whole_consolidated_model(repo, data, tmp_path, tmp_path_factory):
    ref = reference(repo, data, tmp_path_factory, "full")
    out = tmp_path / "zero3"
    launch("zero3", repo, data, out, "full")
    loss_diff = assert_losses_match(out, ref)
    param_diff = assert_step_one_parameters_match(out, ref, weights(repo))
    logit_diff = assert_saved_model_whole(out, repo, ref)
    report("zero3 full", loss=loss_diff, step1_params=param_diff, saved_logits=logit_diff)


def test_zero3_recurrent_loss_matches_one_process(repo, data, tmp_path, tmp_path_factory):
    ref = reference(repo, data, tmp_path_factory, "recurrent")
    out = tmp_path / "zero3-recurrent"
    launch("zero3", repo, data, out, "recurrent")
    loss_diff = assert_losses_match(out, ref)
    param_diff = assert_step_one_parameters_match(out, ref, weights(repo))
    report("zero3 recurrent", loss=loss_diff, step1_params=param_diff)


# -- FSDP2 ------------------------------------------------------------------------------------------------------------


def test_fsdp_full_fine_tune_matches_one_process_and_saves_whole(repo, data, tmp_path, tmp_path_factory):
    ref = reference(repo, data, tmp_path_factory, "full")
    out = tmp_path / "fsdp"
    run = launch("fsdp", repo, data, out, "full")
    assert run.stderr.count("FSDP2 on CPU") == 2  # each rank took the FSDP plugin (else each trains alone)
    loss_diff = assert_losses_match(out, ref)
    param_diff = assert_step_one_parameters_match(out, ref, weights(repo))
    logit_diff = assert_saved_model_whole(out, repo, ref)
    assert_remote_code_is_ours(out)
    assert_remote_code_is_ours(out / "checkpoint-4")
    # FSDP2's optimizer state dict is strict: it once refused the trainable parameters that no forward uses.
    resume_diff = assert_resume_continues(engine="fsdp", repo=repo, data=data, out=out, resumed=tmp_path / "again")
    report("fsdp full", loss=loss_diff, step1_params=param_diff, saved_logits=logit_diff, resume=resume_diff)


def test_fsdp_bridge_only_matches_one_process(repo, data, tmp_path, tmp_path_factory):
    ref = reference(repo, data, tmp_path_factory, "bridge_only")
    out = tmp_path / "fsdp-bridge"
    launch("fsdp", repo, data, out, "bridge_only")
    loss_diff = assert_losses_match(out, ref)
    param_diff = assert_step_one_parameters_match(out, ref, weights(repo))
    saved, initial = weights(out), weights(repo)
    frozen = [k for k in saved if "language_model" in k or k.startswith(TOWERS)]
    assert frozen and all(torch.equal(saved[k], initial[k]) for k in frozen)  # the language model untouched
    report("fsdp bridge-only", loss=loss_diff, step1_params=param_diff)


def test_fsdp_through_plain_trainer_matches_the_sft_run(repo, data, tmp_path, tmp_path_factory):
    """The same training through `examples/trainer_sft.py` (`VideoLlambTrainer` + `VideoLlambDataCollator`, no
    TRL) under FSDP2: the one-process `videollamb-hf sft` run's losses and step-1 parameters."""
    ref = reference(repo, data, tmp_path_factory, "full")
    out = tmp_path / "fsdp-trainer"
    args = [a if a != "--dataset_name" else "--data" for a in _args(repo, data, out, "full", 1)]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "examples" / "accelerate" / CONFIGS["fsdp"]), str(ROOT / "examples" / "trainer_sft.py"),
               *args]  # fmt: skip
    run = run_launched(command, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-6000:]
    assert run.stderr.count("FSDP2 on CPU") == 2
    loss_diff = assert_losses_match(out, ref)
    param_diff = assert_step_one_parameters_match(out, ref, weights(repo))
    logit_diff = assert_saved_model_whole(out, repo, ref)
    report("fsdp full (plain Trainer)", loss=loss_diff, step1_params=param_diff, saved_logits=logit_diff)


# -- loading under the engines ----------------------------------------------------------------------------------------

LOAD_UNDER_ENGINE = r"""
import json, os, sys
import torch
from transformers import AutoModelForImageTextToText, TrainingArguments
import videollamb_hf
from videollamb_hf import training
from videollamb_hf.original_format import languagebind_tower_state

repo, video_folder, image_folder, expected_file, out = sys.argv[1:6]
rank = int(os.environ["RANK"])
# TrainingArguments under the launch set what from_pretrained reads: ZeRO-3's zero.Init, FSDP's RAM-efficient loading.
args = TrainingArguments(out, report_to="none", **training.cpu_launch_defaults(set()))
model = AutoModelForImageTextToText.from_pretrained(repo, video_tower=video_folder, image_tower=image_folder)
result = {"rank": rank}
if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
    import deepspeed

    result["partitioned"] = all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters())
    params = list(model.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params]):
        values = {name: p.detach().clone() for name, p in params}
else:
    result["loaded_on_meta"] = any(p.is_meta for p in model.parameters())
    trainer = training.VideoLlambTrainer(model=model, args=args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    model, optimizer = trainer.accelerator.prepare(model, optimizer)
    result["sharded"] = all(type(p).__name__ == "DTensor" for p in model.parameters())
    values = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
expected = torch.load(expected_file)
towers = {"model.video_tower.": languagebind_tower_state(video_folder)[0],
          "model.image_tower.": languagebind_tower_state(image_folder)[0]}
tower_diff, checked = 0.0, 0
for prefix, state in towers.items():
    for key, value in state.items():
        if prefix + key in values:
            tower_diff = max(tower_diff, float((values[prefix + key] - value).abs().max()))
            checked += 1
result.update(tower_keys=checked, tower_diff=tower_diff, keys=len(values),
              all_diff=max(float((values[k] - expected[k]).abs().max()) for k in values),
              missing=sorted(set(expected) - set(values))[:5])
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
"""


@pytest.mark.parametrize("engine", ["zero3", "fsdp"])
def test_original_layout_loads_under_the_engine_with_tower_weights_on_every_rank(engine, tmp_path):
    """An original-layout repo whose tower weights come from the LanguageBind folders, loaded as the README's
    `accelerate launch` route does: ZeRO-3's `zero.Init` (parameters partitioned as they load) and FSDP's
    `cpu_ram_efficient_loading` (ranks above 0 load on the meta device, rank 0 broadcasts when sharding)."""
    from transformers import AutoModelForImageTextToText

    from videollamb_hf.testing_utils import save_tiny_original_repo

    made = save_tiny_original_repo(tmp_path / "original", include_towers=False)
    plain = AutoModelForImageTextToText.from_pretrained(made["repo"], video_tower=made["video_tower"],
                                                        image_tower=made["image_tower"])  # fmt: skip
    expected = tmp_path / "expected.pt"
    torch.save({k: v for k, v in plain.named_parameters()}, expected)
    script = tmp_path / "load_under_engine.py"
    script.write_text(LOAD_UNDER_ENGINE)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "examples" / "accelerate" / CONFIGS[engine]), str(script), made["repo"],
               made["video_tower"], made["image_tower"], str(expected), str(out)]  # fmt: skip
    run = run_launched(command, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-6000:]
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["tower_keys"] > 20 and result["tower_diff"] == 0.0, result
        assert result["all_diff"] == 0.0 and not result["missing"], result
    if engine == "zero3":
        assert all(r["partitioned"] for r in results)  # zero.Init partitioned every parameter as it loaded
    else:
        assert [r["loaded_on_meta"] for r in results] == [False, True] and all(r["sharded"] for r in results)
