"""VideoLlambProcessor: LLaMA tokenizer + image and video processors + the `llava_v1` chat template.

The token sequence the language model finally sees is the original's (`mm_utils.tokenizer_x_token`): the prompt
is cut at each `<video>` / `<image>`, every piece is tokenized on its own (BOS on the first piece only), and each
placeholder becomes a block of `video_seq_length` / `image_seq_length` placeholder ids that the model fills (its
first k slots) and masks (the rest). Tokenizing pieces separately is a quirk we keep: the text after a placeholder
starts with sentencepiece's dummy prefix `▁` (`... ':' '▁' <video> '▁' '<0x0A>' ...`).
"""

import re
from pathlib import Path

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

from .video_processing_videollamb import VideoLlambVideosKwargs


SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# llava_v1: "{system} USER: <video>\n{question} ASSISTANT: {answer}</s>USER: ... ASSISTANT:"
# Media blocks of a user turn come first, each as its placeholder and a newline (the original puts `<video>\n`
# before the question); text blocks follow, joined by a space. `{% generation %}` marks what assistant-only loss
# trains on (the answer and its `</s>`). A system message replaces the default system text.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='" + SYSTEM_PROMPT.replace("'", "\\'") + "') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set ns.system = messages[0]['content'] -%}"
    "{%- else -%}{%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join(' ') -%}{%- endif -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- ns.system + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'video' -%}{{- '<video>\n' -}}{%- elif block['type'] == 'image' -%}{{- '<image>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -}}"
    "{%- endif -%}"
    "{{- ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}"
    "{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{{- message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join(' ') -}}{%- endif -%}"
    "{{- '</s>' -}}"
    "{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


class VideoLlambProcessorKwargs(ProcessingKwargs, total=False):
    """Lets `apply_chat_template(..., processor_kwargs=...)` route our video options (`sampling`, ...)."""

    videos_kwargs: VideoLlambVideosKwargs


def _is_frame(item) -> bool:
    return hasattr(item, "convert") or (hasattr(item, "ndim") and item.ndim == 3)


def _is_single_video(item) -> bool:
    if isinstance(item, (str, Path, bytes, bytearray, memoryview)) or hasattr(item, "read"):
        return True
    if hasattr(item, "ndim"):
        return item.ndim == 4
    return isinstance(item, (list, tuple)) and bool(item) and all(_is_frame(f) for f in item)


def _is_single_image(item) -> bool:
    return isinstance(item, (str, Path)) or _is_frame(item)


def flatten_media(items, is_single) -> list:
    """One medium, a list of them, or one list per text (what `apply_chat_template` passes) -> a flat list."""
    if items is None:
        return []
    if is_single(items):
        return [items]
    flat = []
    for item in items:
        flat.extend([item] if is_single(item) else list(item))
    return flat


class VideoLlambProcessor(ProcessorMixin):
    r"""Processor of VideoLLaMB: a LLaMA tokenizer, [`VideoLlambImageProcessor`] and [`VideoLlambVideoProcessor`].

    Args:
        image_processor, video_processor, tokenizer: the parts.
        chat_template (`str`, *optional*): defaults to the `llava_v1` template.
        video_seq_length (`int`, defaults to 1152): placeholder ids per video (`config.video_seq_length`).
        image_seq_length (`int`, defaults to 144): placeholder ids per image (`config.image_seq_length`).
    """

    attributes = ["image_processor", "video_processor", "tokenizer"]
    valid_processor_kwargs = VideoLlambProcessorKwargs
    video_token = "<video>"
    image_token = "<image>"

    def __init__(
        self,
        image_processor=None,
        video_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        video_seq_length: int = 1152,
        image_seq_length: int = 144,
        **kwargs,
    ):
        if tokenizer is not None:
            missing = [t for t in (self.video_token, self.image_token) if t not in tokenizer.get_vocab()]
            if missing:
                tokenizer.add_tokens(missing, special_tokens=True)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.unk_token  # LLaVA-1.5 pads with <unk>
        self.video_seq_length = video_seq_length
        self.image_seq_length = image_seq_length
        super().__init__(image_processor, video_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' `from_pretrained`; for the authors' LLaVA-layout repos (`model_type: "llava_llama"`, no
        processor files) the processor is built from the repo's tokenizer (`<video>` and `<image>` added as the
        two ids after its vocabulary), our default video/image processors at the towers' resolution, the
        `llava_v1` chat template and the slot counts of the translated config."""
        from transformers.configuration_utils import PreTrainedConfig

        download = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only", "revision", "subfolder")
                    if kwargs.get(k) is not None}  # fmt: skip
        try:
            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **download)
        except (OSError, ValueError):
            config_dict = {}
        if config_dict.get("model_type") != "llava_llama":
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls.from_original_checkpoint(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_original_checkpoint(cls, pretrained_model_name_or_path, **kwargs):
        """The processor of an original (`llava_llama`) VideoLLaMB repo; see `from_pretrained`."""
        from transformers import AutoTokenizer

        from .configuration_videollamb import VideoLlambConfig
        from .image_processing_videollamb import VideoLlambImageProcessor
        from .video_processing_videollamb import VideoLlambVideoProcessor

        video_tower, image_tower = kwargs.pop("video_tower", None), kwargs.pop("image_tower", None)
        config = VideoLlambConfig.from_pretrained(
            pretrained_model_name_or_path, video_tower=video_tower, image_tower=image_tower, **kwargs
        )
        config_dict, _ = VideoLlambConfig.get_config_dict(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)

        def sizes(tower):
            return {"shortest_edge": tower.image_size}, {"height": tower.image_size, "width": tower.image_size}

        size, crop = sizes(config.vision_config)
        video_options = {}
        if config.bridge_output == "memories":
            # VideoLLaMB_Mem, as the NIAVH runner feeds it: 1 frame per second (at most 512, no rounding), CLIP's
            # image processor on each frame.
            video_options = {"fps": 1, "max_frames": 512, "frame_transform": "clip"}
        video_processor = VideoLlambVideoProcessor(
            size=size, crop_size=crop, num_frames=config.num_frames, temporal_group_size=config.temporal_group_size,
            **video_options,
        )  # fmt: skip
        size, crop = sizes(config.image_config)
        image_processor = VideoLlambImageProcessor(
            size=size, crop_size=crop, do_pad=config_dict.get("image_aspect_ratio") == "pad"
        )
        processor = cls(
            image_processor=image_processor,
            video_processor=video_processor,
            tokenizer=tokenizer,
            video_seq_length=config.video_seq_length,
            image_seq_length=config.image_seq_length,
        )
        if (processor.video_token_id, processor.image_token_id) != (config.video_token_id, config.image_token_id):
            raise ValueError(
                f"The tokenizer of {pretrained_model_name_or_path} gives `<video>`/`<image>` the ids "
                f"{processor.video_token_id}/{processor.image_token_id}, but the model reserves "
                f"{config.video_token_id}/{config.image_token_id} (the two rows after the {config.video_token_id}-row "
                "vocabulary): the tokenizer does not match this checkpoint's vocabulary."
            )
        return processor

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # transformers' top-level AutoVideoProcessor is a placeholder without torchvision: load our parts directly.
        from transformers import AutoTokenizer

        from .image_processing_videollamb import VideoLlambImageProcessor
        from .video_processing_videollamb import VideoLlambVideoProcessor

        return [
            VideoLlambImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs),
            VideoLlambVideoProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs),
            AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs),
        ]

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """transformers' `apply_chat_template`. Our template writes no BOS (the rendered prompt is the original's
        text), so a tokenized chat always gets the tokenizer's BOS, even when a caller asks for no special tokens
        on the assumption that the template wrote it (TRL's collator does): exactly one BOS either way."""
        if kwargs.get("tokenize"):
            processor_kwargs = dict(kwargs.get("processor_kwargs") or {})
            if processor_kwargs.get("add_special_tokens") is False:
                processor_kwargs["add_special_tokens"] = True
                kwargs["processor_kwargs"] = processor_kwargs
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def check_argument_for_proper_class(self, argument_name, argument):
        # transformers' check reads a dummy mapping for video processors when torchvision is absent.
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"`video_processor` must be a VideoProcessorMixin, got {type(argument).__name__}.")
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        return self.video_token * self.video_seq_length

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length

    def _tokenize_piece(self, piece: str, start: int) -> tuple[list[int], list[tuple[int, int]]]:
        """A piece of prompt as the original's slow LLaMA tokenizer sees it (without BOS), with character spans
        in the whole prompt.

        The original tokenizes each piece with the dummy prefix `▁`; a fast tokenizer adds it only when the piece
        does not start with a space, so a leading space is doubled to get the original's `▁▁...`."""
        if not piece:
            return [], []
        shift = 0
        if piece.startswith(" "):
            piece, shift = " " + piece, 1
        encoded = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        spans = [(max(0, a - shift) + start, max(0, b - shift) + start) for a, b in encoded["offset_mapping"]]
        return encoded["input_ids"], spans

    def _tokenize_prompt(self, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of one prompt (placeholders expanded) and each token's character span in `text` (empty spans
        for BOS and placeholders)."""
        ids, spans, position = [], [], 0
        bos = self.tokenizer.bos_token
        if bos and text.startswith(bos):
            # The chat template writes BOS itself (so callers that tokenize without special tokens, like TRL's
            # collator, still get exactly one); the text after it is tokenized as the original's first piece.
            ids, spans, position, text = [self.tokenizer.bos_token_id], [(0, len(bos))], len(bos), text[len(bos) :]
            add_special_tokens = False
        if add_special_tokens and self.tokenizer.bos_token_id is not None:
            ids, spans = [self.tokenizer.bos_token_id], [(0, 0)]
        for piece in re.split(f"({re.escape(self.video_token)}|{re.escape(self.image_token)})", text):
            if piece in (self.video_token, self.image_token):
                video = piece == self.video_token
                count = self.video_seq_length if video else self.image_seq_length
                ids += [self.video_token_id if video else self.image_token_id] * count
                spans += [(position, position)] * count
            else:
                piece_ids, piece_spans = self._tokenize_piece(piece, position)
                ids += piece_ids
                spans += piece_spans
            position += len(piece)
        return ids, spans

    def __call__(self, text=None, images=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        """Tokenize `text` (a string or a list, with `<video>` / `<image>` placeholders) and process the media.

        Args:
            text (`str` or `list[str]`).
            images: images for the `<image>` placeholders, in reading order (flat or one list per text).
            videos: videos for the `<video>` placeholders, in reading order (flat or one list per text).
            kwargs: video options (`num_frames`, `fps`, `sampling`, `start_time`, `end_time`, `return_metadata`,
                ...), `padding` (default: to the longest), `padding_side`, `add_special_tokens`, `return_tensors`.

        Returns:
            `BatchFeature`: `input_ids`, `attention_mask`, and `pixel_values_videos` (+ `video_frames_mask`) /
            `pixel_values` when media are given.
        """
        if text is None:
            raise ValueError("`text` is required: a prompt with one <video> or <image> per video or image.")
        texts = [text] if isinstance(text, str) else list(text)
        add_special_tokens = kwargs.pop("add_special_tokens", True)
        padding = kwargs.pop("padding", True)
        padding_side = kwargs.pop("padding_side", None) or self.tokenizer.padding_side
        return_tensors = kwargs.pop("return_tensors", "pt")
        return_offsets = kwargs.pop("return_offsets_mapping", False)
        return_replacements = kwargs.pop("return_text_replacement_offsets", False)
        pad_to_multiple_of = kwargs.pop("pad_to_multiple_of", None)
        truncation, max_length = kwargs.pop("truncation", False), kwargs.pop("max_length", None)
        for key in ("do_sample_frames", "sanitize_control_tokens"):
            kwargs.pop(key, None)
        videos_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in VideoLlambVideosKwargs.__annotations__}
        videos_kwargs.update(kwargs.pop("videos_kwargs", {}) or {})
        images_kwargs = kwargs.pop("images_kwargs", {}) or {}
        kwargs.pop("text_kwargs", None)
        if kwargs:
            raise TypeError(f"Unexpected processor arguments: {sorted(kwargs)}.")

        video_list = flatten_media(videos, _is_single_video)
        image_list = flatten_media(images, _is_single_image)
        num_video_tags = sum(t.count(self.video_token) for t in texts)
        num_image_tags = sum(t.count(self.image_token) for t in texts)
        if num_video_tags != len(video_list):
            raise ValueError(
                f"The text has {num_video_tags} {self.video_token} placeholder(s) but {len(video_list)} video(s) were given."
            )
        if num_image_tags != len(image_list):
            raise ValueError(
                f"The text has {num_image_tags} {self.image_token} placeholder(s) but {len(image_list)} image(s) were given."
            )

        data = {}
        if video_list:
            data.update(self.video_processor(video_list, **videos_kwargs))
        if image_list:
            data.update(self.image_processor(image_list, **images_kwargs))

        encoded = [self._tokenize_prompt(t, add_special_tokens) for t in texts]
        rows, spans = [ids for ids, _ in encoded], [sp for _, sp in encoded]
        if truncation and max_length is not None and any(len(r) > max_length for r in rows):
            # Cutting a prompt would cut a placeholder run or the answer: refuse instead of truncating.
            longest = max(len(r) for r in rows)
            raise ValueError(
                f"A prompt has {longest} tokens (placeholder slots included), more than max_length={max_length}; "
                "truncating it would cut a video's or image's slots. Raise max_length."
            )
        masks = [[1] * len(r) for r in rows]
        if padding or len(rows) > 1 or pad_to_multiple_of:
            width = max(len(r) for r in rows)
            if pad_to_multiple_of:
                width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
            pad = self.tokenizer.pad_token_id
            for i, row in enumerate(rows):
                extra = width - len(row)
                if padding_side == "left":
                    rows[i], masks[i], spans[i] = (
                        [pad] * extra + row,
                        [0] * extra + masks[i],
                        [(0, 0)] * extra + spans[i],
                    )
                else:
                    rows[i], masks[i], spans[i] = (
                        row + [pad] * extra,
                        masks[i] + [0] * extra,
                        spans[i] + [(0, 0)] * extra,
                    )
        if return_tensors == "pt":
            data["input_ids"] = torch.tensor(rows, dtype=torch.long)
            data["attention_mask"] = torch.tensor(masks, dtype=torch.long)
        else:
            data["input_ids"], data["attention_mask"] = rows, masks
        if return_offsets:
            data["offset_mapping"] = spans  # spans in the unexpanded prompt text
        if return_replacements:
            data["text_replacement_offsets"] = [[] for _ in texts]  # spans are already in prompt coordinates
        return BatchFeature(data=data)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "pixel_values_videos", "video_frames_mask"]


__all__ = ["CHAT_TEMPLATE", "SYSTEM_PROMPT", "VideoLlambProcessor"]
