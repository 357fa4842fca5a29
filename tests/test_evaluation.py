"""Multiple-choice evaluation: the shared benchmark files, the original's prompts, answer extraction, JSONL
bookkeeping, resume, missing videos, sharding across processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED, VIDEOS, run_launched
from transformers import AutoModelForImageTextToText, AutoProcessor

from videollamb_hf.evaluation import build_prompt, evaluate, extract_answer, load_questions, original_extraction
from videollamb_hf.evaluation.benchmarks import build_report, merge_and_report
from videollamb_hf.testing_utils import save_tiny_repo


DATA = SHARED / "data" / "benchmarks"
FILES = {"egoschema": "egoschema", "nextqa": "next", "mvbench": "mvbench", "egoplan": "egoplan"}
CLIPS = ["sample_demo_1.mp4", "dance.mp4", "sample_demo_3.mp4", "sample_demo_9.mp4"]
ROOT = Path(__file__).resolve().parents[1]


def files(benchmark):
    folder = DATA / FILES[benchmark]
    return folder / "test_q.json", folder / "test_a.json"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return save_tiny_repo(tmp_path_factory.mktemp("eval-model"))


@pytest.fixture(scope="module")
def model_and_processor(repo):
    return AutoModelForImageTextToText.from_pretrained(repo), AutoProcessor.from_pretrained(repo)


def clip_map(questions):
    return {q.video_name: str(VIDEOS / CLIPS[i % len(CLIPS)]) for i, q in enumerate(questions)}


@pytest.mark.parametrize("bench,count", [("egoschema", 500), ("nextqa", 4996), ("mvbench", 4000), ("egoplan", 923)])
def test_shared_question_files_load_and_agree_with_their_answers(bench, count):
    questions = load_questions(bench, *files(bench))
    assert len(questions) == count
    answers = json.loads(files(bench)[1].read_text())
    assert [q.id for q in questions] == [str(a["question_id"]) for a in answers]
    assert all(q.answer is not None and 0 <= q.answer < len(q.options) for q in questions)


def test_mismatched_answer_files_are_refused(tmp_path):
    questions, answers = files("egoschema")
    rows = json.loads(answers.read_text())
    rows[0], rows[1] = rows[1], rows[0]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="paired by position"):
        load_questions("egoschema", questions, tmp_path / "a.json")


def test_prompts_equal_the_originals_construction():
    egoschema = load_questions("egoschema", *files("egoschema"))[0]
    assert build_prompt(egoschema) == (
        "Taking into account all the actions performed by c, what can you deduce about the primary objective and "
        "focus within the video content?\nA. C is cooking.\nB. C is doing laundry.\nC. C is cleaning the kitchen.\n"
        "D. C is cleaning dishes.\nE. C is cleaning the bathroom.\n"
        "Answer with the option's letter from the given choices directly."
    )
    nextqa = load_questions("nextqa", *files("nextqa"))[0]
    assert build_prompt(nextqa) == (
        "how do the two man play the instrument\nA. roll the handle\nB. tap their feet\nC. strum the string\n"
        "D. hit with sticks\nE. pat with hand\nAnswer with the option's letter from the given choices directly."
    )
    mvbench = load_questions("mvbench", *files("mvbench"))[0]
    assert build_prompt(mvbench) == (
        "What happened after the person took the food?\nA. Ate the medicine.\nB. Tidied up the blanket.\n"
        "C. Put down the cup/glass/bottle.\nD. Took the box.\n"
        "Answer with the option's letter from the given choices directly."
    )


@pytest.mark.parametrize(
    "output,letter,rule",
    [
        ("A", "A", "letter"), ("B.", "B", "letter"), ("(C)", "C", "letter"), ("  d  ", None, "unparseable"),
        ("D) hit with sticks", "D", "leading letter"), ("E. pat with hand", "E", "leading letter"),
        ("B tap their feet", "B", "leading letter"), ("The answer is C.", "C", "answer is"),
        ("Answer: (A)", "A", "answer is"), ("I think the correct option is B", "B", "answer is"),
        ("They strum the string.", "C", "option text"), ("Probably (E), since the hands pat.", "E", "parenthesised letter"),
        ("I cannot tell.", None, "unparseable"), ("", None, "unparseable"), ("F.", None, "unparseable"),
    ],
)  # fmt: skip
def test_answer_extraction_rules(output, letter, rule):
    options = ["roll the handle", "tap their feet", "strum the string", "hit with sticks", "pat with hand"]
    assert extract_answer(output, options) == (letter, rule)


def test_original_extraction_is_theirs():
    assert original_extraction("A. roll the handle") == "A"
    assert original_extraction("(A) roll") == "(A) roll"  # counted wrong by their script
    assert original_extraction("The answer is A.") == "The answer is A"


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("bench", list(FILES))
def test_ten_questions_write_jsonl_and_a_report_recomputed_from_it(bench, model_and_processor, tmp_path):
    model, processor = model_and_processor
    questions = load_questions(bench, *files(bench))[:10]
    video_map = clip_map(questions)
    del video_map[questions[3].video_name]  # one missing video: counted, not skipped
    for mode in ("generate", "likelihood"):
        out = tmp_path / mode
        path = evaluate(model, processor, bench, questions, tmp_path / "no-videos", out, mode=mode,
                        max_new_tokens=3, video_map=video_map, progress=False)  # fmt: skip
        records = _records(path)
        assert [r["id"] for r in records] == [q.id for q in questions]
        assert records[3]["status"] == "missing" and records[3]["correct"] is False
        with pytest.raises(RuntimeError, match="1 of 10 videos"):
            merge_and_report(bench, questions, out)
        report = merge_and_report(bench, questions, out, max_missing_fraction=0.2)
        gold = {q.id: "ABCDE"[q.answer] for q in questions}
        correct = sum(r["letter"] == gold[r["id"]] for r in records if r["status"] == "ok")
        assert report["correct"] == correct and report["accuracy"] == round(100 * correct / 10, 2)
        assert (report["answered"], report["missing"], report["total"]) == (9, 1, 10)
        assert report["settings"]["num_frames"] == (16 if bench in ("egoschema", "egoplan") else 8)
        assert all(r["frames"] == report["settings"]["num_frames"] for r in records if r["status"] == "ok")
        if mode == "likelihood":
            assert report["unparseable"] == 0 and all(len(r["scores"]) == len(q.options)
                                                      for r, q in zip(records, questions) if r["status"] == "ok")  # fmt: skip
        assert json.loads((out / "report.json").read_text())["correct"] == correct
        assert "| accuracy |" in (out / "report.md").read_text()
    if bench == "nextqa":
        assert set(report["per_family"]) <= {"causal", "temporal", "descriptive"}
        assert sum(f["total"] for f in report["per_family"].values()) == 10
    if bench == "mvbench":
        assert set(report["per_family"]) == {q.type for q in questions}


def test_resume_after_an_interruption_gives_the_same_report(model_and_processor, tmp_path):
    model, processor = model_and_processor
    questions = load_questions("egoschema", *files("egoschema"))[:8]
    kwargs = dict(max_new_tokens=3, video_map=clip_map(questions), progress=False)
    full = tmp_path / "full"
    evaluate(model, processor, "egoschema", questions, VIDEOS, full, **kwargs)
    expected = merge_and_report("egoschema", questions, full)
    stopped = tmp_path / "stopped"
    path = evaluate(model, processor, "egoschema", questions, VIDEOS, stopped, **kwargs)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])  # stopped mid-record
    evaluate(model, processor, "egoschema", questions, VIDEOS, stopped, resume=True, **kwargs)
    report = merge_and_report("egoschema", questions, stopped)
    drop = ("seconds",)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]  # noqa: E731
    assert strip(_records(stopped / "predictions.jsonl")) == strip(_records(full / "predictions.jsonl"))
    assert {k: v for k, v in report.items() if k != "settings"} == {
        k: v for k, v in expected.items() if k != "settings"
    }
    # A file from another run is refused, not mixed in.
    other = load_questions("nextqa", *files("nextqa"))[:8]
    with pytest.raises(ValueError, match="not this run's"):
        evaluate(model, processor, "nextqa", other, VIDEOS, stopped, resume=True, **kwargs)


def test_report_counts_unparseable_and_families():
    records = [{"id": "1", "status": "ok", "letter": "A", "correct": True, "type": "CW", "rule": "letter"},
               {"id": "2", "status": "ok", "letter": None, "correct": False, "type": "TN", "rule": "unparseable"},
               {"id": "3", "status": "missing", "letter": None, "correct": False, "type": "DC"}]  # fmt: skip
    report = build_report("nextqa", records, 3)
    assert (report["correct"], report["unparseable"], report["missing"], report["accuracy"]) == (1, 1, 1, 33.33)
    assert report["per_family"] == {"causal": {"total": 1, "correct": 1, "accuracy": 100.0},
                                    "descriptive": {"total": 1, "correct": 0, "accuracy": 0.0},
                                    "temporal": {"total": 1, "correct": 0, "accuracy": 0.0}}  # fmt: skip


def test_videomme_layout_loads(tmp_path):
    rows = [{"videoID": "abc", "question_id": "001-1", "question": "What color?", "options": ["A. red", "B. blue",
             "C. green", "D. black"], "answer": "B", "duration": "short", "domain": "Knowledge",
             "task_type": "Counting Problem"}]  # fmt: skip
    path = tmp_path / "videomme.json"
    path.write_text(json.dumps(rows))
    (question,) = load_questions("videomme", path)
    assert (question.id, question.options, question.answer, question.type) == (
        "001-1",
        ["red", "blue", "green", "black"],
        1,
        "Counting Problem",
    )
    assert question.extra == {"duration": "short", "domain": "Knowledge"}


def test_two_processes_give_the_same_results_as_one(repo, tmp_path):
    questions, answers = files("mvbench")
    video_map = tmp_path / "map.json"
    video_map.write_text(json.dumps(clip_map(load_questions("mvbench", questions, answers)[:6])))
    common = ["mvbench", "--questions", str(questions), "--answers", str(answers), "--video-root", str(tmp_path),
              "--video-map", str(video_map), "--model", repo, "--limit", "6", "--max-new-tokens", "3", "--quiet"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    one = subprocess.run([sys.executable, "-m", "videollamb_hf.evaluation", *common, "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_launched([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                        str(ROOT / "examples" / "accelerate" / "cpu_ddp_2proc.yaml"), "-m", "videollamb_hf.evaluation",
                        *common, "--output-dir", str(tmp_path / "two")], env=env, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "predictions.rank1.jsonl").exists()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(tmp_path / "two" / "predictions.jsonl")) == strip(
        _records(tmp_path / "one" / "predictions.jsonl")
    )
    one_report = json.loads((tmp_path / "one" / "report.json").read_text())
    two_report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert one_report == two_report
    missing = subprocess.run([sys.executable, "-m", "videollamb_hf.evaluation", *common[:6], str(tmp_path / "none"),
                              *common[9:], "--output-dir", str(tmp_path / "miss")],
                             capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert missing.returncode == 1 and "6 of 6 videos were missing" in missing.stderr


def test_decode_workers_give_the_same_records(model_and_processor, tmp_path):
    model, processor = model_and_processor
    questions = load_questions("egoplan", *files("egoplan"))[:6]
    kwargs = dict(max_new_tokens=3, video_map=clip_map(questions), progress=False)
    inline = evaluate(model, processor, "egoplan", questions, VIDEOS, tmp_path / "inline", num_workers=0, **kwargs)
    workers = evaluate(model, processor, "egoplan", questions, VIDEOS, tmp_path / "workers", num_workers=2, **kwargs)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(_records(workers)) == strip(_records(inline))


@pytest.mark.parametrize("mode", ["generate", "likelihood"])
def test_batched_answers_equal_one_at_a_time(model_and_processor, tmp_path, mode):
    model, processor = model_and_processor
    questions = load_questions("mvbench", *files("mvbench"))[:7]  # 4 or 5 options: ragged prompt lengths
    kwargs = dict(max_new_tokens=3, video_map=clip_map(questions), progress=False, mode=mode)
    single = evaluate(model, processor, "mvbench", questions, VIDEOS, tmp_path / "one", batch_size=1, **kwargs)
    batched = evaluate(model, processor, "mvbench", questions, VIDEOS, tmp_path / "three", batch_size=3, **kwargs)
    a, b = _records(single), _records(batched)
    for one, many in zip(a, b):
        assert {k: v for k, v in one.items() if k not in ("seconds", "scores")} == {
            k: v for k, v in many.items() if k not in ("seconds", "scores")
        }
        if mode == "likelihood":
            assert one["scores"] == pytest.approx(many["scores"], abs=1e-4)


def test_original_protocol_is_seeded_and_scored_their_way(model_and_processor, tmp_path):
    model, processor = model_and_processor
    questions = load_questions("egoschema", *files("egoschema"))[:4]
    kwargs = dict(max_new_tokens=4, video_map=clip_map(questions), progress=False, original_protocol=True, seed=7)
    first = _records(evaluate(model, processor, "egoschema", questions, VIDEOS, tmp_path / "a", **kwargs))
    second = _records(evaluate(model, processor, "egoschema", questions, VIDEOS, tmp_path / "b", **kwargs))
    assert [r["output"] for r in first] == [r["output"] for r in second]  # T=0.2 sampling with a fixed seed
    assert all(r["original_letter"] == original_extraction(r["output"]) for r in first)
    report = merge_and_report("egoschema", questions, tmp_path / "a")
    assert "accuracy_original_extraction" in report and report["settings"]["original_protocol"] is True
