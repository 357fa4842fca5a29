"""Needle in a Video Haystack (MM-NIAVH, the paper's benchmark): the pieces that define the protocol.

This first part holds what the original's protocol fixes (bigai-nlco/MM-NIAVH `llm_needle_haystack_tester.py`):
the length and depth grids, the insertion point, the needles' overlays (text as white subtitles at the bottom with
the original's font-size rule, an image or a video centred) drawn with PIL + numpy on RGB frames (no moviepy, no
ImageMagick; the text font is the one Pillow ships), a haystack made of any list of videos concatenated and
repeated, the in-memory composition of the frames a model samples, and the judge's `[[rating]]` parsing with an
OpenAI-compatible client. The runner, the offline scoring modes and the heatmap report are not built yet.
"""

import json
import re
import urllib.request
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont


DEFAULT_NEEDLE_DESCRIPTION = "the young man seated on a cloud in the sky is reading a book"
DEFAULT_QUESTION = "What is the young man seated on a cloud in the sky doing? Response the young man's action only."
COMPOSE_FPS = 5  # the original writes the composed video at 5 fps


def length_grid(minimum: float = 1, maximum: float = 320, num: int = 40) -> list[int]:
    """Haystack lengths in seconds: `np.round(np.linspace(min, max, num)).astype(int)` (the original's)."""
    return np.round(np.linspace(minimum, maximum, num=num, endpoint=True)).astype(int).tolist()


def _logistic(x: float, top: float = 100, x0: float = 50, k: float = 0.1) -> float:
    # Quirk kept: the original's `L * sigmoid(-k (x - x0))` decreases between its fixed ends 0 and 100.
    if x in (0, 100):
        return x
    return float(np.round(top / (1 + np.exp(k * (x - x0))), 3))


def depth_grid(minimum: float = 0, maximum: float = 100, num: int = 12, spacing: str = "linear") -> list[float]:
    """Needle depths in percent: linear (`np.round(np.linspace(...)).astype(int)`) or the original's sigmoid."""
    if spacing == "linear":
        return np.round(np.linspace(minimum, maximum, num=num, endpoint=True)).astype(int).tolist()
    if spacing == "sigmoid":
        return [_logistic(x) for x in np.linspace(minimum, maximum, num)]
    raise ValueError(f"`spacing` must be 'linear' or 'sigmoid', got {spacing!r}.")


def insertion_point(length: float, depth_percent: float) -> int:
    """Second at which the needle starts: `int(length * depth / 100)` (the original's)."""
    return int(length * depth_percent / 100)


def text_font_size(text: str, frame_width: int, minimum: int = 10, maximum: int = 70) -> int:
    """The original's rule: measure the text at the largest size, scale to 90% of the frame width, clamp."""
    font = ImageFont.load_default(size=maximum)
    left, _, right, _ = font.getbbox(text)
    width = max(1, right - left)
    return max(min(int(maximum * frame_width * 0.9 / width), maximum), minimum)


def _paste_centred(frame: np.ndarray, picture: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    ph, pw = picture.shape[:2]
    if ph > height or pw > width:  # larger than the frame: fit inside, keeping the aspect ratio
        scale = min(height / ph, width / pw)
        picture = np.asarray(Image.fromarray(picture).resize((max(1, int(pw * scale)), max(1, int(ph * scale)))))
        ph, pw = picture.shape[:2]
    top, left = (height - ph) // 2, (width - pw) // 2
    out = frame.copy()
    out[top : top + ph, left : left + pw] = picture[..., :3]
    return out


@dataclass
class Needle:
    """A needle: `modality` "text" (`content` = the string), "image" or "video" (`content` = a file path).
    `duration` is 1 s for text and images and the clip's own length for videos."""

    modality: str
    content: str
    description: str = DEFAULT_NEEDLE_DESCRIPTION

    def __post_init__(self):
        if self.modality not in ("text", "image", "video"):
            raise ValueError(f"Needle modality must be 'text', 'image' or 'video', got {self.modality!r}.")
        self._image = None
        self._video = None

    @property
    def duration(self) -> float:
        if self.modality != "video":
            return 1.0
        return self._video_index()[1]

    def _video_index(self):
        if self._video is None:
            from .. import video_decoding

            reader = video_decoding.VideoReader(self.content)
            times = np.asarray(reader.index.timestamps(range(reader.index.num_frames)))
            self._video = (reader, float(reader.index.duration), times)
        return self._video[0], self._video[1], self._video[2]

    def overlay(self, frame: np.ndarray, seconds_into_needle: float) -> np.ndarray:
        """`frame` (H, W, 3 uint8) with the needle drawn as it is `seconds_into_needle` after its start."""
        if self.modality == "text":
            image = Image.fromarray(frame)
            draw = ImageDraw.Draw(image)
            font = ImageFont.load_default(size=text_font_size(self.content, frame.shape[1]))
            left, top, right, bottom = draw.textbbox((0, 0), self.content, font=font)
            x = (frame.shape[1] - (right - left)) // 2 - left
            y = frame.shape[0] - (bottom - top) - top  # "bottom", as moviepy's position
            draw.text((x, y), self.content, fill=(255, 255, 255), font=font)
            return np.asarray(image)
        if self.modality == "image":
            if self._image is None:
                self._image = np.asarray(Image.open(self.content).convert("RGB"))
            return _paste_centred(frame, self._image)
        reader, _, times = self._video_index()
        index = int(np.clip(np.searchsorted(times, seconds_into_needle, side="right") - 1, 0, len(times) - 1))
        return _paste_centred(frame, reader.get_frames([index])[0])


class Haystack:
    """Any list of videos, concatenated and repeated to any length; every frame resized to the first video's size."""

    def __init__(self, videos: list):
        from ..video_decoding import VideoReader

        if not videos:
            raise ValueError("A haystack needs at least one video.")
        self.readers = [VideoReader(v) for v in videos]
        self.times = [np.asarray(r.index.timestamps(range(r.index.num_frames))) for r in self.readers]
        self.durations = [max(float(r.index.duration), 1e-6) for r in self.readers]
        self.size = (self.readers[0].index.width, self.readers[0].index.height)

    @property
    def period(self) -> float:
        return sum(self.durations)

    def locate(self, seconds: float) -> tuple[int, int]:
        """(video, frame index) shown at `seconds` of the repeated concatenation."""
        t = seconds % self.period
        for video, duration in enumerate(self.durations):
            if t < duration:
                times = self.times[video]
                return video, int(np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 1))
            t -= duration
        return len(self.durations) - 1, len(self.times[-1]) - 1

    def frames_at(self, seconds: list[float]) -> np.ndarray:
        located = [self.locate(t) for t in seconds]
        out = [None] * len(seconds)
        for video in {v for v, _ in located}:
            wanted = [(i, f) for i, (v, f) in enumerate(located) if v == video]
            frames = self.readers[video].get_frames([f for _, f in wanted])
            for (i, _), frame in zip(wanted, frames):
                if frame.shape[1::-1] != self.size:
                    frame = np.asarray(Image.fromarray(frame).resize(self.size))
                out[i] = frame
        return np.stack(out)


def composed_times(length: float, fps: float = COMPOSE_FPS) -> np.ndarray:
    """Times of the frames of the composed video (the original writes it at 5 fps; its length stays `length`)."""
    return np.arange(int(round(length * fps))) / fps


def compose(haystack: Haystack, needle: Needle, length: float, depth_percent: float, indices=None) -> np.ndarray:
    """Frames of the composed video (all of them, or only `indices` of the 5 fps stream: what a model samples),
    the needle overlaid from `insertion_point` for its duration; the total length stays `length`."""
    times = composed_times(length)
    if indices is not None:
        times = times[np.asarray(indices, dtype=int)]
    frames = haystack.frames_at(times.tolist())
    start = insertion_point(length, depth_percent)
    for k, t in enumerate(times):
        if start <= t < start + needle.duration:
            frames[k] = needle.overlay(frames[k], t - start)
    return frames


# -- the judge ------------------------------------------------------------------------------------------------------

JUDGE_CRITERIA = """Score 1: The answer is completely unrelated to the reference.
Score 3: The answer has minor relevance but does not align with the reference.
Score 5: The answer has moderate relevance but contains inaccuracies.
Score 7: The answer aligns with the reference but has minor omissions.
Score 10: The answer is completely accurate and aligns perfectly with the reference.
Only respond with a numberical score"""


def judge_prompt(question: str, answer: str, reference: str) -> str:
    """The original's rubric in LangChain's `labeled_score_string` form (the reply ends with `[[rating]]`)."""
    return ("[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an "
            "AI assistant to the user question displayed below. For this evaluation, you should primarily consider "
            f"the following criteria:\naccuracy:{JUDGE_CRITERIA}\n[Ground truth]\n{reference}\nBegin your evaluation "
            "by providing a short explanation. Be as objective as possible. After providing your explanation, you must "
            'rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: '
            f'"Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Assistant\'s Answer]\n{answer}\n'
            "[The End of Assistant's Answer]")  # fmt: skip


def parse_rating(reply: str) -> float | None:
    """The `[[n]]` rating of a judge's reply (1-10), or None when it has none (reported as unparseable)."""
    match = re.search(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", reply or "")
    if not match:
        return None
    value = float(match.group(1))
    return value if 1 <= value <= 10 else None


def judge(question: str, answer: str, reference: str, base_url: str, model: str, api_key: str | None = None,
          timeout: float = 60.0) -> dict:  # fmt: skip
    """Ask an OpenAI-compatible chat-completions endpoint for the 1-10 score. Returns `{"score", "reply"}`; the
    score is None when the reply holds no `[[rating]]`."""
    body = {"model": model, "temperature": 0,
            "messages": [{"role": "user", "content": judge_prompt(question, answer, reference)}]}  # fmt: skip
    request = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())["choices"][0]["message"]["content"]
    return {"score": parse_rating(reply), "reply": reply}


# -- runner ---------------------------------------------------------------------------------------------------

DISTRACTORS = ["a dog is running along a beach", "a woman is playing the piano on a stage",
               "two children are riding bicycles in a park"]  # fmt: skip


def sample_indices(length: float, video_processor) -> np.ndarray:
    """Indices into the composed 5 fps stream of the frames the model's processor samples (its fps rule when it
    has an `fps`, else its frame count), as it would from the composed file."""
    from ..video_processing_videollamb import frames_for_fps, round_up_to_group, uniform_indices

    total = len(composed_times(length))
    group = getattr(video_processor, "temporal_group_size", 1)
    if getattr(video_processor, "fps", None):
        count = frames_for_fps(total / COMPOSE_FPS, video_processor.fps, video_processor.max_frames, group)
    else:
        count = round_up_to_group(video_processor.num_frames, group)
    return uniform_indices(0, total, count)


def multiple_choice(description: str, seed: int, distractors=DISTRACTORS) -> tuple[list[str], int]:
    """The needle's description and three distractors in a seeded order; returns (options, index of the needle)."""
    rng = np.random.default_rng(seed)
    options = [description, *distractors[:3]]
    order = rng.permutation(len(options)).tolist()
    return [options[i] for i in order], order.index(0)


def run_grid(pipe, haystack: Haystack, needle: Needle, lengths, depths, output, scoring: str = "multiple_choice",
             question: str = DEFAULT_QUESTION, seed: int = 0, resume: bool = False, max_new_tokens: int = 16,
             judge_kwargs: dict | None = None, progress: bool = True):  # fmt: skip
    """One JSONL record per (length, depth) cell: length, depth, modality, question, answer, score, seconds, frames.
    `scoring`: "multiple_choice" (the needle among 3 distractors, order seeded per cell; score 1/0 by the letter),
    "recall" (text needles: 1 if the needle string is in the answer) or "judge" (`judge(**judge_kwargs)`, 1-10)."""
    import time
    from pathlib import Path

    from tqdm.auto import tqdm

    from .benchmarks import LETTERS, Question, build_prompt, extract_answer

    if scoring == "recall" and needle.modality != "text":
        raise ValueError("Exact-string recall scores text needles only; use multiple_choice or judge.")
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if resume and path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a record cut by an interruption: redone
            done.add((record["length"], record["depth"]))
        kept = [line for line in path.read_text().splitlines() if _whole(line)]
        path.write_text("".join(line + "\n" for line in kept))
    elif path.exists():
        path.unlink()
    cells = [(int(length), float(depth)) for length in lengths for depth in depths]
    with open(path, "a", encoding="utf-8") as file:
        for length, depth in tqdm(cells, desc="cells", disable=not progress):
            if (length, depth) in done:
                continue
            started = time.perf_counter()
            indices = sample_indices(length, pipe.processor.video_processor)
            frames = compose(haystack, needle, length, depth, indices=indices)
            record = {"length": length, "depth": depth, "modality": needle.modality, "frames": len(frames),
                      "insertion_s": insertion_point(length, depth)}  # fmt: skip
            text = question
            if scoring == "multiple_choice":
                options, answer = multiple_choice(
                    needle.description, seed=seed * 1_000_003 + length * 1009 + int(depth * 1000)
                )
                text = build_prompt(Question("", "", question, options, answer))
                record.update(options=options, gold=LETTERS[answer])
            result = pipe(frames, text, max_new_tokens=max_new_tokens, return_full_text=False,
                          processor_kwargs={"num_frames": len(frames)})  # fmt: skip
            output_text = result[0]["generated_text"]
            record.update(question=text, answer=output_text)
            if scoring == "multiple_choice":
                letter, rule = extract_answer(output_text, options)
                record.update(letter=letter, rule=rule, score=float(letter == record["gold"]))
            elif scoring == "recall":
                record["score"] = float(needle.content.lower() in output_text.lower())
            else:
                verdict = judge(question, output_text, needle.description, **(judge_kwargs or {}))
                record.update(score=verdict["score"], judge_reply=verdict["reply"])
            record["seconds"] = round(time.perf_counter() - started, 4)
            file.write(json.dumps(record) + "\n")
            file.flush()
    return path


def _whole(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def heatmap(records: list[dict], png, pdf=None, title: str = "Needle in a Video Haystack") -> dict:
    """The depth (y) x length (x) grid of mean scores, in the original's colour map; returns the summary
    (mean overall and per modality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    lengths = sorted({r["length"] for r in records})
    depths = sorted({r["depth"] for r in records})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for i, depth in enumerate(depths):
        for j, length in enumerate(lengths):
            scores = [
                r["score"] for r in records if r["length"] == length and r["depth"] == depth and r["score"] is not None
            ]
            if scores:
                grid[i, j] = float(np.mean(scores))
    colours = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    figure, axis = plt.subplots(figsize=(max(6, len(lengths) * 0.5), max(4, len(depths) * 0.4)))
    image = axis.imshow(grid, cmap=colours, aspect="auto", origin="upper")
    axis.set_xticks(range(len(lengths)), [str(v) for v in lengths], rotation=45)
    axis.set_yticks(range(len(depths)), [f"{v:g}" for v in depths])
    axis.set_xlabel("Haystack length (s)")
    axis.set_ylabel("Needle depth (%)")
    scored = [r["score"] for r in records if r["score"] is not None]
    mean = float(np.mean(scored)) if scored else float("nan")
    axis.set_title(f"{title} (mean {mean:.2f})")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    if pdf is not None:
        figure.savefig(pdf)
    plt.close(figure)
    per_modality = {}
    for r in records:
        if r["score"] is not None:
            per_modality.setdefault(r["modality"], []).append(r["score"])
    return {
        "mean": mean,
        "per_modality": {k: float(np.mean(v)) for k, v in per_modality.items()},
        "cells": len(records),
    }


def _grid(text: str | None, default: list) -> list:
    """`"a,b,n"` (a linspace of n values, rounded) or `"x y z"` / `"x;y;z"` (explicit values)."""
    if not text:
        return default
    parts = [p for p in re.split(r"[\s;]+", text.strip()) if p]
    if len(parts) == 1 and parts[0].count(",") == 2:
        low, high, num = (float(v) for v in parts[0].split(","))
        return np.round(np.linspace(low, high, int(num))).astype(int).tolist()
    return [float(p) for part in parts for p in part.split(",") if p]


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="videollamb-hf niavh", description="Needle in a Video Haystack (MM-NIAVH).")
    parser.add_argument(
        "--model", default="ColorfulAI/VideoLLaMB", help="any model the video-text-to-text pipeline runs"
    )
    parser.add_argument("--haystack", nargs="+", required=True, help="videos, concatenated and repeated")
    parser.add_argument("--needle-modality", choices=["text", "image", "video"], default="image")
    parser.add_argument("--needle", required=True, help="the text, or an image / video file")
    parser.add_argument("--needle-description", default=DEFAULT_NEEDLE_DESCRIPTION)
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument(
        "--lengths", default=None, help='"1,320,40" (the default: a rounded linspace) or explicit "60 120"'
    )
    parser.add_argument("--depths", default=None, help='"0,100,12" (default) or explicit "0 50 100"')
    parser.add_argument("--depth-spacing", choices=["linear", "sigmoid"], default="linear")
    parser.add_argument("--scoring", choices=["multiple_choice", "recall", "judge"], default="multiple_choice")
    parser.add_argument("--judge-url", help="an OpenAI-compatible endpoint (key in $NIAVH_JUDGE_API_KEY)")
    parser.add_argument("--judge-model", default="gpt-3.5-turbo")
    parser.add_argument("--output-dir", default="niavh")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None) -> int:
    import os
    import sys
    from pathlib import Path

    from transformers import pipeline

    import videollamb_hf  # noqa: F401

    args = build_parser().parse_args(argv)
    if args.scoring == "judge" and not args.judge_url:
        print("videollamb-hf niavh: error: --scoring judge needs --judge-url (an OpenAI-compatible endpoint).",
              file=sys.stderr)  # fmt: skip
        return 2
    lengths = _grid(args.lengths, length_grid())
    default_depths = depth_grid(spacing=args.depth_spacing)
    depths = _grid(args.depths, default_depths) if args.depths else default_depths
    try:
        pipe = pipeline("video-text-to-text", model=args.model)
        haystack = Haystack(args.haystack)
    except (OSError, ValueError) as error:
        print(f"videollamb-hf niavh: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    needle = Needle(args.needle_modality, args.needle, args.needle_description)
    output = Path(args.output_dir)
    judge_kwargs = {"base_url": args.judge_url, "model": args.judge_model,
                    "api_key": os.environ.get("NIAVH_JUDGE_API_KEY")} if args.scoring == "judge" else None  # fmt: skip
    path = run_grid(pipe, haystack, needle, lengths, depths, output / "cells.jsonl", scoring=args.scoring,
                    question=args.question, seed=args.seed, resume=args.resume, max_new_tokens=args.max_new_tokens,
                    judge_kwargs=judge_kwargs, progress=not args.quiet)  # fmt: skip
    records = [json.loads(line) for line in path.read_text().splitlines()]
    summary = heatmap(records, output / "heatmap.png", output / "heatmap.pdf")
    summary["settings"] = {k: v for k, v in vars(args).items() if k != "quiet"}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    (output / "summary.md").write_text(
        f"# Needle in a Video Haystack\n\n{len(records)} cells ({len(lengths)} lengths x {len(depths)} depths), "
        f"{args.needle_modality} needle, scoring {args.scoring}: mean score **{summary['mean']:.3f}**.\n\n"
        + "".join(f"- {k}: {v:.3f}\n" for k, v in summary["per_modality"].items())
        + "\n![heatmap](heatmap.png)\n"
    )
    print(json.dumps({k: summary[k] for k in ("mean", "per_modality", "cells")}))
    return 0


__all__ = ["Haystack", "Needle", "compose", "composed_times", "depth_grid", "insertion_point", "judge",
           "judge_prompt", "length_grid", "parse_rating", "text_font_size", "run_grid", "heatmap", "multiple_choice",
           "sample_indices"]  # fmt: skip
