"""`pipeline("video-text-to-text")`: a video (and/or images) and a question in, an answer out.

```python
import videollamb_hf
from transformers import pipeline

pipe = pipeline("video-text-to-text", model="ColorfulAI/VideoLLaMB")
pipe("long_video.mp4", "What happens after the cut?", max_new_tokens=64)
# [{"input_text": "What happens after the cut?", "generated_text": "What happens after the cut? A man ..."}]
```
"""

from pathlib import Path

import torch
from transformers.pipelines.base import Pipeline


def _is_chat(item) -> bool:
    return isinstance(item, (list, tuple)) and bool(item) and all(isinstance(m, dict) and "role" in m for m in item)


def _is_chat_batch(item) -> bool:
    return isinstance(item, (list, tuple)) and bool(item) and all(_is_chat(c) for c in item)


def chat_from_video_and_text(video=None, text: str = "", images=None) -> list[dict]:
    """One user turn with the video (and images) first, then the text, as the processor's chat template expects."""
    content = []
    if video is not None:
        key = "path" if isinstance(video, (str, Path)) else "video"
        content.append({"type": "video", key: str(video) if isinstance(video, Path) else video})
    for image in images or []:
        key = "path" if isinstance(image, (str, Path)) else "image"
        content.append({"type": "image", key: str(image) if isinstance(image, Path) else image})
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


# Above this many sampled frames, a video (a path, URL or bytes) is decoded and encoded in chunks of frames
# (`VideoLlambModel.encode_video`) instead of as one pixel tensor: the same features, memory bounded by a chunk.
CHUNKED_ABOVE = 256


class VideoTextToTextPipeline(Pipeline):
    """Video(+image)-and-text to text with any model reachable through `AutoModelForImageTextToText` whose processor
    takes chat messages with video blocks (VideoLLaMB first).

    Call with:
    - `pipe(video, text)`: a path, URL, bytes or frames, and a question;
    - `pipe(messages)`: chat messages with `{"type": "video", "path": ...}` / `{"type": "image", ...}` blocks;
    - lists of either (`pipe([v1, v2], [q1, q2])`, `pipe([chat1, chat2])`) for several at once.

    Keyword arguments: generation options (`max_new_tokens`, `do_sample`, `temperature`, ... or
    `generate_kwargs={...}`; greedy unless `do_sample=True`), `processor_kwargs={"num_frames": 16, "fps": 1,
    "sampling": "scenes"}`, `return_full_text` (default `True`: the prompt text, or the chat with the answer appended;
    `False`: the answer only), `chunked_above` (default 256: a video sampling more frames is decoded and encoded in
    chunks of frames, never as one pixel tensor; the same answer).

    Returns one `[{"input_text": ..., "generated_text": ...}]` per input (a list of those for a list of inputs).
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    _GENERATE_KEYS = (
        "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_p", "top_k", "num_beams",
        "repetition_penalty", "no_repeat_ngram_size", "length_penalty", "eos_token_id", "pad_token_id", "use_cache",
        "num_return_sequences", "seed",
    )  # fmt: skip

    def _sanitize_parameters(
        self, processor_kwargs=None, generate_kwargs=None, return_full_text=None, images=None, chunked_above=None,
        **kwargs,
    ):  # fmt: skip
        preprocess, forward, postprocess = {}, {}, {}
        if processor_kwargs is not None:
            preprocess["processor_kwargs"] = dict(processor_kwargs)
        if chunked_above is not None:
            preprocess["chunked_above"] = chunked_above
        if images is not None:
            preprocess["images"] = images
        generate = dict(generate_kwargs or {})
        for key in list(kwargs):
            if key in self._GENERATE_KEYS:
                if key in generate:
                    raise ValueError(f"`{key}` is given twice, directly and in `generate_kwargs`.")
                generate[key] = kwargs.pop(key)
        if kwargs:
            raise TypeError(f"Unexpected arguments for the video-text-to-text pipeline: {sorted(kwargs)}.")
        forward["generate_kwargs"] = generate
        if return_full_text is not None:
            postprocess["return_full_text"] = return_full_text
        return preprocess, forward, postprocess

    def __call__(self, videos=None, text=None, **kwargs):
        """See the class docstring."""
        if _is_chat(videos) or _is_chat_batch(videos):
            if text is not None:
                raise ValueError("Give either chat messages or (video, text), not both.")
            inputs = [{"chat": c} for c in videos] if _is_chat_batch(videos) else {"chat": videos}
        elif text is None:
            raise ValueError("A question is needed: `pipe(video, text)` or `pipe(messages)`.")
        elif isinstance(text, (list, tuple)):
            videos = list(videos) if isinstance(videos, (list, tuple)) and len(videos) == len(text) else None
            if videos is None:
                raise ValueError("For a batch, give as many videos as texts: `pipe([v1, v2], [q1, q2])`.")
            inputs = [{"video": v, "text": t} for v, t in zip(videos, text)]
        else:
            inputs = {"video": videos, "text": text}
        return super().__call__(inputs, **kwargs)

    def _long_video(self, chat, processor_kwargs, chunked_above):
        """The chat's one video and its sampling options where it samples more than `chunked_above` frames (then it
        is encoded in chunks of frames, never as one pixel tensor), else None."""
        blocks = [
            b for m in chat if isinstance(m.get("content"), list) for b in m["content"] if b.get("type") == "video"
        ]
        video_processor = getattr(self.processor, "video_processor", None)
        if len(blocks) != 1 or not hasattr(video_processor, "sampled_frame_count") or chunked_above is None:
            return None
        video = blocks[0].get("path", blocks[0].get("url", blocks[0].get("video")))
        names = ("num_frames", "fps", "max_frames", "start_time", "end_time", "sampling")
        sampling = {k: v for k, v in processor_kwargs.items() if k in names}
        count = video_processor.sampled_frame_count(video, **sampling)
        return (video, sampling) if count is not None and count > chunked_above else None

    def preprocess(self, inputs, processor_kwargs=None, images=None, chunked_above=CHUNKED_ABOVE):
        if "chat" in inputs:
            chat, prompt_text = [dict(m) for m in inputs["chat"]], None
        else:
            chat = chat_from_video_and_text(inputs["video"], inputs["text"], images)
            prompt_text = inputs["text"]
        long_video = self._long_video(chat, processor_kwargs or {}, chunked_above)
        if long_video is not None and not any(
            b.get("type") == "image" for m in chat if isinstance(m.get("content"), list) for b in m["content"]
        ):
            text = self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            ids = torch.tensor([self.processor._tokenize_prompt(text, add_special_tokens=True)[0]])
            model_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "long_video": long_video}
            return {"model_inputs": model_inputs, "chat": chat, "prompt_text": prompt_text}
        model_inputs = self.processor.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs=processor_kwargs or {},
        )  # fmt: skip
        model_inputs = {k: v for k, v in model_inputs.items() if k != "video_metadata"}
        return {"model_inputs": model_inputs, "chat": chat, "prompt_text": prompt_text}

    def _forward(self, model_inputs, generate_kwargs=None):
        generate_kwargs = dict(generate_kwargs or {})
        generate_kwargs.setdefault("do_sample", False)  # greedy unless asked
        seed = generate_kwargs.pop("seed", None)
        if seed is not None:
            torch.manual_seed(seed)
        inputs = model_inputs.pop("model_inputs")
        long_video = inputs.pop("long_video", None)
        inputs = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        if long_video is not None:  # decoded and encoded in chunks of frames
            video, sampling = long_video
            inputs["video_features"] = self.model.encode_video(video, self.processor.video_processor, **sampling)
        output = self.model.generate(**inputs, **generate_kwargs)
        prompt_length = inputs["input_ids"].shape[1]
        return {"generated": output[:, prompt_length:], **model_inputs}

    def postprocess(self, model_outputs, return_full_text: bool = True):
        records = []
        for sequence in model_outputs["generated"]:
            answer = self.processor.decode(sequence, skip_special_tokens=True).strip()
            chat, prompt_text = model_outputs["chat"], model_outputs["prompt_text"]
            input_text = prompt_text if prompt_text is not None else chat
            if not return_full_text:
                generated = answer
            elif prompt_text is not None:
                generated = f"{prompt_text} {answer}" if answer else prompt_text
            else:
                generated = list(chat) + [{"role": "assistant", "content": answer}]
            records.append({"input_text": input_text, "generated_text": generated})
        return records


__all__ = ["VideoTextToTextPipeline", "chat_from_video_and_text"]
