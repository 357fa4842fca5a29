"""Deterministic multiple-choice evaluation: EgoSchema, NExT-QA, MVBench, EgoPlan (the authors' `test_q.json` /
`test_a.json` files) and Video-MME (its public parquet / JSON layout).

    videollamb-hf eval egoschema --questions test_q.json --answers test_a.json --video-root DIR --model M
    accelerate launch --num_processes 4 -m videollamb_hf.evaluation nextqa --questions ... (sharded by rank)

Protocol (the original's, `llava/eval/model_videoqa_mc.py`): the question, a newline, one `"{letter}. {option}\\n"`
per option in order, then "Answer with the option's letter from the given choices directly.", with the video first,
in the `llava_v1` template; 16 frames (EgoSchema, EgoPlan) or 8 (NExT-QA, MVBench), uniform sampling; questions
and answers paired by list position (their ids must agree). Ours is deterministic by default (greedy, no flip);
`--original-protocol` samples at temperature 0.2 with a fixed seed and scores with their extraction
(`output.split('.')[0]`), so both numbers can be shown side by side. Every question gets one JSONL record, flushed
as it is produced (`--resume` continues a stopped run); missing videos are recorded and counted, never skipped
silently.
"""

import argparse
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


LETTERS = "ABCDE"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
BENCHMARKS = {
    "egoschema": {"num_frames": 16, "family": None},
    "nextqa": {"num_frames": 8, "family": "first_letter"},  # C causal, T temporal, D descriptive
    "mvbench": {"num_frames": 8, "family": "type"},  # its 20 task types
    "egoplan": {"num_frames": 16, "family": None},
    "videomme": {"num_frames": 16, "family": "type"},
}
FAMILY_NAMES = {"C": "causal", "T": "temporal", "D": "descriptive"}


@dataclass
class Question:
    id: str
    video_name: str
    question: str
    options: list[str]
    answer: int | None
    type: str | None = None
    extra: dict = field(default_factory=dict)


def _read(path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def load_questions(benchmark: str, questions, answers=None) -> list[Question]:
    """The questions of a benchmark file pair (or a Video-MME parquet / JSON file), paired by position.

    Raises:
        `ValueError` when the answer file's ids do not agree with the question file's (position by position) or
        the lengths differ; `KeyError` for an unknown benchmark.
    """
    if benchmark not in BENCHMARKS:
        raise KeyError(f"Unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}.")
    if benchmark == "videomme":
        return _load_videomme(questions)
    rows = _read(questions)
    gold = _read(answers) if answers is not None else [{} for _ in rows]
    if len(gold) != len(rows):
        raise ValueError(f"{questions} has {len(rows)} questions but {answers} has {len(gold)} answers.")
    loaded = []
    for index, (row, answer) in enumerate(zip(rows, gold)):
        if answer and str(answer.get("question_id")) != str(row["question_id"]):
            raise ValueError(
                f"Question {index}: id {row['question_id']!r} in {questions} but {answer.get('question_id')!r} in "
                f"{answers} (the files are paired by position)."
            )
        options = list(row["option"].values())
        kind = answer.get("type", row.get("type"))
        extra = {k: v for k, v in row.items() if k not in ("video_name", "question_id", "question", "option", "type")}
        loaded.append(Question(str(row["question_id"]), str(row["video_name"]), row["question"], options,
                               answer.get("answer"), kind, extra))  # fmt: skip
    return loaded


def _load_videomme(path) -> list[Question]:
    from datasets import load_dataset

    kind = "parquet" if str(path).endswith(".parquet") else "json"
    rows = load_dataset(kind, data_files=str(path), split="train")
    loaded = []
    for index, row in enumerate(rows):
        options = [re.sub(r"^[A-E]\.\s*", "", o) for o in row["options"]]
        answer = LETTERS.index(row["answer"].strip()) if row.get("answer") else None
        qid = row.get("question_id") or f"{row['videoID']}-{index}"
        extra = {k: row[k] for k in ("duration", "domain") if k in row}
        loaded.append(Question(str(qid), str(row["videoID"]), row["question"], options, answer,
                               row.get("task_type"), extra))  # fmt: skip
    return loaded


def build_prompt(question: Question) -> str:
    """The original's question text (the video placeholder is added by the chat template)."""
    text = question.question + "\n"
    for letter, option in zip(LETTERS, question.options):
        text += f"{letter}. {option}\n"
    return text + INSTRUCTION


# -- answer extraction --------------------------------------------------------------------------------------------

_RULES = [
    ("letter", r"^\s*\(?([A-E])\)?\s*[.:)]?\s*$"),
    ("leading letter", r"^\s*\(?([A-E])\)?\s*[.:)]\s*\S"),
    ("leading letter", r"^\s*\(?([A-E])\s+\S"),
    ("answer is", r"(?:answer|option|choice)\s*(?:is|:)?\s*[:\-]?\s*\(?([A-E])\)?(?![A-Za-z])"),
    ("parenthesised letter", r"\(([A-E])\)"),
]


def extract_answer(output: str, options: list[str]) -> tuple[str | None, str]:
    """The letter a model's answer names, and which rule found it: `A`, `A.`, `(A)`, `A) text`, `The answer is A`,
    or the text of exactly one option. `(None, "unparseable")` otherwise."""
    text = output.strip()
    letters = LETTERS[: len(options)]
    for rule, pattern in _RULES:
        match = re.search(pattern, text, flags=re.IGNORECASE if rule == "answer is" else 0)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper(), rule
    lowered = text.lower().rstrip(".")
    hits = [letters[i] for i, option in enumerate(options) if option and option.lower().rstrip(".") in lowered]
    if len(hits) == 1:
        return hits[0], "option text"
    return None, "unparseable"


def original_extraction(output: str) -> str:
    """The authors' scoring: `output.split('.')[0]` compared (stripped of '.') with the letter."""
    return output.split(".")[0].strip(".")


# -- videos -------------------------------------------------------------------------------------------------------


def find_video(root, name: str, video_map: dict | None = None) -> str | None:
    """The file (or folder of frames, MVBench) for `name` under `root`: as given, or with a video suffix."""
    if video_map and name in video_map:
        return str(video_map[name])
    base = Path(root) / name
    if base.exists():
        return str(base)
    for suffix in VIDEO_SUFFIXES:
        if base.with_name(base.name + suffix).exists():
            return str(base.with_name(base.name + suffix))
    return None


def _frames_from_folder(folder: str):
    import numpy as np
    from PIL import Image

    names = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not names:
        raise ValueError(f"The frame folder {folder} holds no .jpg/.png frames.")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in names])


# -- running ------------------------------------------------------------------------------------------------------


def _letter_ids(tokenizer) -> list[int]:
    """Token ids of the letters as the first answer token after `ASSISTANT:` (sentencepiece's `▁A`)."""
    ids = []
    for letter in LETTERS:
        token = tokenizer.convert_tokens_to_ids("▁" + letter)
        if token is None or token == tokenizer.unk_token_id:
            token = tokenizer(letter, add_special_tokens=False)["input_ids"][-1]
        ids.append(token)
    return ids


def prepare_inputs(processor, question: Question, video, settings: dict) -> dict:
    """Decode, sample and tokenize one question (CPU work; runs in DataLoader workers when asked)."""
    prompt = build_prompt(question)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    frames = _frames_from_folder(video) if os.path.isdir(video) else video
    inputs = processor(text=text, videos=[frames], num_frames=settings["num_frames"], return_tensors="pt")
    return dict(inputs)


def run_model(model, processor, question: Question, inputs: dict, settings: dict) -> dict:
    """The model's output (or its letter likelihoods) for one prepared question, and the extracted letter."""
    return run_model_batch(model, processor, [question], [inputs], settings)[0]


def collate(prepared: list[dict], pad_token_id: int) -> dict:
    """Several prepared questions as one batch: prompts left-padded (the model derives positions from the mask),
    videos padded to the longest with a `video_frames_mask`."""
    import torch

    width = max(p["input_ids"].shape[1] for p in prepared)
    frames = max(p["pixel_values_videos"].shape[1] for p in prepared)
    ids, masks, pixels, frame_masks = [], [], [], []
    for p in prepared:
        extra = width - p["input_ids"].shape[1]
        ids.append(torch.nn.functional.pad(p["input_ids"][0], (extra, 0), value=pad_token_id))
        masks.append(torch.nn.functional.pad(p["attention_mask"][0], (extra, 0), value=0))
        video = p["pixel_values_videos"][0]
        pixels.append(torch.nn.functional.pad(video, (0, 0, 0, 0, 0, 0, 0, frames - video.shape[0])))
        frame_masks.append(torch.arange(frames) < video.shape[0])
    batch = {
        "input_ids": torch.stack(ids),
        "attention_mask": torch.stack(masks),
        "pixel_values_videos": torch.stack(pixels),
    }
    if any(p["pixel_values_videos"].shape[1] != frames for p in prepared):
        batch["video_frames_mask"] = torch.stack(frame_masks)
    return batch


def run_model_batch(model, processor, questions: list[Question], prepared: list[dict], settings: dict) -> list[dict]:
    """The model's outputs (or letter likelihoods) for prepared questions, answered together (prompts left-padded:
    greedy and likelihood results equal one at a time), and the extracted letters."""
    import torch

    batch = {k: v.to(model.device) for k, v in collate(prepared, processor.tokenizer.pad_token_id).items()}
    records = [{"prompt": build_prompt(q), "frames": int(p["pixel_values_videos"].shape[1])}
               for q, p in zip(questions, prepared)]  # fmt: skip
    with torch.no_grad():
        if settings["mode"] == "likelihood":
            logits = model(**batch).logits[:, -1].float().log_softmax(-1)
            for row, question, record in zip(logits, questions, records):
                ids = _letter_ids(processor.tokenizer)[: len(question.options)]
                scores = [float(row[i]) for i in ids]
                record.update(output=None, letter=LETTERS[max(range(len(scores)), key=scores.__getitem__)],
                              rule="likelihood", scores=scores)  # fmt: skip
            return records
        if settings.get("vllm") is not None:  # the language model runs in vLLM, on the compact prompts
            from ..serving import prompt_embeds_from_inputs

            options = {"temperature": 0.2, "seed": settings["seed"]} if settings["original_protocol"] else {}
            results = settings["vllm"].complete_many(
                prompt_embeds_from_inputs(model, batch), settings["max_new_tokens"], **options
            )
            rows = [r["token_ids"] for r in results]
        else:
            generation = {"max_new_tokens": settings["max_new_tokens"], "do_sample": False}
            if settings["original_protocol"]:
                torch.manual_seed(settings["seed"])
                generation.update(do_sample=True, temperature=0.2)
            rows = model.generate(**batch, **generation)[:, batch["input_ids"].shape[1] :]
    for row, question, record in zip(rows, questions, records):
        output = processor.decode(row, skip_special_tokens=True).strip()
        letter, rule = extract_answer(output, question.options)
        record.update(output=output, letter=letter, rule=rule, original_letter=original_extraction(output))
    return records


def answer_question(model, processor, question: Question, video, settings: dict) -> dict:
    """One question end to end (decode + model)."""
    return run_model(model, processor, question, prepare_inputs(processor, question, video, settings), settings)


class _PreparedQuestions:
    """Map-style dataset for a DataLoader: decoding and tokenizing happen in its workers, the model in the main
    process, so the accelerator does not wait on PyAV."""

    def __init__(self, processor, questions, video_root, video_map, settings):
        self.processor, self.questions = processor, questions
        self.video_root, self.video_map, self.settings = video_root, video_map, settings

    def __len__(self):
        return len(self.questions)

    def __getitem__(self, index):
        question = self.questions[index]
        video = find_video(self.video_root, question.video_name, self.video_map)
        if video is None:
            return index, "missing", None
        try:
            return index, "ok", prepare_inputs(self.processor, question, video, self.settings)
        except (ValueError, FileNotFoundError, OSError) as error:
            return index, "unreadable", str(error)


def _read_jsonl(path) -> list[dict]:
    if not Path(path).exists():
        return []
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(Path(path).read_text(encoding="utf-8").splitlines()):
                break  # a record cut by an interruption: redone
            raise ValueError(f"{path}: line {number} is not JSON; the predictions file is damaged.") from None
    return records


def evaluate(model, processor, benchmark: str, questions: list[Question], video_root, output_dir,
             num_frames: int | None = None, mode: str = "generate", original_protocol: bool = False,
             max_new_tokens: int = 16, seed: int = 0, resume: bool = False, rank: int = 0, world_size: int = 1,
             video_map: dict | None = None, progress: bool = True, num_workers: int = 0,
             batch_size: int = 1, vllm=None) -> Path:  # fmt: skip
    """Answer this rank's share of `questions` (every `world_size`-th, from `rank`), one JSONL record each, flushed
    as produced; with `num_workers`, videos are decoded in DataLoader worker processes while the model runs;
    `batch_size` questions are answered per model call (prompts left-padded; greedy results are the same).
    `vllm`: a `serving.VLLMClient`: generation runs in vLLM on the compact prompt embeddings (this process
    encodes); likelihood mode stays on `model`. Returns the rank's predictions file."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {"benchmark": benchmark, "num_frames": num_frames or BENCHMARKS[benchmark]["num_frames"], "mode": mode,
                "original_protocol": original_protocol, "max_new_tokens": max_new_tokens, "seed": seed,
                "vllm": vllm if mode == "generate" else None}  # fmt: skip
    shard = questions[rank::world_size]
    path = output_dir / (f"predictions.rank{rank}.jsonl" if world_size > 1 else "predictions.jsonl")
    done = {}
    if resume:
        by_id = {q.id: q for q in shard}
        for record in _read_jsonl(path):
            question = by_id.get(record["id"])
            if question is None or (record.get("prompt") and record["prompt"] != build_prompt(question)):
                raise ValueError(f"{path} holds a record ({record['id']!r}) that is not this run's: not resuming.")
            done[record["id"]] = record
        path.write_text("".join(json.dumps(done[q.id]) + "\n" for q in shard if q.id in done))
    elif path.exists():
        path.unlink()
    from tqdm.auto import tqdm

    todo = [q for q in shard if q.id not in done]
    prepared = _PreparedQuestions(processor, todo, video_root, video_map, settings)
    if num_workers:
        import torch

        items = torch.utils.data.DataLoader(prepared, batch_size=None, num_workers=num_workers, collate_fn=lambda x: x,
                                            prefetch_factor=2)  # fmt: skip
    else:
        items = (prepared[i] for i in range(len(prepared)))

    def chunks():
        chunk = []
        for item in items:
            chunk.append(item)
            if len(chunk) == batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    with open(path, "a", encoding="utf-8") as file:
        started = time.perf_counter()
        bar = tqdm(total=len(todo), desc=f"{benchmark} rank {rank}", disable=not progress, file=sys.stderr)
        for chunk in chunks():
            ok = [(index, payload) for index, status, payload in chunk if status == "ok"]
            results = (
                run_model_batch(model, processor, [todo[i] for i, _ in ok], [p for _, p in ok], settings) if ok else []
            )
            by_index = {i: r for (i, _), r in zip(ok, results)}
            now = time.perf_counter()
            for index, status, payload in chunk:
                question = todo[index]
                record = {"id": question.id, "video": question.video_name, "answer": question.answer,
                          "type": question.type, "status": status, "prompt": build_prompt(question)}  # fmt: skip
                if status == "ok":
                    record.update(by_index[index])
                elif status == "unreadable":  # recorded and counted, never skipped silently
                    record["error"] = payload
                gold = LETTERS[question.answer] if question.answer is not None else None
                record.setdefault("letter", None)
                record["correct"] = record["letter"] is not None and record["letter"] == gold
                if "original_letter" in record:
                    record["correct_original"] = record["original_letter"] == gold
                record["seconds"] = round((now - started) / len(chunk), 4)
                file.write(json.dumps(record) + "\n")
            file.flush()
            started = now
            bar.update(len(chunk))
        bar.close()
    saved = {k: v for k, v in settings.items() if k != "vllm"}
    saved["backend"] = f"vllm ({vllm.url})" if settings["vllm"] is not None else "transformers"
    (output_dir / "settings.json").write_text(json.dumps(saved, indent=2))
    return path


def merge_and_report(benchmark: str, questions: list[Question], output_dir, world_size: int = 1,
                     max_missing_fraction: float = 0.0) -> dict:  # fmt: skip
    """Merge the ranks' records in question order and write `report.json` + `report.md`. Raises `RuntimeError`
    when more than `max_missing_fraction` of the videos were missing or unreadable."""
    output_dir = Path(output_dir)
    if world_size > 1:
        records = {}
        for rank in range(world_size):
            for record in _read_jsonl(output_dir / f"predictions.rank{rank}.jsonl"):
                records[record["id"]] = record
        ordered = [records[q.id] for q in questions if q.id in records]
        (output_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ordered))
    records = _read_jsonl(output_dir / "predictions.jsonl")
    report = build_report(benchmark, records, len(questions))
    report["settings"] = (
        json.loads((output_dir / "settings.json").read_text()) if (output_dir / "settings.json").exists() else {}
    )
    (output_dir / "report.json").write_text(json.dumps(report, indent=2))
    (output_dir / "report.md").write_text(report_markdown(report))
    missing = report["missing"] + report["unreadable"]
    if report["total"] and missing / report["total"] > max_missing_fraction:
        raise RuntimeError(
            f"{missing} of {report['total']} videos were missing or unreadable (more than {max_missing_fraction:.0%}); "
            f"see {output_dir / 'predictions.jsonl'} (status 'missing' / 'unreadable')."
        )
    return report


def _family(benchmark: str, kind: str | None) -> str | None:
    rule = BENCHMARKS[benchmark]["family"]
    if rule is None or not kind:
        return None
    if rule == "first_letter":
        return FAMILY_NAMES.get(kind[0], kind[0])
    return kind


def build_report(benchmark: str, records: list[dict], total: int) -> dict:
    """Accuracy over all questions (a missing video counts as wrong), over the answered ones, per family/type."""
    answered = [r for r in records if r.get("status") == "ok"]
    report = {
        "benchmark": benchmark,
        "total": total,
        "recorded": len(records),
        "answered": len(answered),
        "missing": sum(r.get("status") == "missing" for r in records),
        "unreadable": sum(r.get("status") == "unreadable" for r in records),
        "unparseable": sum(r.get("status") == "ok" and r.get("letter") is None for r in records),
        "correct": sum(bool(r.get("correct")) for r in records),
    }
    report["accuracy"] = round(100 * report["correct"] / total, 2) if total else 0.0
    report["accuracy_answered"] = round(100 * report["correct"] / len(answered), 2) if answered else 0.0
    if any("correct_original" in r for r in answered):
        report["accuracy_original_extraction"] = round(
            100 * sum(bool(r.get("correct_original")) for r in answered) / total, 2
        )
    rules = {}
    for r in answered:
        rules[r.get("rule")] = rules.get(r.get("rule"), 0) + 1
    report["extraction_rules"] = rules
    families = {}
    for r in records:
        family = _family(benchmark, r.get("type"))
        if family is not None:
            entry = families.setdefault(family, {"total": 0, "correct": 0})
            entry["total"] += 1
            entry["correct"] += bool(r.get("correct"))
    for entry in families.values():
        entry["accuracy"] = round(100 * entry["correct"] / entry["total"], 2)
    report["per_family"] = dict(sorted(families.items()))
    return report


def report_markdown(report: dict) -> str:
    lines = [f"# {report['benchmark']}", "", "| | |", "|---|---|"]
    for key in ("total", "answered", "missing", "unreadable", "unparseable", "correct", "accuracy",
                "accuracy_answered", "accuracy_original_extraction"):  # fmt: skip
        if key in report:
            lines.append(f"| {key} | {report[key]} |")
    if report.get("per_family"):
        lines += ["", "| family / type | questions | accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {v['total']} | {v['accuracy']} |" for k, v in report["per_family"].items()]
    lines += ["", "Settings: `" + json.dumps(report.get("settings", {})) + "`", ""]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------------------


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="videollamb-hf eval", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("benchmark", choices=list(BENCHMARKS))
    parser.add_argument("--questions", required=True, help="test_q.json (Video-MME: its parquet / JSON file)")
    parser.add_argument("--answers", help="test_a.json (not for Video-MME)")
    parser.add_argument("--video-root", required=True)
    parser.add_argument("--video-map", help="JSON {video_name: path}, overriding the lookup under --video-root")
    parser.add_argument("--model", default="ColorfulAI/VideoLLaMB")
    parser.add_argument(
        "--num-frames", type=int, default=None, help="default: 16 EgoSchema/EgoPlan, 8 NExT-QA/MVBench"
    )
    parser.add_argument("--limit", type=int, default=None, help="the first K questions only")
    parser.add_argument("--output-dir", default=None, help="default: eval-BENCH")
    parser.add_argument("--mode", choices=["generate", "likelihood"], default="generate")
    parser.add_argument("--original-protocol", action="store_true", help="sampling T=0.2 with --seed, their scoring")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-missing-fraction", type=float, default=0.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers decoding videos (default: 2 with a GPU, 0 = inline on CPU, where "
                        "workers only compete with the model for the same cores)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1, help="questions per model call")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                        help="where the language model generates (vllm: a server serving `export-lm`'s folder)")  # fmt: skip
    parser.add_argument("--vllm-url", help="with --backend vllm: the vLLM server's URL")
    parser.add_argument("--quiet", action="store_true")
    return parser


@contextlib.contextmanager
def ranks_leave_together(state):
    """Around what rank 0 does after the shards are written (merging, reporting): every rank waits for the others
    on entry and again on exit, then the process group is destroyed. A rank that tears the group down while another
    is still working can hang gloo's teardown (the race pytorch/pytorch#75097 describes)."""
    state.wait_for_everyone()
    try:
        yield
    finally:
        state.wait_for_everyone()
        state.destroy_process_group()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import videollamb_hf  # noqa: F401

    if args.backend == "vllm" and not args.vllm_url:
        print("videollamb-hf eval: error: --backend vllm needs --vllm-url.", file=sys.stderr)
        return 2
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only: gloo across the launched processes
    try:
        questions = load_questions(args.benchmark, args.questions, args.answers)
    except (ValueError, KeyError, OSError) as error:
        print(f"videollamb-hf eval: error: {error}", file=sys.stderr)
        return 2
    if args.limit:
        questions = questions[: args.limit]
    output_dir = Path(args.output_dir or f"eval-{args.benchmark}")
    video_map = json.loads(Path(args.video_map).read_text()) if args.video_map else None
    device = args.device or (f"cuda:{state.local_process_index}" if torch.cuda.is_available() else "cpu")
    try:
        processor = AutoProcessor.from_pretrained(args.model)
        dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as error:
        print(f"videollamb-hf eval: error: cannot load {args.model!r} ({str(error).splitlines()[0]}); pass --model "
              "with a local folder.", file=sys.stderr)  # fmt: skip
        return 2
    vllm = None
    if args.backend == "vllm":
        from ..serving import VLLMClient

        if args.mode == "likelihood":
            print("videollamb-hf eval: likelihood scoring stays on the transformers backend (it reads the letters' "
                  "log-probabilities, which vLLM's API gives only for its top-k tokens).", file=sys.stderr)  # fmt: skip
        vllm = VLLMClient(args.vllm_url)
    try:
        evaluate(model, processor, args.benchmark, questions, args.video_root, output_dir, num_frames=args.num_frames,
                 mode=args.mode, original_protocol=args.original_protocol, max_new_tokens=args.max_new_tokens,
                 seed=args.seed, resume=args.resume, rank=state.process_index, world_size=state.num_processes,
                 video_map=video_map, progress=not args.quiet,
                 num_workers=args.num_workers if args.num_workers is not None else (2 if torch.cuda.is_available() else 0),
                 batch_size=args.batch_size, vllm=vllm)  # fmt: skip
    except ConnectionError as error:  # the vLLM server went away: what was answered is kept (--resume)
        print(f"videollamb-hf eval: error: {error}", file=sys.stderr)
        return 1
    with ranks_leave_together(state):
        if not state.is_main_process:
            return 0
        try:
            report = merge_and_report(
                args.benchmark, questions, output_dir, state.num_processes, args.max_missing_fraction
            )
        except RuntimeError as error:
            print(f"videollamb-hf eval: error: {error}", file=sys.stderr)
            return 1
    print(json.dumps({k: report[k] for k in ("benchmark", "total", "answered", "missing", "unparseable", "accuracy")}))
    return 0


__all__ = ["BENCHMARKS", "Question", "build_prompt", "evaluate", "extract_answer", "load_questions", "main",
           "merge_and_report", "original_extraction", "ranks_leave_together"]  # fmt: skip
