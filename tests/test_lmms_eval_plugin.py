"""The lmms-eval plugin: found through lmms-eval's entry-point registry; `generate_until` and `loglikelihood`
answer hand-built requests; lmms-eval's own command line (`python -m lmms_eval`, one process and
`accelerate launch` with two) scores local generate-until and multiple-choice tasks over the shared clips with the
pipeline's answers. lmms-eval is no dependency (it would replace torch and PyAV): `.ci/run` installs it with
`scripts/install_lmms_eval.sh`; without it these tests are skipped with that reason."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import VIDEOS, run_launched

from videollamb_hf.testing_utils import save_tiny_repo


lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval not installed (bash scripts/install_lmms_eval.sh)")

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What happens in the video?\nA. dancing\nB. sleeping\nAnswer with the option's letter from the given choices directly."


def _option_loss(processor, model, video, question, option):
    """The mean negative log-likelihood per token of `option` after the chat prompt, computed here by hand."""
    messages = [{"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=f"{prompt} {option}", videos=[video], num_frames=8, return_tensors="pt")
    prompt_length = processor(text=prompt, videos=[video], num_frames=8)["input_ids"].shape[1]
    with torch.no_grad():
        logprobs = model(**inputs).logits[0].log_softmax(-1)
    ids = inputs["input_ids"][0]
    return -sum(float(logprobs[i - 1, ids[i]]) for i in range(prompt_length, ids.shape[0])) / (
        len(ids) - prompt_length
    )


def _pipeline_answer(pipe, video, question, max_new_tokens=5):
    answer = pipe(video, question, max_new_tokens=max_new_tokens, return_full_text=False,
                  processor_kwargs={"num_frames": 8})[0]["generated_text"]  # fmt: skip
    return answer.split("\n\n")[0].strip()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    from lmms_eval.models import get_model

    cls = get_model("videollamb")  # through the `lmms_eval.models` entry point in setup.cfg
    model = cls(pretrained=save_tiny_repo(tmp_path_factory.mktemp("lmms")), num_frames=8, device="cpu")
    model.task_dict = {"toy": {"test": {0: {"video": str(VIDEOS / "dance.mp4")}}}}
    return model


def _request(kind, second):
    from lmms_eval.api.instance import Instance

    return Instance(kind, (QUESTION, second, lambda doc: [doc["video"]], 0, "toy", "test"), 0,
                    {"task": "toy", "doc_id": 0, "repeats": 1})  # fmt: skip


def test_registry_finds_the_plugin():
    from lmms_eval.models import get_model

    from videollamb_hf.evaluation.lmms_eval_plugin import VideoLlambLmms

    assert get_model("videollamb") is VideoLlambLmms and get_model("videollamb_hf") is VideoLlambLmms


def test_one_process_takes_rank_0_of_1_and_the_given_device(plugin):
    assert (plugin.rank, plugin.world_size, plugin.device) == (0, 1, torch.device("cpu"))
    assert plugin.accelerator.num_processes == 1 and plugin.model.device == torch.device("cpu")


class _SecondOfTwoProcesses:
    """What `Accelerator()` is in the second of two GPU processes; its device is `meta` here, so that the test
    can tell it from the CPU default (a model moves there without memory)."""

    process_index, local_process_index, num_processes, device = 1, 1, 2, torch.device("meta")


@pytest.mark.parametrize("device", [None, "cuda"])
def test_under_a_launch_each_process_takes_accelerates_rank_and_device(plugin, monkeypatch, device):
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", _SecondOfTwoProcesses)
    model = type(plugin)(pretrained=plugin.model.name_or_path, num_frames=8, device=device)
    assert (model.rank, model.world_size, model.device) == (1, 2, torch.device("meta"))
    assert model.model.device == torch.device("meta") and isinstance(model.accelerator, _SecondOfTwoProcesses)


def test_generate_until_equals_the_pipeline_answer(plugin):
    from transformers import pipeline

    (answer,) = plugin.generate_until([_request("generate_until", {"max_new_tokens": 5, "until": ["\n\n"]})])
    pipe = pipeline("video-text-to-text", model=plugin.model, processor=plugin.processor)
    assert answer == _pipeline_answer(pipe, str(VIDEOS / "dance.mp4"), QUESTION)


def test_loglikelihood_is_the_continuations_loss(plugin):
    from lmms_eval.api.instance import unwrap_generation_output

    results = plugin.loglikelihood([_request("loglikelihood", "A"), _request("loglikelihood", "B")])
    (loss, greedy), (other, _) = results
    expected = _option_loss(plugin.processor, plugin.model, str(VIDEOS / "dance.mp4"), QUESTION, "A")
    assert loss == pytest.approx(expected, abs=1e-4) and loss > 0 and other != loss
    assert isinstance(greedy, bool)
    # lmms-eval 0.7.3's evaluator stringifies a bare (float, bool) tuple; ours reaches the task as the tuple.
    assert unwrap_generation_output((loss, greedy))[0] == str((loss, greedy))
    assert unwrap_generation_output(results[0])[0] == (loss, greedy)


# -- lmms-eval's own command line ----------------------------------------------------------------------------------

LIMIT = 5
CHOICES = ["yes", "no"]
GENERATE_TASK = """task: videollamb_toy_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: video
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 5
  until: ["\\n\\n"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
CHOICE_TASK = """task: videollamb_toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: video
doc_to_text: "{{{{question}}}}"
doc_to_choice: {choices}
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    """A tiny model whose answers differ between prompts (weights drawn wider than the default), 6 questions about
    the shared clips (the CLI runs the first 5), and what the pipeline and a hand-computed loss say about each.
    Targets: the pipeline's answer / the likeliest option on even rows, something else on odd rows."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    root = tmp_path_factory.mktemp("lmms_cli")
    repo = save_tiny_repo(root / "model", text={"initializer_range": 0.3}, initializer_range=0.3)
    processor, model = AutoProcessor.from_pretrained(repo), AutoModelForImageTextToText.from_pretrained(repo).eval()
    pipe = pipeline("video-text-to-text", model=model, processor=processor)
    videos = [str(VIDEOS / name) for name in ("dance.mp4", "readingsky.mp4", "sample_demo_1.mp4", "sample_demo_3.mp4",
                                              "sample_demo_9.mp4", "dance.mp4")]  # fmt: skip
    questions = ["What happens in the video?", "Who is in the video?", "Describe the scene.",
                 "What colour dominates?", "Is it indoors?", "What is moving?"]  # fmt: skip
    rows = []
    for i, (video, question) in enumerate(zip(videos, questions)):
        answer = _pipeline_answer(pipe, video, question)
        losses = [_option_loss(processor, model, video, question, option) for option in CHOICES]
        likeliest = min(range(len(CHOICES)), key=losses.__getitem__)
        rows.append({"video": video, "question": question, "response": answer, "losses": losses,
                     "answer": answer if i % 2 == 0 else f"not {answer}", "gold": likeliest if i % 2 == 0 else 1 - likeliest})  # fmt: skip
    assert len({row["response"] for row in rows[:LIMIT]}) >= 3, "the responses must differ to test their order"
    data = root / "questions.jsonl"
    data.write_text(
        "".join(json.dumps({k: row[k] for k in ("video", "question", "answer", "gold")}) + "\n" for row in rows)
    )
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "videollamb_toy_qa.yaml").write_text(GENERATE_TASK.format(data=data))
    (tasks / "videollamb_toy_mc.yaml").write_text(CHOICE_TASK.format(data=data, choices=json.dumps(CHOICES)))
    return {"root": root, "repo": repo, "tasks": tasks, "rows": rows[:LIMIT]}


def _run_cli(local_tasks, name, launcher=(), **env):
    out = local_tasks["root"] / name
    command = [*launcher, "-m", "lmms_eval", "--model", "videollamb", "--model_args",
               f"pretrained={local_tasks['repo']},num_frames=8", "--tasks", "videollamb_toy_qa,videollamb_toy_mc",
               "--include_path", str(local_tasks["tasks"]), "--limit", str(LIMIT), "--output_path", str(out),
               "--log_samples", "--verbosity", "INFO"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(local_tasks["root"] / f"{name}_datasets"), **env)
    run = run_launched(command, timeout=600, env=env, cwd=local_tasks["root"])
    # lmms-eval's CLI exits 0 even when the evaluation fails: its error line and the missing results tell.
    log = run.stdout + run.stderr  # lmms-eval's log goes to stdout when it is no terminal
    assert run.returncode == 0 and "Error during evaluation" not in log, log[-4000:]
    (results,) = out.glob("*/*_results.json")
    samples = {task: [json.loads(line) for line in next(out.glob(f"*/*_samples_{task}.jsonl")).read_text().splitlines()]
               for task in ("videollamb_toy_qa", "videollamb_toy_mc")}  # fmt: skip
    return json.loads(results.read_text()), samples, log


def _check_results(local_tasks, results, samples):
    rows = local_tasks["rows"]
    for task in ("videollamb_toy_qa", "videollamb_toy_mc"):
        assert results["n-samples"][task]["effective"] == LIMIT
        assert sorted(sample["doc_id"] for sample in samples[task]) == list(range(LIMIT))
    by_doc = {sample["doc_id"]: sample for sample in samples["videollamb_toy_qa"]}
    assert [by_doc[i]["filtered_resps"] for i in range(LIMIT)] == [row["response"] for row in rows]
    exact = sum(row["answer"] == row["response"] for row in rows) / LIMIT
    assert results["results"]["videollamb_toy_qa"]["exact_match,none"] == pytest.approx(exact) and exact == 0.6
    by_doc = {sample["doc_id"]: sample for sample in samples["videollamb_toy_mc"]}
    for i, row in enumerate(rows):
        logged = [float(loss) for loss, _ in by_doc[i]["filtered_resps"]]
        assert logged == pytest.approx(row["losses"], abs=1e-4)
    accuracy = sum(row["gold"] == min(range(len(CHOICES)), key=row["losses"].__getitem__) for row in rows) / LIMIT
    assert results["results"]["videollamb_toy_mc"]["acc,none"] == pytest.approx(accuracy) and accuracy == 0.6


@pytest.fixture(scope="module")
def one_process_run(local_tasks):
    return _run_cli(local_tasks, "one_process", launcher=(sys.executable,))


def test_lmms_eval_cli_scores_local_tasks_with_the_pipeline_answers(local_tasks, one_process_run):
    results, samples, log = one_process_run
    _check_results(local_tasks, results, samples)
    assert "videollamb: process 0 of 1 on cpu" in log


def test_two_process_lmms_eval_launch_splits_the_samples_and_merges_to_the_one_process_results(
    local_tasks, one_process_run
):
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "examples" / "accelerate" / "cpu_ddp_2proc.yaml"))  # fmt: skip
    # Without GPUs accelerate's state is distributed (MULTI_CPU, gloo) only with ACCELERATE_USE_CPU=true.
    results, samples, log = _run_cli(local_tasks, "two_processes", launcher=launcher, ACCELERATE_USE_CPU="true")
    assert "videollamb: process 0 of 2 on cpu" in log and "videollamb: process 1 of 2 on cpu" in log
    _check_results(local_tasks, results, samples)
    # Gathered rank by rank: rank 0 answered documents 0, 2, 4 and rank 1 documents 1, 3.
    assert [sample["doc_id"] for sample in samples["videollamb_toy_qa"]] == [0, 2, 4, 1, 3]
    one_results, one_samples, _ = one_process_run
    merged, alone = ({task: sorted(run[task], key=lambda sample: sample["doc_id"]) for task in run}
                     for run in (samples, one_samples))  # fmt: skip
    for task in ("videollamb_toy_qa", "videollamb_toy_mc"):
        assert results["results"][task] == one_results["results"][task]
    assert [s["filtered_resps"] for s in merged["videollamb_toy_qa"]] == [
        s["filtered_resps"] for s in alone["videollamb_toy_qa"]
    ]
    # The option losses agree to rounding (each process runs its own thread count): 5e-7 seen.
    for two, one in zip(merged["videollamb_toy_mc"], alone["videollamb_toy_mc"]):
        assert [float(loss) for loss, _ in two["filtered_resps"]] == pytest.approx(
            [float(loss) for loss, _ in one["filtered_resps"]], abs=1e-5
        )
        assert [greedy for _, greedy in two["filtered_resps"]] == [greedy for _, greedy in one["filtered_resps"]]
