"""Configuration of VideoLLaMB: LLaMA + LanguageBind video/image towers + a recurrent memory bridge.

Every number the modeling code needs lives here, with the released 7B model
(`ColorfulAI/VideoLLaMB`, projector `rmt_r_transformer1x`) as the default.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

from .original_format import download_options, original_config_to_videollamb


def _pipeline_registered_here(custom_pipelines: dict) -> bool:
    """Whether every task a saved repo names is registered in this process by a non-remote class."""
    from transformers.pipelines import PIPELINE_REGISTRY

    supported = PIPELINE_REGISTRY.get_supported_tasks()
    for task in custom_pipelines:
        if task not in supported:
            return False
        implementation = PIPELINE_REGISTRY.supported_tasks[task]["impl"]
        if not isinstance(implementation, type) or implementation.__module__.startswith("transformers_modules"):
            return False
    return True


@strict
class VideoLlambVisionConfig(CLIPVisionConfig):
    r"""
    The LanguageBind video tower: a CLIP ViT whose every encoder layer first runs a temporal attention block over
    groups of `temporal_group_size` consecutive frames (one attention per token position), then CLIP's spatial block.

    temporal_group_size (`int`, defaults to 8):
        Frames attended to together by the temporal blocks. LanguageBind hard-codes 8 whatever the number of
        frames, so a video's frame count must be a multiple of it.
    add_time_attn (`bool`, defaults to `True`):
        Whether the temporal blocks exist (LanguageBind_Video_merge: yes).
    """

    model_type = "videollamb_vision"
    base_config_key = "vision_config"

    hidden_size: int = 1024
    intermediate_size: int = 4096
    projection_dim: int = 768
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int | list[int] | tuple[int, int] | None = 224
    patch_size: int | list[int] | tuple[int, int] | None = 14
    temporal_group_size: int = 8
    add_time_attn: bool = True


_CLIP_L14_224 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# Vicuna-7B-v1.5 as in LLaVA-1.5-7B, with two rows added for the `<video>` and `<image>` placeholders.
_LLAMA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "vocab_size": 32002,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}


@strict
class VideoLlambConfig(PreTrainedConfig):
    r"""
    Configuration of [`VideoLlambForConditionalGeneration`].

    text_config (`dict` or `PreTrainedConfig`):
        The language model (LLaMA). Its vocabulary includes the two placeholder tokens.
    vision_config (`dict` or [`VideoLlambVisionConfig`]):
        The video tower (LanguageBind_Video_merge: CLIP ViT-L/14 at 224 px + temporal attention).
    image_config (`dict` or `CLIPVisionConfig`):
        The image tower (LanguageBind_Image: a plain CLIP ViT-L/14 at 224 px).
    video_token_id (`int`):
        Placeholder id; the processor expands each video into `video_seq_length` copies of it.
    image_token_id (`int`):
        Placeholder id; the processor expands each image into `image_seq_length` copies of it.
    vision_feature_layer (`int`):
        Hidden state of the towers given to the bridge (-2: output of the second-to-last layer; 0 is the embedding
        output after `pre_layrnorm`). Tower layers after it are never run.
    num_frames (`int`):
        Frames sampled per video by default.
    tower_chunk_size (`int`):
        Frames encoded by the towers at a time (a multiple of the temporal group size). Bounds tower activation
        memory whatever the video length; it does not change the outputs.
    freeze_towers (`bool`):
        Towers take no gradient (the released training). `False` makes them trainable.
    freeze_language_model (`bool`):
        The language model (and LM head) take no gradient: only the bridge and the projector train (with
        `freeze_towers`, "bridge only"). Default `False` (the released recipe trains the bridge and the LLM).
    recurrent_loss (`bool`):
        Train with the original's `LlavaLlamaForCausalLMRMT` loss: the prompt runs through the language model once
        per segment with that segment's tokens and one cross-entropy is taken over all of them, so the loss reaches
        the bridge at every recurrent step (`VideoLlambForConditionalGeneration.recurrent_loss`, used by
        `videollamb_hf.sft`'s trainer). Training through any other path then fails loudly.
    train_frame_flip (`bool`):
        Frame augmentation: in training mode only, each video is flipped horizontally with probability 0.5 (the
        original flips at random even at inference; we never do in eval mode).
    num_memory_tokens (`int`):
        Recurrent memory tokens carried from segment to segment.
    bridge_num_layers (`int`):
        Transformer layers of the memory bridge (`rmt_r_transformer1x`: 1).
    bridge_hidden_size (`int`):
        Width of the bridge; equals the towers' hidden size.
    bridge_num_attention_heads (`int`):
        Attention heads of the bridge and of the retriever.
    bridge_intermediate_size (`int`):
        Feed-forward width of the bridge layers.
    bridge_hidden_act (`str`):
        Activation of the bridge feed-forward.
    bridge_layer_norm_eps (`float`):
        Epsilon of the bridge's post-layer-norms.
    bridge_hidden_dropout (`float`):
        Dropout after the bridge's dense layers (training only).
    bridge_attention_dropout (`float`):
        Dropout on the bridge's attention probabilities (training only).
    projector_hidden_act (`str`):
        Activation after the linear projector from bridge width to the language model width.
    pooled_grid_size (`int`):
        Patch tokens of each frame are average-pooled to a `pooled_grid_size x pooled_grid_size` grid.
    max_frames_per_segment (`int`):
        A segment longer than this is sub-sampled to this many frames before the bridge.
    scene_tiling_mode (`str`):
        `"top_k"` (the released bridge: the `scene_tiling_top_k` deepest gaps) or `"threshold"` (gaps deeper than
        mean + `scene_tiling_alpha` * std, at most `scene_tiling_max_boundaries`).
    segment_position_embeddings (`int`):
        Rows of a learned per-segment position table; row `s` is added to every pooled token of segment `s` before
        the bridge. 0 (the released bridge): none. `ColorfulAI/VideoLLaMB_Mem`: 1024 (`abs_vid_pe`).
    bridge_memory_cache (`str`):
        What the retriever attends over: `"memories"` (the released bridge: the new memory of every segment so
        far) or `"segment_states"` (VideoLLaMB_Mem: the bridge outputs of every segment's tokens so far).
    bridge_output (`str`):
        What reaches the language model for a video: `"last_segment"` (the released bridge: the last segment's
        tokens, the memory carries the rest) or `"memories"` (VideoLLaMB_Mem: the refreshed memory after every
        segment, `num_memory_tokens` per segment). For an image, `"memories"` gives its refreshed memory (the
        retriever over its own tokens) instead of its tokens.
    max_image_like_frames (`int`):
        With `bridge_output="memories"`, a video of at most this many frames is encoded frame by frame like
        images (VideoLLaMB_Mem: 3); 0: never.
    has_image_tower (`bool`):
        Whether the model has an image tower. False for a video-only checkpoint (the authors' config names no
        `mm_image_tower`, e.g. `X: ["VIDEO"]`): no image tower is built and an image input is an error.
    initializer_range (`float`):
        Standard deviation of the random initialisation of linear layers.
    """

    model_type = "videollamb"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=_LLAMA_7B),
        "vision_config": SubConfigSpec(config_class=VideoLlambVisionConfig),
        "image_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=_CLIP_L14_224
        ),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_config: dict | PreTrainedConfig | None = None
    video_token_id: int = 32000
    image_token_id: int = 32001
    vision_feature_layer: int = -2
    num_frames: int = 16
    tower_chunk_size: int = 64
    freeze_towers: bool = True
    freeze_language_model: bool = False
    recurrent_loss: bool = False
    train_frame_flip: bool = False
    num_memory_tokens: int = 32
    bridge_num_layers: int = 1
    bridge_hidden_size: int = 1024
    bridge_num_attention_heads: int = 8
    bridge_intermediate_size: int = 4096
    bridge_hidden_act: str = "gelu"
    bridge_layer_norm_eps: float = 1e-12
    bridge_hidden_dropout: float = 0.1
    bridge_attention_dropout: float = 0.1
    projector_hidden_act: str = "gelu"
    pooled_grid_size: int = 12
    max_frames_per_segment: int = 8
    scene_tiling_mode: Literal["top_k", "threshold"] = "top_k"
    scene_tiling_top_k: int = 3
    scene_tiling_alpha: float = 0.5
    scene_tiling_max_boundaries: int = 15
    segment_position_embeddings: int = 0
    bridge_memory_cache: Literal["memories", "segment_states"] = "memories"
    bridge_output: Literal["last_segment", "memories"] = "last_segment"
    max_image_like_frames: int = 0
    has_image_tower: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    @property
    def temporal_group_size(self) -> int:
        """Frames a video's count must be a multiple of (1 for a tower without temporal attention)."""
        return self.vision_config.temporal_group_size if self.vision_config.add_time_attn else 1

    @property
    def max_segments(self) -> int:
        """The most segments SceneTilling can cut a video into."""
        if self.scene_tiling_mode == "top_k":
            return self.scene_tiling_top_k + 1
        return self.scene_tiling_max_boundaries + 1

    @property
    def image_seq_length(self) -> int:
        """Slots one image takes in `input_ids`: its pooled patch tokens (or its memory)."""
        if self.bridge_output == "memories":
            return self.num_memory_tokens
        return self.pooled_grid_size**2

    @property
    def video_seq_length(self) -> int:
        """Slots one video takes in `input_ids`: the most visual tokens its last segment can give (or the
        memories of the most segments)."""
        if self.bridge_output == "memories":
            return self.num_memory_tokens * max(self.max_segments, self.max_image_like_frames)
        return self.max_frames_per_segment * self.pooled_grid_size**2

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_consistency()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        with download_options(**kwargs):
            config_dict, unused = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
            if config_dict.get("model_type") == "llava_llama":
                # Where a tower config cannot be read, the towers are derived from the checkpoint's tensors.
                unused.setdefault("name_or_path", str(pretrained_model_name_or_path))
                return cls.from_dict(config_dict, **unused)
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Also reads the authors' LLaVA-layout configs (`model_type: "llava_llama"`, flat `mm_*` fields): they are
        translated (see `original_format.original_config_to_videollamb`); `video_tower=` /
        `image_tower=` (folders or hub ids) override the LanguageBind tower paths they name."""
        video_tower, image_tower = kwargs.pop("video_tower", None), kwargs.pop("image_tower", None)
        if "custom_pipelines" in config_dict and _pipeline_registered_here(config_dict["custom_pipelines"]):
            # Saved repos name our pipeline as remote code (for machines without this package); where the package
            # has registered it, use that one, with no `trust_remote_code` needed.
            config_dict = {k: v for k, v in config_dict.items() if k != "custom_pipelines"}
        if config_dict.get("model_type") == "llava_llama":
            fields = original_config_to_videollamb(
                config_dict, video_tower=video_tower, image_tower=image_tower, checkpoint=kwargs.get("name_or_path")
            )
            layout = fields.pop("_original_layout")
            # Our own fields given as keyword arguments (`num_frames=32`, ...) apply before validation.
            # (`dtype` / `torch_dtype` stay with transformers' own handling: "auto", what pipelines pass, is no dtype.)
            ours = [k for k in kwargs if k in cls.__dataclass_fields__ and k not in ("dtype", "torch_dtype")]
            fields.update({k: kwargs.pop(k) for k in ours})
            loaded = super().from_dict(fields, **kwargs)
            config = loaded[0] if isinstance(loaded, tuple) else loaded
            # Not serialised (see `to_dict`): only the loader and the vocabulary converter read it.
            config._original_layout = layout
            return loaded
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_original_layout", None)
        return output

    def _check_consistency(self):
        """The numbers must fit together; raises `ValueError` naming the fields."""
        for name in ("vision_config", "image_config") if self.has_image_tower else ("vision_config",):
            tower = getattr(self, name)
            if tower.hidden_size != self.bridge_hidden_size:
                raise ValueError(
                    f"`{name}.hidden_size` ({tower.hidden_size}) must equal `bridge_hidden_size` "
                    f"({self.bridge_hidden_size}): the bridge reads the towers' hidden states."
                )
            grid = tower.image_size // tower.patch_size
            if self.pooled_grid_size > grid:
                raise ValueError(
                    f"`pooled_grid_size` ({self.pooled_grid_size}) is larger than the patch grid of `{name}` ({grid})."
                )
        if self.bridge_hidden_size % self.bridge_num_attention_heads != 0:
            raise ValueError(
                f"`bridge_hidden_size` ({self.bridge_hidden_size}) is not a multiple of "
                f"`bridge_num_attention_heads` ({self.bridge_num_attention_heads})."
            )
        group = self.vision_config.temporal_group_size
        if self.tower_chunk_size < group or self.tower_chunk_size % group != 0:
            raise ValueError(
                f"`tower_chunk_size` ({self.tower_chunk_size}) must be a positive multiple of the temporal group "
                f"size ({group}): temporal attention must never straddle two chunks."
            )
        vocab = self.text_config.vocab_size
        for name in ("video_token_id", "image_token_id"):
            if not 0 <= getattr(self, name) < vocab:
                raise ValueError(f"`{name}` ({getattr(self, name)}) is outside the text vocabulary (size {vocab}).")


class VideoLlambOriginalConfig(PreTrainedConfig):
    """Registers the authors' `model_type: "llava_llama"` with `AutoConfig`: loading such a config gives the
    translated [`VideoLlambConfig`] (or a clear error for LLaVA-layout checkpoints that are not VideoLLaMB)."""

    model_type = "llava_llama"

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        return VideoLlambConfig.from_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        return VideoLlambConfig.from_pretrained(pretrained_model_name_or_path, **kwargs)


__all__ = ["VideoLlambConfig", "VideoLlambOriginalConfig", "VideoLlambVisionConfig"]
