"""Streaming captions with O(1) work per new frame: each frame is encoded once, scenes are cut online, and every
closed scene goes through one recurrent bridge `step`, carrying the memory forward.

This is our own online algorithm. The authors' streaming demo (`serve/cli_streaming.py`) re-runs the whole model
over every frame seen so far each time it captions, so its cost grows with the stream; there is no caption parity
to keep with it. What is kept: with a window `W` at least the clip's length and a minimum scene length of 1, the
boundaries found at the end of the stream equal threshold-mode SceneTilling over the whole clip, and the memory
after the last scene equals the bridge's memory over the same segments.

Online SceneTilling rule (all numbers are `StreamingCaptioner` arguments):

- frames are encoded by the video tower a temporal group at a time (8 for LanguageBind), so the live edge lags the
  newest frame by up to one group: `(group - 1) / fps` seconds (7 s at 1 fps);
- the similarity of consecutive CLS features gives one "gap" per pair of frames; a gap's depth score climbs at most
  `window` gaps to each side (the offline rule climbs without limit), so it is final once `window` newer gaps exist;
- a final gap is a boundary when its depth exceeds `mean + alpha * std` of all final depth scores seen so far
  (running statistics, once `warmup_gaps` of them exist: 2 W by default) and the scene it closes has at least
  `min_scene_frames` frames;
- so a scene closes once its boundary is `window` gaps behind the live edge; at the end of the stream the open rest
  is decided with the statistics of the whole stream (exactly the offline rule when nothing closed before).

A closed scene (sub-sampled to at most `max_frames_per_segment` frames, as the bridge does) runs one bridge step; the
language model then captions it from that scene's tokens (the memory carries the earlier scenes, as for a whole
video). A question is answered from the memory so far plus the open scene's encoded frames, without closing it.
The memory cache grows by one entry per scene, unbounded by default as in the original; `max_cache_segments` keeps
only the newest entries.
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .modeling_videollamb import VideoLlambVideoFeatures, split_and_pool, tower_hidden_state
from .scene_tiling import boundaries_from_depths


CAPTION_PROMPT = "Describe what happens in this part of the video in one sentence."


@dataclass
class StreamEvent:
    """What the captioner says: `kind` is `"caption"` (a scene closed) or `"answer"` (a question was asked).

    Attributes:
        timestamp (`float`): stream time when the event was produced (the newest frame's time; a caption comes
            after its scene's end by the SceneTilling window plus up to one temporal group; an answer: when asked).
        kind (`str`): `"caption"` or `"answer"`.
        text (`str`): the language model's text.
        scene (`tuple[float, float]`): start and end time of the scene described (for an answer: the open scene).
        frames (`tuple[int, int]`): first and last frame index of that scene.
        question (`str`, *optional*): the question answered.
    """

    timestamp: float
    kind: str
    text: str
    scene: tuple[float, float]
    frames: tuple[int, int]
    question: str | None = None

    def to_dict(self) -> dict:
        return {"timestamp": round(self.timestamp, 3), "kind": self.kind, "text": self.text,
                "scene": [round(t, 3) for t in self.scene], "frames": list(self.frames),
                **({"question": self.question} if self.question is not None else {})}  # fmt: skip


class OnlineSceneTiling:
    """The online boundary rule of the module docstring, fed one similarity (gap) at a time."""

    def __init__(
        self,
        window: int = 8,
        alpha: float = 0.5,
        min_scene_frames: int = 1,
        max_boundaries: int = 15,
        warmup_gaps: int | None = None,
    ):
        if window < 1 or min_scene_frames < 1:
            raise ValueError("`window` and `min_scene_frames` must be at least 1.")
        self.window, self.alpha, self.min_scene_frames = window, alpha, min_scene_frames
        self.max_boundaries = max_boundaries
        # Running statistics of a handful of scores are noise: no scene closes before this many were seen.
        self.warmup_gaps = max(3, 2 * window if warmup_gaps is None else warmup_gaps)
        self.reset()

    def reset(self):
        self.similarities: list[np.float32] = []
        self.depths: dict[int, np.float32] = {}  # final depth of each gap
        self.count, self.mean, self.m2 = 0, 0.0, 0.0  # Welford over final depths
        self.scene_start = 0  # first frame of the open scene
        self.boundaries: list[int] = []  # committed boundaries (last frame of each closed scene)

    def _depth(self, gap: int, limit: int) -> np.float32:
        """Depth of `gap`, climbs limited to `window` gaps and to gaps `< limit`; float32 like the offline rule."""
        s = self.similarities
        left = s[gap]
        for j in range(gap - 1, max(-1, gap - 1 - self.window), -1):
            if s[j] >= left:
                left = s[j]
            else:
                break
        right = s[gap]
        for j in range(gap + 1, min(limit, gap + 1 + self.window)):
            if s[j] >= right:
                right = s[j]
            else:
                break
        return np.float32(np.float32(left + right) - np.float32(2) * s[gap])

    def _add_depth(self, depth: np.float32):
        self.count += 1
        delta = float(depth) - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (float(depth) - self.mean)

    def _threshold(self) -> float:
        std = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
        return self.mean + self.alpha * std

    def push(self, similarity: float) -> list[int]:
        """Add the similarity of the next pair of frames; returns the boundaries committed by it (0 or 1)."""
        self.similarities.append(np.float32(similarity))
        gap = len(self.similarities) - 1 - self.window  # the gap that just became final
        if gap < 0:
            return []
        depth = self._depth(gap, len(self.similarities))
        self.depths[gap] = depth
        self._add_depth(depth)
        if (
            self.count >= self.warmup_gaps
            and float(depth) > self._threshold()
            and gap - self.scene_start + 1 >= self.min_scene_frames
        ):
            self.boundaries.append(gap)
            self.scene_start = gap + 1
            return [gap]
        return []

    def finish(self) -> list[int]:
        """End of stream: decide the open rest with the whole stream's statistics. Returns all boundaries, the last
        frame included (as `find_scene_boundaries`). When no scene closed earlier (and `min_scene_frames` is 1) this
        is the offline threshold rule, its `max_boundaries` cap included; a stream otherwise has no cap."""
        num_gaps = len(self.similarities)
        for gap in range(num_gaps):
            if gap not in self.depths:
                self.depths[gap] = self._depth(gap, num_gaps)
        depths = torch.tensor([self.depths[g] for g in range(num_gaps)], dtype=torch.float32)
        if not self.boundaries and self.min_scene_frames == 1:
            return boundaries_from_depths(depths, "threshold", alpha=self.alpha, max_boundaries=self.max_boundaries)
        rest = []
        if num_gaps >= 3:
            std, mean = torch.std_mean(depths)
            start = self.scene_start
            for gap in range(self.scene_start, num_gaps):
                if float(depths[gap]) > float(mean + self.alpha * std) and gap - start + 1 >= self.min_scene_frames:
                    rest.append(gap)
                    start = gap + 1
        found = self.boundaries + rest
        if not found or found[-1] != num_gaps:
            found.append(num_gaps)
        return found


class StreamingCaptioner:
    """Captions a stream as it comes (see the module docstring for the rule and its guarantees).

    Args:
        model: a [`VideoLlambForConditionalGeneration`] (eval mode).
        processor: its [`VideoLlambProcessor`] (the frame transform, the tokenizer and the chat template).
        window (`int`, defaults to 8): `W`, the depth climb limit in gaps; scenes close `W` gaps behind the edge.
        warmup_gaps (`int`, defaults to `2 * window`): depth scores seen before the first scene may close.
        alpha (`float`, defaults to the model's `scene_tiling_alpha`): threshold = running mean + alpha * std.
        min_scene_frames (`int`, defaults to 4): the shortest scene that may close.
        max_cache_segments (`int`, *optional*): keep only the newest entries of the memory cache (default: all).
        caption_prompt (`str`): what the language model is asked when a scene closes.
        max_new_tokens (`int`, defaults to 32), generate_kwargs (`dict`): generation options (greedy by default).

    Use `feed(frame, timestamp)` / `ask(question, timestamp)` / `finish()` (each returns a list of
    [`StreamEvent`]), or `run(frames)` / `run_file(path, fps)` as generators; `reset()` starts over.
    """

    def __init__(self, model, processor, window: int = 8, alpha: float | None = None, min_scene_frames: int = 4,
                 max_cache_segments: int | None = None, caption_prompt: str = CAPTION_PROMPT,
                 max_new_tokens: int = 32, generate_kwargs: dict | None = None, captions: bool = True,
                 warmup_gaps: int | None = None):  # fmt: skip
        self.model, self.processor = model, processor
        self.config = model.config
        self.backbone = model.model
        alpha = self.config.scene_tiling_alpha if alpha is None else alpha
        self.tiling = OnlineSceneTiling(
            window, alpha, min_scene_frames, self.config.scene_tiling_max_boundaries, warmup_gaps=warmup_gaps
        )
        self.group = self.config.temporal_group_size
        self.max_cache_segments = max_cache_segments
        self.caption_prompt, self.captions = caption_prompt, captions
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, **(generate_kwargs or {})}
        self.reset()

    # -- state ------------------------------------------------------------------------------------------------------

    def reset(self):
        """Forget everything: memory, cache, frames, scenes."""
        self.tiling.reset()
        self.pending: list[np.ndarray] = []  # frames not yet encoded (less than a group)
        self.pending_times: list[float] = []
        self.times: list[float] = []  # timestamp of every encoded frame
        self.cls: list[torch.Tensor] = []  # CLS feature of every encoded frame (kept for the similarities)
        self.pooled: dict[int, torch.Tensor] = {}  # pooled tokens of the open scene's frames only
        self.memory = None
        self.memory_cache = None
        self.segment_memories: list[torch.Tensor] = []
        self.scenes: list[tuple[int, int]] = []
        self.last_output = None
        self.final_boundaries = None
        self.frames_seen = 0

    @property
    def lag_seconds(self) -> float:
        """How far the live edge may lag the newest frame at the stream's frame rate (one temporal group)."""
        if len(self.times) < 2:
            return float("nan")
        step = (self.times[-1] - self.times[0]) / (len(self.times) - 1)
        return (self.group - 1) * step

    # -- encoding ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_pending(self) -> list["StreamEvent"]:
        """Encode the pending frames (one temporal group; a last partial group is padded by repeating its last
        frame, which only the temporal attention sees) and feed their similarities to the online SceneTilling."""
        real = len(self.pending)
        frames = np.stack(self.pending + [self.pending[-1]] * (self.group - real))
        video = self.processor.video_processor
        size = video.size["shortest_edge"]
        crop = (video.crop_size["height"], video.crop_size["width"])
        pixels = video._transform(frames, size, crop)
        tower = self.backbone.video_tower
        weight = tower.embeddings.patch_embedding.weight
        hidden = tower_hidden_state(
            tower, pixels.to(device=weight.device, dtype=weight.dtype), self.config.vision_feature_layer
        )
        cls, pooled = split_and_pool(hidden, self.config.pooled_grid_size)
        events = []
        for k in range(real):
            index = len(self.cls)
            self.cls.append(cls[k])
            self.pooled[index] = pooled[k]
            self.times.append(self.pending_times[k])
            if index > 0:
                similarity = torch.cosine_similarity(self.cls[index - 1][None].float(), cls[k][None].float())
                for boundary in self.tiling.push(float(similarity)):
                    start = self.scenes[-1][1] + 1 if self.scenes else 0
                    events += self._close_scene(start, boundary)
        self.pending, self.pending_times = [], []
        return events

    def _scene_tokens(self, start: int, end: int, segment_index: int) -> torch.Tensor:
        steps = min(self.config.max_frames_per_segment, end - start + 1)
        index = torch.linspace(start, end, steps, dtype=torch.int).tolist()
        tokens = torch.stack([self.pooled[i] for i in index])
        tokens = self.backbone.memory_bridge.add_segment_position(tokens, segment_index)
        return tokens.reshape(1, -1, tokens.shape[-1])

    @torch.no_grad()
    def _close_scene(self, start: int, end: int) -> list["StreamEvent"]:
        bridge = self.backbone.memory_bridge
        output, self.memory, self.memory_cache = bridge.step(
            self._scene_tokens(start, end, len(self.scenes)), self.memory, self.memory_cache
        )
        if self.max_cache_segments is not None:
            per_entry = output.shape[1] if bridge.cache_segment_states else self.config.num_memory_tokens
            keep = self.max_cache_segments * per_entry
            self.memory_cache = self.memory_cache[:, -keep:]
        self.segment_memories.append(self.memory)
        self.scenes.append((start, end))
        self.last_output = output
        for i in range(start, end + 1):
            self.pooled.pop(i, None)
        if not self.captions:
            return []
        text = self._generate(self.caption_prompt, output)
        now = max(self.times[-1], self.pending_times[-1] if self.pending_times else self.times[-1])
        return [StreamEvent(now, "caption", text, (self.times[start], self.times[end]), (start, end))]

    def _features(self, segment_output: torch.Tensor, memories: list[torch.Tensor]) -> VideoLlambVideoFeatures:
        config = self.config
        if config.bridge_output == "memories":
            source = torch.cat(memories[-config.max_segments :], dim=1)[0]
        else:
            source = segment_output[0]
        tokens = self.backbone.multi_modal_projector(source)[: config.video_seq_length]
        padded = torch.nn.functional.pad(tokens, (0, 0, 0, config.video_seq_length - tokens.shape[0]))
        return VideoLlambVideoFeatures(
            visual_tokens=padded[None],
            num_slots_used=torch.tensor([tokens.shape[0]], device=tokens.device),
            scene_boundaries=([end for _, end in self.scenes],),
            memory=self.memory if self.memory is not None else None,
            memory_cache=(self.memory_cache[0],) if self.memory_cache is not None else None,
        )

    @torch.no_grad()
    def _generate(self, question: str, segment_output: torch.Tensor, memories=None) -> str:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The prompt's `<video>` slots are filled from the already encoded features, so no pixels are passed.
        ids, _ = self.processor._tokenize_prompt(prompt, add_special_tokens=True)
        device = self.model.device
        input_ids = torch.tensor([ids], device=device)
        features = self._features(segment_output, self.segment_memories if memories is None else memories)
        output = self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), video_features=features,
            **self.generate_kwargs,
        )  # fmt: skip
        return self.processor.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()

    # -- public -----------------------------------------------------------------------------------------------------

    def feed(self, frame, timestamp: float) -> list[StreamEvent]:
        """One RGB frame (`(H, W, 3)` uint8) at `timestamp` seconds. Returns the events it caused."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"A frame must be (height, width, 3) RGB, got shape {frame.shape}.")
        last = (self.times[-1:] + self.pending_times[-1:])[-1:] or [float("-inf")]
        if timestamp < last[0]:
            raise ValueError(f"Timestamps must not go back ({timestamp} s after {last[0]} s).")
        self.pending.append(frame)
        self.pending_times.append(float(timestamp))
        self.frames_seen += 1
        if len(self.pending) == self.group:
            return self._encode_pending()
        return []

    @torch.no_grad()
    def ask(self, question: str, timestamp: float | None = None) -> list[StreamEvent]:
        """Answer `question` from the memory so far plus the open scene's encoded frames (the scene stays open).
        Frames of a group not encoded yet (the lag) are not seen."""
        when = float(timestamp) if timestamp is not None else (self.times[-1] if self.times else 0.0)
        start = self.scenes[-1][1] + 1 if self.scenes else 0
        end = len(self.cls) - 1
        if end >= start:
            output, memory, _ = self.backbone.memory_bridge.step(
                self._scene_tokens(start, end, len(self.scenes)), self.memory, self.memory_cache
            )
            memories = self.segment_memories + [memory]
        elif self.scenes:  # nothing new since the last scene: answer from it
            (start, end), output, memories = self.scenes[-1], self.last_output, self.segment_memories
        else:
            raise ValueError("Nothing to answer from yet: feed at least one group of frames first.")
        text = self._generate(question, output, memories)
        return [StreamEvent(when, "answer", text, (self.times[start], self.times[end]), (start, end), question)]

    def finish(self) -> list[StreamEvent]:
        """End of the stream: encode what is pending, decide the rest of the scenes and close them."""
        events = self._encode_pending() if self.pending else []
        if not self.cls:
            return events
        boundaries = self.tiling.finish()
        start = self.scenes[-1][1] + 1 if self.scenes else 0
        for boundary in boundaries:
            if boundary >= start:
                events += self._close_scene(start, boundary)
                start = boundary + 1
        self.final_boundaries = boundaries
        return events

    def run(self, frames: Iterable, questions: dict[float, str] | None = None) -> Iterator[StreamEvent]:
        """Events for an iterable of `(timestamp, frame)`; `questions` maps a time to a question asked then."""
        pending_questions = sorted((questions or {}).items())
        for timestamp, frame in frames:
            while pending_questions and pending_questions[0][0] <= timestamp:
                when, question = pending_questions.pop(0)
                yield from self.ask(question, when)
            yield from self.feed(frame, timestamp)
        yield from self.finish()
        for when, question in pending_questions:
            yield from self.ask(question, when)

    def run_file(self, path, fps: float = 1.0, questions: dict[float, str] | None = None, progress=None):
        """`run` over a video file sampled at `fps` (frames decoded in chunks, never the whole video)."""
        yield from self.run(iter_video_frames(path, fps, progress=progress), questions)


def iter_video_frames(path, fps: float = 1.0, chunk: int = 32, progress=None) -> Iterator[tuple[float, np.ndarray]]:
    """`(timestamp, frame)` of a video file at `fps` (the frame shown at each multiple of `1 / fps` seconds)."""
    from .video_decoding import VideoReader

    if not fps > 0:
        raise ValueError(f"`fps` must be positive, got {fps}.")
    reader = VideoReader(path)
    times = np.asarray(reader.index.timestamps(range(reader.index.num_frames)))
    wanted = np.arange(0.0, times[-1] + 1e-9, 1.0 / fps)
    indices = np.clip(np.searchsorted(times, wanted, side="right") - 1, 0, len(times) - 1)
    bar = progress(total=len(indices), desc="frames", unit="frame") if progress else None
    try:
        for begin in range(0, len(indices), chunk):
            part = indices[begin : begin + chunk]
            for index, frame in zip(part, reader.get_frames(part)):
                yield float(times[index]), frame
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
        reader.close()


__all__ = ["CAPTION_PROMPT", "OnlineSceneTiling", "StreamEvent", "StreamingCaptioner", "iter_video_frames"]
