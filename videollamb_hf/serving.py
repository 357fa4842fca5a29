"""Serving VideoLLaMB's language model on vLLM through prompt embeddings.

vLLM's multimodal processors must know the number of visual tokens before the model runs; VideoLLaMB's depends on
SceneTilling over the tower's output (the used slots). vLLM does accept *prompt embeddings*, and the language model
fed the compact sequence (the text embeddings with the used visual tokens in place, the unused slots dropped)
computes exactly what this package's holed-slot sequence computes. So this package encodes (towers, SceneTilling,
bridge, projector, the language model's embedding table) and vLLM runs the language model:

- `export_language_model` (`videollamb-hf export-lm MODEL OUTPUT`): the language model as a plain
  `LlamaForCausalLM` folder vLLM loads;
- `build_prompt_embeds` / `build_prompt_embeds_batch`: the compact `(seq_len, hidden)` sequence of a chat;
- `encode_prompt_embeds`: vLLM's documented wire format for them (base64 of a `torch.save`d tensor, the
  `prompt_embeds` field of a Completions request).
"""

import base64
import io
import json
import logging
import os
from pathlib import Path

import torch

from .file_utils import folder_is_nonempty, staged_output_folder
from .modeling_videollamb import VideoLlambForConditionalGeneration


logger = logging.getLogger(__name__)

EXPORT_README = """# The language model of a VideoLLaMB checkpoint, for vLLM

Exported from `{source}` with `videollamb-hf export-lm` (videollamb_hf {version}): the LLaMA decoder and LM head of
VideoLLaMB as a plain `LlamaForCausalLM` ({dtype}, {num_layers} layers, hidden {hidden}).

- It is meant to be served with prompt embeddings (`vllm serve {name} --enable-prompt-embeds`, or
  `python -m vllm.entrypoints.openai.api_server --model {name} --enable-prompt-embeds`): videollamb_hf encodes each
  video (towers, SceneTilling, memory bridge, projector) and sends the compact sequence of embeddings
  (`videollamb_hf.serving.build_prompt_embeds`).
- The two placeholder rows of VideoLLaMB's vocabulary (`<video>` id {video_token_id}, `<image>` id
  {image_token_id}) are dropped from `embed_tokens` and `lm_head`: they are input-only (the model writes visual
  tokens into those slots, never their embeddings) and `generate` never emits them. The vocabulary is
  {vocab_size} rows; every other id and row is unchanged. The tokenizer still knows the two placeholder tokens (so
  that it decodes every id the same); the model never produces them.
- Fed text ids alone, it is the same language model as VideoLLaMB's on text.
"""


def _placeholder_rows(config) -> list[int]:
    ids = sorted({config.video_token_id, config.image_token_id})
    vocab = config.text_config.vocab_size
    if ids != [vocab - 2, vocab - 1]:
        raise ValueError(
            f"The placeholders (`<video>` {config.video_token_id}, `<image>` {config.image_token_id}) are not the last "
            f"two rows of the {vocab}-row vocabulary: dropping them would renumber other tokens."
        )
    return ids


def export_language_model(
    model: str | os.PathLike | VideoLlambForConditionalGeneration,
    output: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    **load_kwargs,
) -> Path:
    """Write the language model of a VideoLLaMB repo (native or the authors' layout) as a plain `LlamaForCausalLM`
    folder: config, safetensors shards, tokenizer, generation config and a README. The placeholder rows are dropped
    from `embed_tokens` and `lm_head` (see `EXPORT_README`).

    Args:
        model: a repo id / folder, or a loaded [`VideoLlambForConditionalGeneration`].
        output: the folder to write (must be empty or absent unless `overwrite`); written beside it first and
            renamed at the end, so that a failure never leaves a folder that looks complete.
        dtype: of the written weights (default: the checkpoint's).
        max_shard_size: largest safetensors shard.
        load_kwargs: passed to `from_pretrained` (e.g. `video_tower=`, `local_files_only=`).

    Returns:
        The output folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import __version__

    output = Path(output).absolute()
    if folder_is_nonempty(output) and not overwrite:  # before the (long) load
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it.")
    source = str(model) if not isinstance(model, torch.nn.Module) else model.name_or_path
    if not isinstance(model, torch.nn.Module):
        model = VideoLlambForConditionalGeneration.from_pretrained(model, dtype=dtype or "auto", **load_kwargs)
    config = model.config
    keep = config.text_config.vocab_size - len(_placeholder_rows(config))
    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    dtype = model.dtype if dtype in (None, "auto") else dtype
    text_config = config.text_config.__class__.from_dict(config.text_config.to_dict())
    text_config.vocab_size = keep
    text_config.architectures = ["LlamaForCausalLM"]
    text_config.dtype = dtype
    state = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    state["lm_head.weight"] = model.lm_head.weight
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = state[key][:keep]
    state = {k: v.detach().to(dtype).contiguous() for k, v in state.items()}
    with torch.device("meta"):
        language_model = AutoModelForCausalLM.from_config(text_config, dtype=dtype)
    language_model.load_state_dict(state, strict=True, assign=True)
    language_model.generation_config = model.generation_config

    with staged_output_folder(output, overwrite=True) as staging:
        language_model.save_pretrained(staging, max_shard_size=max_shard_size)
        tokenizer = AutoTokenizer.from_pretrained(source, **_tokenizer_kwargs(load_kwargs)) if source else None
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(
            EXPORT_README.format(
                source=source,
                version=__version__,
                dtype=str(dtype).removeprefix("torch."),
                name=output.name,
                num_layers=text_config.num_hidden_layers,
                hidden=text_config.hidden_size,
                vocab_size=keep,
                video_token_id=config.video_token_id,
                image_token_id=config.image_token_id,
            ),  # fmt: skip
            encoding="utf-8",
        )
    logger.warning("Exported the language model of %s -> %s (%d-row vocabulary, %s).", source, output, keep, dtype)
    return output


def _tokenizer_kwargs(load_kwargs: dict) -> dict:
    names = ("cache_dir", "token", "local_files_only", "revision", "subfolder")
    return {k: v for k, v in load_kwargs.items() if k in names and v is not None}


@torch.no_grad()
def prompt_embeds_from_inputs(model: VideoLlambForConditionalGeneration, inputs) -> list[torch.Tensor]:
    """The compact sequences of a processed batch: each sample's text embeddings with its used visual tokens in
    place, its unused video slots and its padding dropped.

    Args:
        model: a [`VideoLlambForConditionalGeneration`] (or [`VideoLlambModel`]).
        inputs: the processor's output (`input_ids`, `attention_mask`, `pixel_values_videos`, `pixel_values`,
            `video_frames_mask`), or `video_features` / `image_features` (already encoded) instead of the pixels.

    Returns:
        One `(seq_len_i, text_hidden_size)` tensor per sample, in the language model's embedding dtype.
    """
    backbone = getattr(model, "model", model)
    device = backbone.get_input_embeddings().weight.device
    input_ids = inputs["input_ids"].to(device)
    attention_mask = inputs.get("attention_mask")
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    embeds = backbone.get_input_embeddings()(input_ids)
    video_features = inputs.get("video_features")
    image_features = inputs.get("image_features")
    if inputs.get("pixel_values_videos") is not None:
        frames_mask = inputs.get("video_frames_mask")
        video_features = backbone.get_video_features(
            inputs["pixel_values_videos"].to(device, backbone.dtype),
            None if frames_mask is None else frames_mask.to(device),
        )
    if inputs.get("pixel_values") is not None:
        image_features = backbone.get_image_features(inputs["pixel_values"].to(device, backbone.dtype))
    embeds, slot_mask = backbone._merge_visual_tokens(input_ids, embeds, video_features, image_features)
    keep = attention_mask.bool()
    if slot_mask is not None:
        keep &= slot_mask.to(keep.device)
    return [embeds[i][keep[i]] for i in range(embeds.shape[0])]


def build_prompt_embeds_batch(model, processor, conversations: list, **processor_kwargs) -> list[torch.Tensor]:
    """`build_prompt_embeds` for several chats in one encoder call (the processor pads, the towers and the bridge
    run over the batch): one `(seq_len_i, hidden)` tensor per chat."""
    processor_kwargs = dict(processor_kwargs)
    processor_kwargs.setdefault("padding", len(conversations) > 1)
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs=processor_kwargs,
    )  # fmt: skip
    return prompt_embeds_from_inputs(model, inputs)


def build_prompt_embeds(model, processor, messages: list[dict], **processor_kwargs) -> torch.Tensor:
    """The compact `(seq_len, text_hidden_size)` prompt of one chat (`messages` as for `apply_chat_template`, the
    generation prompt added): what vLLM's `prompt_embeds` take. Its greedy continuation under the exported language
    model equals `model.generate` on the same messages."""
    return build_prompt_embeds_batch(model, processor, [messages], **processor_kwargs)[0]


class PromptEncoder:
    """Chats -> compact prompt embeddings, with an encoder-output cache: each video or image is keyed by a hash of its
    bytes and the sampling options, so that every turn of a conversation and every question about the same clip
    reuses the towers' and the bridge's output. The cache is bounded by the bytes of what it holds (least recently
    used first out). Thread-safe: the model runs one encoder call at a time (its own intra-op threads do the rest).

    Args:
        model: a [`VideoLlambForConditionalGeneration`] in eval mode.
        processor: its [`VideoLlambProcessor`].
        cache_bytes: the most the cache may hold (0: no cache).
    """

    def __init__(self, model, processor, cache_bytes: int = 2 << 30):
        import collections
        import threading

        self.model, self.processor, self.cache_bytes = model, processor, cache_bytes
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def media_key(kind: str, data: bytes, options: dict) -> str:
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        return f"{kind}:{digest}:{json.dumps(options, sort_keys=True, default=str)}"

    def _cached(self, key: str):
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
                self.hits += 1
            return value

    def _store(self, key: str, value: dict) -> None:
        size = sum(v.numel() * v.element_size() for v in value.values() if isinstance(v, torch.Tensor))
        with self._lock:
            self.misses += 1
            if size > self.cache_bytes:
                return
            self._cache[key] = value
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= sum(
                    v.numel() * v.element_size() for v in old.values() if isinstance(v, torch.Tensor)
                )

    @torch.no_grad()
    def _encode_video(self, data: bytes, options: dict) -> dict:
        key = self.media_key("video", data, options)
        cached = self._cached(key)
        if cached is not None:
            return cached
        processed = self.processor.video_processor(data, **options)
        backbone = self.model.model
        device = backbone.get_input_embeddings().weight.device
        frames_mask = processed.get("video_frames_mask")
        with self._lock:
            features = backbone.get_video_features(
                processed["pixel_values_videos"].to(device, backbone.dtype),
                None if frames_mask is None else frames_mask.to(device),
            )
        value = {"visual_tokens": features.visual_tokens[:1].detach(), "num_slots_used": features.num_slots_used[:1],
                 "num_frames": processed["pixel_values_videos"].shape[1]}  # fmt: skip
        self._store(key, value)
        return value

    @torch.no_grad()
    def _encode_image(self, data: bytes) -> dict:
        from PIL import Image

        key = self.media_key("image", data, {})
        cached = self._cached(key)
        if cached is not None:
            return cached
        with Image.open(io.BytesIO(data)) as image:
            pixels = self.processor.image_processor([image.convert("RGB")], return_tensors="pt")["pixel_values"]
        backbone = self.model.model
        device = backbone.get_input_embeddings().weight.device
        with self._lock:
            features = backbone.get_image_features(pixels.to(device, backbone.dtype))
        value = {"image_features": features.detach()}
        self._store(key, value)
        return value

    def encode(self, messages: list[dict], media: list[tuple[str, bytes]], options: dict | None = None):
        """The compact prompt of one chat.

        Args:
            messages: the chat, with `{"type": "video"}` / `{"type": "image"}` blocks where the media go.
            media: `(kind, bytes)` per block, in reading order (`kind` is "video" or "image").
            options: video sampling options (`num_frames`, `fps`, `sampling`, ...).

        Returns:
            `(embeds, info)`: the `(seq_len, hidden)` tensor and a dict with `frames` (per video) and `cache_hits`.
        """
        from .modeling_videollamb import VideoLlambVideoFeatures

        options = dict(options or {})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids, _ = self.processor._tokenize_prompt(text, add_special_tokens=True)
        hits_before = self.hits
        videos = [self._encode_video(data, options) for kind, data in media if kind == "video"]
        images = [self._encode_image(data) for kind, data in media if kind == "image"]
        inputs = {"input_ids": torch.tensor([ids], dtype=torch.long)}
        if videos:
            inputs["video_features"] = VideoLlambVideoFeatures(
                visual_tokens=torch.cat([v["visual_tokens"] for v in videos]),
                num_slots_used=torch.cat([v["num_slots_used"] for v in videos]),
            )
        if images:
            inputs["image_features"] = torch.cat([v["image_features"] for v in images])
        with self._lock:
            embeds = prompt_embeds_from_inputs(self.model, inputs)[0]
        info = {"frames": [v["num_frames"] for v in videos], "cache_hits": self.hits - hits_before}
        return embeds, info


class VLLMClient:
    """A blocking client of a vLLM server's Completions API on prompt embeddings (vLLM's documented wire format),
    for batch work (`videollamb-hf eval` / `niavh --backend vllm`); `videollamb-hf serve` has its own async one.

    Args:
        url: the vLLM server (`http://127.0.0.1:8001`).
        model: the name it serves the export under (default: the first it lists).
        timeout: seconds for one call; an unreachable server or a timeout raises `ConnectionError`.
        max_concurrency: requests in flight at once in `complete_many` (vLLM batches them).
    """

    def __init__(self, url: str, model: str | None = None, timeout: float = 600.0, max_concurrency: int = 32):
        import httpx

        self._httpx = httpx
        self.url, self._model, self.max_concurrency = url.rstrip("/"), model, max_concurrency
        self._client = httpx.Client(base_url=self.url, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs):
        try:
            response = self._client.request(method, path, **kwargs)
        except self._httpx.HTTPError as error:
            raise ConnectionError(f"The vLLM server at {self.url} is unreachable or timed out: {error}") from None
        if response.status_code >= 400:
            raise ValueError(f"vLLM at {self.url} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._call("GET", "/v1/models")["data"][0]["id"]
        return self._model

    def complete(self, embeds: torch.Tensor, max_tokens: int, temperature: float = 0.0, **options) -> dict:
        """One completion of a `(seq_len, hidden)` prompt: `{"token_ids", "text", "finish_reason"}` (`text` as vLLM
        detokenizes; decode `token_ids` with the processor for transformers' text)."""
        body = {"model": self.model, "prompt_embeds": encode_prompt_embeds(embeds), "max_tokens": max_tokens,
                "temperature": temperature, "return_token_ids": True, **options}  # fmt: skip
        choice = self._call("POST", "/v1/completions", json=body)["choices"][0]
        return {"token_ids": choice.get("token_ids"), "text": choice["text"],
                "finish_reason": choice.get("finish_reason")}  # fmt: skip

    def stream(self, embeds: torch.Tensor, max_tokens: int, temperature: float = 0.0, **options):
        """`complete`, streamed (vLLM's server-sent events): yields `{"token_ids", "text", "finish_reason"}` per
        chunk, each with that chunk's new token ids and text."""
        body = {"model": self.model, "prompt_embeds": encode_prompt_embeds(embeds), "max_tokens": max_tokens,
                "temperature": temperature, "return_token_ids": True, "stream": True, **options}  # fmt: skip
        try:
            with self._client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ValueError(f"vLLM at {self.url} answered {response.status_code}: {response.text[:500]}")
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    yield {"token_ids": choice.get("token_ids") or [], "text": choice.get("text", ""),
                           "finish_reason": choice.get("finish_reason")}  # fmt: skip
        except self._httpx.HTTPError as error:
            raise ConnectionError(f"The vLLM server at {self.url} is unreachable or timed out: {error}") from None

    def complete_many(self, prompts: list[torch.Tensor], max_tokens: int, **options) -> list[dict]:
        """`complete` for several prompts, all in flight at once (up to `max_concurrency`), in order."""
        from concurrent.futures import ThreadPoolExecutor

        if len(prompts) <= 1:
            return [self.complete(p, max_tokens, **options) for p in prompts]
        with ThreadPoolExecutor(min(len(prompts), self.max_concurrency)) as pool:
            return list(pool.map(lambda p: self.complete(p, max_tokens, **options), prompts))

    def close(self):
        self._client.close()


def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """vLLM's wire format for prompt embeddings: base64 of the `torch.save`d `(seq_len, hidden)` tensor (the
    `prompt_embeds` field of a `/v1/completions` request)."""
    if embeds.ndim != 2:
        raise ValueError(f"Prompt embeddings must be 2D (seq_len, hidden), got shape {tuple(embeds.shape)}.")
    buffer = io.BytesIO()
    torch.save(embeds.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_prompt_embeds(payload: str) -> torch.Tensor:
    """The inverse of `encode_prompt_embeds` (tensors only: `torch.load(weights_only=True)`)."""
    return torch.load(io.BytesIO(base64.b64decode(payload)), weights_only=True)


def completion_request(embeds: torch.Tensor, model: str, **options) -> str:
    """The JSON body of a vLLM `/v1/completions` request on `embeds` (`max_tokens`, `temperature`, `stream`, ...
    as keyword arguments)."""
    return json.dumps({"model": model, "prompt_embeds": encode_prompt_embeds(embeds), **options})


__all__ = [
    "PromptEncoder",
    "VLLMClient",
    "build_prompt_embeds",
    "build_prompt_embeds_batch",
    "completion_request",
    "decode_prompt_embeds",
    "encode_prompt_embeds",
    "export_language_model",
    "prompt_embeds_from_inputs",
]
