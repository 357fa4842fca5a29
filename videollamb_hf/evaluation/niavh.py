"""Needle in a Video Haystack (MM-NIAVH, the paper's benchmark), offline and repeatable.

What the original's protocol fixes (bigai-nlco/MM-NIAVH `llm_needle_haystack_tester.py`): the length and depth
grids, the insertion point, the needles' overlays (text as white subtitles at the bottom with the original's
font-size rule, an image or a video centred) drawn with PIL + numpy on RGB frames (no moviepy, no ImageMagick; the
text font is the one Pillow ships), composed at 5 fps over a haystack made of any list of videos concatenated and
repeated. A cell's composed video is either written once into a cache keyed by a hash of its inputs (lossless
FFV1, so decoding it gives the composed frames back bit for bit) or, the default, never written: only the frames
the model's processor would sample from that file are composed, in memory. `run_grid` runs any model of the
`video-text-to-text` pipeline over the (length, depth) cells (resumable JSONL, sharded over `accelerate launch`
processes), scored offline by multiple choice (letter or option likelihood) or exact recall, or by an
OpenAI-compatible judge with the original's rubric; `heatmap` draws the report.
"""

import hashlib
import json
import os
import re
import urllib.request
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

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
        """Checks the needle at once (before any model is loaded): a text must be non-empty, an image file must open
        as an image and a video file must decode.

        Raises:
            `ValueError` (a bad modality, an empty text, a file of the wrong kind or that cannot be read) or
            `FileNotFoundError` (no such file), naming the file.
        """
        if self.modality not in ("text", "image", "video"):
            raise ValueError(f"Needle modality must be 'text', 'image' or 'video', got {self.modality!r}.")
        self._image = None
        self._video = None
        if self.modality == "text":
            if not isinstance(self.content, str) or not self.content.strip():
                raise ValueError(f"The text needle is empty ({self.content!r}): give the text to insert.")
            return
        path = Path(self.content)
        if not path.is_file():
            raise FileNotFoundError(f"Needle {self.modality} file not found: {self.content}")
        if self.modality == "image":
            try:
                with Image.open(path) as image:
                    self._image = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
                raise ValueError(f"Needle image {self.content} cannot be read as an image: {error}") from None
            return
        from ..video_decoding import VideoDecodingError

        try:
            reader, _, times = self._video_index()
            if len(times) == 0:
                raise VideoDecodingError("it has no decodable frame")
            reader.get_frames([0])
        except (OSError, ValueError) as error:  # VideoDecodingError is a ValueError
            self._video = None
            raise ValueError(f"Needle video {self.content} cannot be decoded as a video: {error}") from None

    def digest(self) -> str:
        """sha256 of what defines the needle's pixels (its modality and text, or its file's bytes)."""
        content = self.content.encode() if self.modality == "text" else _file_digest(self.content).encode()
        return hashlib.sha256(self.modality.encode() + b"\0" + content).hexdigest()

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
            return _paste_centred(frame, self._image)
        reader, _, times = self._video_index()
        index = int(np.clip(np.searchsorted(times, seconds_into_needle, side="right") - 1, 0, len(times) - 1))
        return _paste_centred(frame, reader.get_frames([index])[0])


def _file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        self.videos = [str(v) for v in videos]
        self._digest = None

    def digest(self) -> str:
        """sha256 over the videos' bytes, in order (computed once)."""
        if self._digest is None:
            self._digest = hashlib.sha256("\0".join(_file_digest(v) for v in self.videos).encode()).hexdigest()
        return self._digest

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


CACHE_FORMAT = 1  # bump when the composition changes, so that older cached files are not reused


def composition_key(haystack: Haystack, needle: Needle, length: float, depth_percent: float) -> str:
    """sha256 of everything a composed video depends on: the haystack's and the needle's bytes, the cell, the
    composition frame rate and this code's cache format."""
    fields = {"haystack": haystack.digest(), "needle": needle.digest(), "length": float(length),
              "depth": float(depth_percent), "fps": COMPOSE_FPS, "format": CACHE_FORMAT}  # fmt: skip
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def compose_to_file(haystack: Haystack, needle: Needle, length: float, depth_percent: float, cache_dir,
                    chunk_frames: int = 50) -> Path:  # fmt: skip
    """The cell's whole composed video, written once to `cache_dir` (FFV1 in Matroska at 5 fps: lossless, decoding
    gives `compose(...)` back exactly) under a name keyed by `composition_key`; later calls return the file.
    Composed `chunk_frames` at a time, so memory does not grow with the length; written to a temporary name and
    renamed, so concurrent processes never read a half-written file."""
    import av

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = composition_key(haystack, needle, length, depth_percent)
    path = cache_dir / f"niavh-{int(length)}s-{float(depth_percent):g}pct-{key[:16]}.mkv"
    if path.exists():
        return path
    total = len(composed_times(length))
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.mkv")
    with av.open(str(partial), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=COMPOSE_FPS)
        stream.width, stream.height = haystack.size
        stream.pix_fmt = "bgr0"  # RGB, losslessly (the yuv formats would round the colours)
        for start in range(0, total, chunk_frames):
            for frame in compose(haystack, needle, length, depth_percent,
                                 indices=range(start, min(start + chunk_frames, total))):  # fmt: skip
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(partial, path)
    return path


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


def _video_kwargs(video_processor, fps=None, num_frames=None, max_frames=None) -> dict:
    """The sampling the runner asks of the processor: `num_frames` if given, else `fps` (capped by `max_frames`),
    else the processor's own settings."""
    if num_frames is not None:
        return {"num_frames": int(num_frames)}
    fps = fps if fps is not None else getattr(video_processor, "fps", None)
    if fps:
        return {"fps": float(fps), "max_frames": int(max_frames or getattr(video_processor, "max_frames", 512))}
    return {"num_frames": int(video_processor.num_frames)}


def sample_indices(length: float, video_processor, fps=None, num_frames=None, max_frames=None) -> np.ndarray:
    """Indices into the composed 5 fps stream of the frames the processor samples from the composed file, with
    `_video_kwargs`' settings (its fps rule or its frame count), computed as it computes them from that file."""
    from ..video_processing_videollamb import frames_for_fps, round_up_to_group, uniform_indices

    total = len(composed_times(length))
    group = getattr(video_processor, "temporal_group_size", 1)
    kwargs = _video_kwargs(video_processor, fps, num_frames, max_frames)
    if "fps" in kwargs:
        # As the file's index does: duration from the timestamps (a 1/5 s step), fps = frames / duration.
        span = float(Fraction(total, COMPOSE_FPS))
        count = frames_for_fps(total / (total / span), kwargs["fps"], kwargs["max_frames"], group)
    else:
        count = round_up_to_group(kwargs["num_frames"], group)
    return uniform_indices(0, total, count)


def multiple_choice(description: str, seed: int, distractors=DISTRACTORS) -> tuple[list[str], int]:
    """The needle's description and three distractors in a seeded order; returns (options, index of the needle)."""
    rng = np.random.default_rng(seed)
    options = [description, *distractors[:3]]
    order = rng.permutation(len(options)).tolist()
    return [options[i] for i in order], order.index(0)


SCORINGS = ("multiple_choice", "likelihood", "recall", "judge")


def shard_path(output, rank: int, world_size: int) -> Path:
    """Where process `rank` of `world_size` writes its cells: `output` itself for one process."""
    output = Path(output)
    return output if world_size == 1 else output.with_name(f"{output.stem}.rank{rank}{output.suffix}")


def _read_cells(path) -> dict:
    cells = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if _whole(line):
                record = json.loads(line)
                cells[(record["length"], record["depth"])] = record
    return cells


def grid_cells(lengths, depths) -> list[tuple[int, float]]:
    return [(int(length), float(depth)) for length in lengths for depth in depths]


def _answer_likelihood(pipe, frames_or_path, prompt, options, video_kwargs) -> dict:
    """Each option's letter scored by the model's log-probability as the first answer token (no generation), through
    the evaluation harness."""
    from .benchmarks import Question, run_model_batch

    processor, model = pipe.processor, pipe.model
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=text, videos=[frames_or_path], return_tensors="pt", **video_kwargs))
    question = Question("", "", prompt, options, None)
    return run_model_batch(model, processor, [question], [inputs], {"mode": "likelihood"})[0]


def _answer_with_vllm(pipe, vllm, frames_or_path, prompt: str, video_kwargs: dict, max_new_tokens: int) -> str:
    """The pipeline's greedy answer, with the language model in vLLM: the same chat (video first, then the text),
    encoded here into the compact prompt, decoded as the pipeline decodes."""
    from ..serving import prompt_embeds_from_inputs

    processor = pipe.processor
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=text, videos=[frames_or_path], return_tensors="pt", **video_kwargs))
    embeds = prompt_embeds_from_inputs(pipe.model, inputs)[0]
    token_ids = vllm.complete(embeds, max_new_tokens)["token_ids"]
    return processor.decode(token_ids, skip_special_tokens=True).strip()


def run_grid(pipe, haystack: Haystack, needle: Needle, lengths, depths, output, scoring: str = "multiple_choice",
             question: str = DEFAULT_QUESTION, seed: int = 0, resume: bool = False, max_new_tokens: int = 16,
             judge_kwargs: dict | None = None, progress: bool = True, compose_via: str = "memory", cache_dir=None,
             fps: float | None = None, num_frames: int | None = None, max_frames: int | None = None, rank: int = 0,
             world_size: int = 1, vllm=None):  # fmt: skip
    """One JSONL record per (length, depth) cell: length, depth, modality, question, answer, score, seconds, frames.

    `scoring`: "multiple_choice" (the needle among 3 distractors, order seeded per cell; score 1/0 by the letter the
    model writes), "likelihood" (the same options, the letter with the highest log-probability; our model's
    processor and model), "recall" (text needles: 1 if the needle string is in the answer) or "judge"
    (`judge(**judge_kwargs)`, 1-10). `compose_via`: "memory" (only the sampled frames are composed, nothing is
    written) or "file" (the whole composed video is written once into `cache_dir`, see `compose_to_file`, and the
    model reads the file); the frames the model sees are the same either way. `fps` / `num_frames` / `max_frames`:
    the sampling (default: the processor's own). With `world_size > 1` process `rank` runs every `world_size`-th
    cell into its own shard (`shard_path`); `merge_cells` joins them. `vllm` (a `serving.VLLMClient`): the answers
    are generated in vLLM on the compact prompt embeddings (this process encodes); likelihood scoring stays here.
    """
    import time

    from tqdm.auto import tqdm

    from .benchmarks import LETTERS, Question, build_prompt, extract_answer

    if scoring not in SCORINGS:
        raise ValueError(f"`scoring` must be one of {SCORINGS}, got {scoring!r}.")
    if scoring == "recall" and needle.modality != "text":
        raise ValueError("Exact-string recall scores text needles only; use multiple_choice or judge.")
    if compose_via not in ("memory", "file"):
        raise ValueError(f"`compose_via` must be 'memory' or 'file', got {compose_via!r}.")
    if compose_via == "file" and cache_dir is None:
        raise ValueError("compose_via='file' needs a `cache_dir` for the composed videos.")
    path = shard_path(output, rank, world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if resume:
        kept = _read_cells(path)  # whole lines only: a record cut by an interruption is redone
        path.write_text("".join(json.dumps(r) + "\n" for r in kept.values()))
        done = set(kept) | set(_read_cells(output))  # and what an earlier (merged) run finished
    elif path.exists():
        path.unlink()
    video_processor = pipe.processor.video_processor
    video_kwargs = _video_kwargs(video_processor, fps, num_frames, max_frames)
    mine = grid_cells(lengths, depths)[rank::world_size]
    with open(path, "a", encoding="utf-8") as file:
        for length, depth in tqdm(mine, desc=f"cells (rank {rank})" if world_size > 1 else "cells",
                                  disable=not progress):  # fmt: skip
            if (length, depth) in done:
                continue
            started = time.perf_counter()
            if compose_via == "file":
                video = str(compose_to_file(haystack, needle, length, depth, cache_dir))
                cell_kwargs = video_kwargs
                count = len(sample_indices(length, video_processor, fps, num_frames, max_frames))
            else:
                video = compose(haystack, needle, length, depth,
                                indices=sample_indices(length, video_processor, fps, num_frames, max_frames))  # fmt: skip
                cell_kwargs = {"num_frames": len(video)}
                count = len(video)
            record = {"length": length, "depth": depth, "modality": needle.modality, "frames": count,
                      "insertion_s": insertion_point(length, depth)}  # fmt: skip
            text = question
            if scoring in ("multiple_choice", "likelihood"):
                options, answer = multiple_choice(
                    needle.description, seed=seed * 1_000_003 + length * 1009 + int(depth * 1000)
                )
                text = build_prompt(Question("", "", question, options, answer))
                record.update(options=options, gold=LETTERS[answer])
            if scoring == "likelihood":
                result = _answer_likelihood(pipe, video, text, options, cell_kwargs)
                record.update(question=text, answer=None, letter=result["letter"], rule="likelihood",
                              letter_scores=result["scores"], score=float(result["letter"] == record["gold"]))  # fmt: skip
            else:
                if vllm is not None:
                    output_text = _answer_with_vllm(pipe, vllm, video, text, cell_kwargs, max_new_tokens)
                else:
                    result = pipe(video, text, max_new_tokens=max_new_tokens, return_full_text=False,
                                  processor_kwargs=cell_kwargs)  # fmt: skip
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


def merge_cells(output, lengths, depths, world_size: int, resume: bool = False) -> list[dict]:
    """Join the shards (and, with `resume`, an earlier merged file) into `output`, in grid order; returns the
    records. Raises if a cell of the grid has no record."""
    output = Path(output)
    cells = _read_cells(output) if resume or world_size == 1 else {}
    for rank in range(world_size):
        cells.update(_read_cells(shard_path(output, rank, world_size)))
    missing = [cell for cell in grid_cells(lengths, depths) if cell not in cells]
    if missing:
        raise RuntimeError(f"{len(missing)} cells have no record (first: {missing[0]}); rerun with --resume.")
    records = [cells[cell] for cell in grid_cells(lengths, depths)]
    partial = output.with_name(output.name + ".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(partial, output)
    return records


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

    parser = argparse.ArgumentParser(
        prog="videollamb-hf niavh",
        description="Needle in a Video Haystack (MM-NIAVH). Data-parallel: accelerate launch -m "
        "videollamb_hf.evaluation.niavh ...",
    )
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
    parser.add_argument("--scoring", choices=SCORINGS, default="multiple_choice")
    parser.add_argument("--judge-url", help="an OpenAI-compatible endpoint (key in $NIAVH_JUDGE_API_KEY)")
    parser.add_argument("--judge-model", default="gpt-3.5-turbo")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second fed to the model (the paper's 1)")
    parser.add_argument("--max-frames", type=int, default=512)
    parser.add_argument("--num-frames", type=int, default=None, help="a fixed frame count instead of --fps")
    parser.add_argument("--compose", choices=["memory", "file"], default="memory",
                        help="feed the sampled frames directly (default) or write each composed video once")  # fmt: skip
    parser.add_argument("--cache-dir", default=None, help="for --compose file (default: OUTPUT_DIR/videos)")
    parser.add_argument("--output-dir", default="niavh")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: this process's GPU, else the CPU")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers",
                        help="where the language model generates (vllm: a server serving `export-lm`'s folder)")  # fmt: skip
    parser.add_argument("--vllm-url", help="with --backend vllm: the vLLM server's URL")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None) -> int:
    import sys

    import torch
    from accelerate import PartialState
    from transformers import pipeline

    import videollamb_hf  # noqa: F401

    from .benchmarks import ranks_leave_together

    args = build_parser().parse_args(argv)
    if args.scoring == "judge" and not args.judge_url:
        print("videollamb-hf niavh: error: --scoring judge needs --judge-url (an OpenAI-compatible endpoint).",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.backend == "vllm" and not args.vllm_url:
        print("videollamb-hf niavh: error: --backend vllm needs --vllm-url.", file=sys.stderr)
        return 2
    vllm = None
    if args.backend == "vllm":
        from ..serving import VLLMClient

        if args.scoring == "likelihood":
            print("videollamb-hf niavh: likelihood scoring stays on the transformers backend.", file=sys.stderr)
        vllm = VLLMClient(args.vllm_url)
    lengths = _grid(args.lengths, length_grid())
    default_depths = depth_grid(spacing=args.depth_spacing)
    depths = _grid(args.depths, default_depths) if args.depths else default_depths
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only: gloo across the launched processes
    device = args.device or (f"cuda:{state.local_process_index}" if torch.cuda.is_available() else "cpu")
    try:
        # The inputs first: a bad needle or haystack file is an error before the model loads (minutes at 7B).
        haystack = Haystack(args.haystack)
        needle = Needle(args.needle_modality, args.needle, args.needle_description)
        pipe = pipeline("video-text-to-text", model=args.model, device=device)
    except (OSError, ValueError) as error:
        print(f"videollamb-hf niavh: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    output = Path(args.output_dir)
    judge_kwargs = {"base_url": args.judge_url, "model": args.judge_model,
                    "api_key": os.environ.get("NIAVH_JUDGE_API_KEY")} if args.scoring == "judge" else None  # fmt: skip
    try:
        run_grid(pipe, haystack, needle, lengths, depths, output / "cells.jsonl", scoring=args.scoring,
                 question=args.question, seed=args.seed, resume=args.resume, max_new_tokens=args.max_new_tokens,
                 judge_kwargs=judge_kwargs, progress=not args.quiet, compose_via=args.compose,
                 cache_dir=args.cache_dir or output / "videos", fps=None if args.num_frames else args.fps,
                 num_frames=args.num_frames, max_frames=args.max_frames, rank=state.process_index,
                 world_size=state.num_processes, vllm=vllm)  # fmt: skip
    except ConnectionError as error:  # the vLLM server went away: finished cells are kept (--resume)
        print(f"videollamb-hf niavh: error: {error}", file=sys.stderr)
        return 1
    with ranks_leave_together(state):
        if not state.is_main_process:
            return 0
        try:
            records = merge_cells(output / "cells.jsonl", lengths, depths, state.num_processes, resume=args.resume)
        except RuntimeError as error:
            print(f"videollamb-hf niavh: error: {error}", file=sys.stderr)
            return 1
    summary = heatmap(records, output / "heatmap.png", output / "heatmap.pdf")
    summary["settings"] = {k: v for k, v in vars(args).items() if k != "quiet"}
    summary["settings"]["world_size"] = state.num_processes
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    (output / "summary.md").write_text(
        f"# Needle in a Video Haystack\n\n{len(records)} cells ({len(lengths)} lengths x {len(depths)} depths), "
        f"{args.needle_modality} needle, scoring {args.scoring}: mean score **{summary['mean']:.3f}**.\n\n"
        + "".join(f"- {k}: {v:.3f}\n" for k, v in summary["per_modality"].items())
        + "\n![heatmap](heatmap.png)\n"
    )
    print(json.dumps({k: summary[k] for k in ("mean", "per_modality", "cells")}))
    return 0


__all__ = ["Haystack", "Needle", "compose", "compose_to_file", "composed_times", "composition_key", "depth_grid",
           "grid_cells", "heatmap", "insertion_point", "judge", "judge_prompt", "length_grid", "merge_cells",
           "multiple_choice", "parse_rating", "run_grid", "sample_indices", "shard_path", "text_font_size"]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
