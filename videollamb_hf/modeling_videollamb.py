"""VideoLLaMB: LLaVA-1.5 with LanguageBind towers and a recurrent memory bridge over SceneTilling segments.

Data flow for one video (shapes for the released 7B model):

    pixel_values_videos (T, 3, 224, 224)
      -> video tower: CLIP ViT-L/14 + temporal attention in groups of 8, hidden state -2    (T, 257, 1024)
      -> CLS tokens -> SceneTilling -> segments;  patches -> 12 x 12 average pool             (T, 144, 1024)
      -> for each segment (<= 8 frames): memory bridge step [memory ; tokens] -> memory'
         then the retriever refreshes memory' from the cache of all memories so far
      -> last segment's tokens -> projector                                                   (k <= 1152, 4096)
      -> the first k of the video's 1152 slots in `inputs_embeds`; the other slots are masked out of attention
         and skipped by the position ids, so LLaMA computes what the original computes on its compact sequence.

Quirks of the released weights that we keep (see `ORIGINAL_VIDEOLLAMB.md`) are named where they happen.
"""

import contextlib
import logging as std_logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoderLayer,
    CLIPPreTrainedModel,
    CLIPVisionEmbeddings,
)
from transformers.utils import ModelOutput, TransformersKwargs, logging

from .configuration_videollamb import VideoLlambConfig, VideoLlambVisionConfig
from .original_format import DOWNLOAD_KWARG_NAMES, download_options, finish_original_loading
from .quantization import UNQUANTIZED_MODULES, keep_unquantized
from .scene_tiling import boundaries_to_segments, find_scene_boundaries


logger = logging.get_logger(__name__)

# Keyword arguments the language model understands; anything else a trainer passes along is dropped.
_LANGUAGE_MODEL_KWARGS = frozenset(TransformersKwargs.__annotations__) - {"position_ids"}


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class VideoLlambVideoFeatures(ModelOutput):
    """What the towers and the memory bridge make of a batch of videos; pass it back as `video_features=` to reuse.

    Args:
        visual_tokens (`torch.Tensor` of shape `(num_videos, video_seq_length, text_hidden_size)`):
            Projected tokens of each video's last segment, padded with zeros after `num_slots_used[i]`.
        num_slots_used (`torch.LongTensor` of shape `(num_videos,)`):
            How many of the video's `video_seq_length` slots carry tokens (`min(8, len(last segment)) * 144`).
        scene_boundaries (`tuple[list[int]]`):
            Per video, the SceneTilling boundaries (frame indices, each the last frame of a segment).
        memory (`torch.Tensor` of shape `(num_videos, num_memory_tokens, bridge_hidden_size)`):
            Final memory state after the last segment's retrieval.
        memory_cache (`tuple[torch.Tensor]`):
            Per video, the memories of every segment, `(num_segments * num_memory_tokens, bridge_hidden_size)`.
        segment_tokens (`tuple[list[torch.Tensor]]`, *optional*):
            With `keep_segments=True`: per video, the projected tokens of every segment (for the recurrent loss).
    """

    visual_tokens: torch.Tensor | None = None
    num_slots_used: torch.LongTensor | None = None
    scene_boundaries: tuple[list[int], ...] | None = None
    memory: torch.Tensor | None = None
    memory_cache: tuple[torch.Tensor, ...] | None = None
    segment_tokens: tuple[list[torch.Tensor], ...] | None = None

    def select(self, indices: list[int]) -> "VideoLlambVideoFeatures":
        """The features of the videos at `indices`, in that order (repeats allowed)."""
        index = torch.tensor(indices, dtype=torch.long, device=self.visual_tokens.device)
        return VideoLlambVideoFeatures(
            visual_tokens=self.visual_tokens.index_select(0, index),
            num_slots_used=self.num_slots_used.index_select(0, index.to(self.num_slots_used.device)),
            scene_boundaries=tuple(self.scene_boundaries[i] for i in indices),
            memory=self.memory.index_select(0, index.to(self.memory.device)),
            memory_cache=tuple(self.memory_cache[i] for i in indices),
        )

    def __len__(self) -> int:
        return self.visual_tokens.shape[0]


class _FrameChunks:
    """Per-frame tensors kept as the chunks they were computed in, `(t_i, ...)` each: what `bridge_videos` needs
    of a `(sum t_i, ...)` tensor (`shape`, `device`, `index_select` along frames) without one joined copy."""

    def __init__(self, chunks: list[torch.Tensor]):
        self.chunks = chunks
        self.offsets = torch.tensor([0] + [c.shape[0] for c in chunks]).cumsum(0)
        self.shape = torch.Size([int(self.offsets[-1]), *chunks[0].shape[1:]])
        self.device, self.dtype = chunks[0].device, chunks[0].dtype

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError("_FrameChunks selects frames (dim 0) only.")
        index = index.to("cpu", torch.long)
        which = torch.searchsorted(self.offsets, index, right=True) - 1
        return torch.stack([self.chunks[c][i - self.offsets[c]] for c, i in zip(which.tolist(), index.tolist())])


def _joined(frames) -> torch.Tensor:
    return torch.cat(frames.chunks) if isinstance(frames, _FrameChunks) else frames


@dataclass
class VideoLlambModelOutputWithPast(BaseModelOutputWithPast):
    """[`VideoLlambModel`] output.

    Args:
        video_features ([`VideoLlambVideoFeatures`], *optional*): the encoded videos, when videos were given.
        attention_mask (`torch.LongTensor` of shape `(batch_size, past + sequence_length)`, *optional*):
            The mask the language model used: the input mask with the unused video slots zeroed. Set only when
            videos were merged; generation carries it to the next steps.
        position_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            The positions the language model used (unused slots skipped). Set only when videos were merged.
    """

    video_features: VideoLlambVideoFeatures | None = None
    attention_mask: torch.Tensor | None = None
    position_ids: torch.LongTensor | None = None


@dataclass
class VideoLlambCausalLMOutputWithPast(CausalLMOutputWithPast):
    """[`VideoLlambForConditionalGeneration`] output; the extra fields are those of [`VideoLlambModelOutputWithPast`]."""

    video_features: VideoLlambVideoFeatures | None = None
    attention_mask: torch.Tensor | None = None
    position_ids: torch.LongTensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# Video tower (LanguageBind_Video_merge)
# ---------------------------------------------------------------------------------------------------------------


class VideoLlambVideoEncoderLayer(CLIPEncoderLayer):
    """CLIP's encoder layer preceded by LanguageBind's temporal block, which attends over the frames of a group
    separately for each token position: `x = x + temporal_emb; x = x + temporal_attn(temporal_layer_norm1(x))`."""

    def __init__(self, config: VideoLlambVisionConfig):
        super().__init__(config)
        self.temporal_group_size = config.temporal_group_size
        self.temporal_embedding = nn.Parameter(torch.zeros(1, config.temporal_group_size, config.hidden_size))
        self.temporal_attn = CLIPAttention(config)
        self.temporal_layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        num_frames, num_tokens, dim = hidden_states.shape
        group = self.temporal_group_size
        num_groups = num_frames // group
        # (G, t, N, D): the embedding of frame t is added to every token of that frame. Quirk kept from
        # LanguageBind: the residual is taken after the embedding was added.
        hidden_states = hidden_states.view(num_groups, group, num_tokens, dim) + self.temporal_embedding[:, :, None]
        residual = hidden_states
        per_token = hidden_states.transpose(1, 2).reshape(num_groups * num_tokens, group, dim)  # (G*N, t, D)
        per_token, _ = self.temporal_attn(self.temporal_layer_norm1(per_token))
        hidden_states = residual + per_token.view(num_groups, num_tokens, group, dim).transpose(1, 2)
        hidden_states = hidden_states.reshape(num_frames, num_tokens, dim)
        return super().forward(hidden_states, attention_mask, **kwargs)


class VideoLlambVideoEncoder(nn.Module):
    def __init__(self, config: VideoLlambVisionConfig):
        super().__init__()
        # Without temporal attention (VideoLLaMB_Mem's CLIP tower) the frames go through CLIP's own layers.
        layer = VideoLlambVideoEncoderLayer if config.add_time_attn else CLIPEncoderLayer
        self.layers = nn.ModuleList([layer(config) for _ in range(config.num_hidden_layers)])


class VideoLlambVideoTower(CLIPPreTrainedModel):
    """LanguageBind's video tower: CLIP vision embeddings + encoder layers with temporal attention. Frames come in
    flat, `(num_frames, 3, H, W)`, grouped `temporal_group_size` at a time in order; `post_layernorm` is kept so
    that LanguageBind checkpoints load whole, though VideoLLaMB reads an inner hidden state."""

    config: VideoLlambVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    _no_split_modules = ["VideoLlambVideoEncoderLayer", "CLIPVisionEmbeddings"]

    def __init__(self, config: VideoLlambVisionConfig):
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = VideoLlambVideoEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VideoLlambVideoEncoderLayer):
            init.normal_(module.temporal_embedding, std=self.config.hidden_size**-0.5)


def tower_hidden_state(tower: nn.Module, pixel_values: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """`hidden_states[feature_layer]` of a CLIP-style tower, running only the layers it needs.

    Args:
        tower: a module with `embeddings`, `pre_layrnorm` and `encoder.layers` (CLIP's vision model, our video tower).
        pixel_values (`torch.Tensor` of shape `(num_frames, 3, H, W)`).
        feature_layer (`int`): index into the hidden states (0 = embedding output after `pre_layrnorm`).

    Returns:
        `torch.Tensor` of shape `(num_frames, 1 + num_patches, hidden_size)`.
    """
    layers = tower.encoder.layers
    num_layers = feature_layer if feature_layer >= 0 else len(layers) + 1 + feature_layer
    if not 0 <= num_layers <= len(layers):
        raise ValueError(
            f"`vision_feature_layer` {feature_layer} is out of range for a tower of {len(layers)} layers."
        )
    hidden_states = tower.pre_layrnorm(tower.embeddings(pixel_values))
    for layer in layers[:num_layers]:
        hidden_states = layer(hidden_states, None)
    return hidden_states


def split_and_pool(hidden_states: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS tokens and average-pooled patch tokens of tower outputs.

    Args:
        hidden_states (`torch.Tensor` of shape `(num_frames, 1 + side * side, dim)`).
        grid (`int`): the patches are pooled to `grid x grid` (`AdaptiveAvgPool2d`).

    Returns:
        `(cls (num_frames, dim), pooled (num_frames, grid * grid, dim))`.
    """
    num_frames, num_tokens, dim = hidden_states.shape
    side = math.isqrt(num_tokens - 1)
    patches = hidden_states[:, 1:].transpose(1, 2).reshape(num_frames, dim, side, side)  # (T, D, h, w)
    pooled = F.adaptive_avg_pool2d(patches, grid).flatten(2).transpose(1, 2)  # (T, grid*grid, D)
    return hidden_states[:, 0], pooled


# ---------------------------------------------------------------------------------------------------------------
# Memory bridge
# ---------------------------------------------------------------------------------------------------------------


class VideoLlambBridgeOutput(nn.Module):
    """BERT-style post-norm residual: `layer_norm(dropout(dense(x)) + residual)`."""

    def __init__(self, input_size: int, config: VideoLlambConfig):
        super().__init__()
        self.dense = nn.Linear(input_size, config.bridge_hidden_size)
        self.dropout = nn.Dropout(config.bridge_hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.bridge_hidden_size, eps=config.bridge_layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.dropout(self.dense(hidden_states)) + residual)


class VideoLlambBridgeAttention(nn.Module):
    """Multi-head attention of `hidden_states` over `context` (itself by default), no mask and no positions, with
    the post-norm residual: `layer_norm(hidden_states + dropout(dense(attention)))`."""

    def __init__(self, config: VideoLlambConfig):
        super().__init__()
        width = config.bridge_hidden_size
        self.num_heads = config.bridge_num_attention_heads
        self.head_dim = width // self.num_heads
        self.attention_dropout = config.bridge_attention_dropout
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.output = VideoLlambBridgeOutput(width, config)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = hidden_states if context is None else context
        batch, query_len, width = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, query_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(context).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        value = self.v_proj(context).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.attention_dropout if self.training else 0.0
        )
        attended = attended.transpose(1, 2).reshape(batch, query_len, width)  # (B, Lq, D)
        return self.output(attended, hidden_states)


class VideoLlambBridgeLayer(GradientCheckpointingLayer):
    """One bridge transformer layer: self-attention then feed-forward, both post-norm."""

    def __init__(self, config: VideoLlambConfig):
        super().__init__()
        self.attention = VideoLlambBridgeAttention(config)
        # Quirk: each released bridge layer owns a cross-attention that is never called. It exists so that
        # checkpoints load with nothing missing or unexpected.
        self.cross_attention = VideoLlambBridgeAttention(config)
        self.intermediate = nn.Linear(config.bridge_hidden_size, config.bridge_intermediate_size)
        self.activation = ACT2FN[config.bridge_hidden_act]
        self.output = VideoLlambBridgeOutput(config.bridge_intermediate_size, config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.attention(hidden_states)
        return self.output(self.activation(self.intermediate(hidden_states)), hidden_states)


class VideoLlambRetriever(nn.Module):
    """Refreshes the memory from the cache of past memories: `layer_norm(m + dense(cross_attn(q=m, kv=cache)))`."""

    def __init__(self, config: VideoLlambConfig):
        super().__init__()
        self.cross_attention = VideoLlambBridgeAttention(config)
        # Quirk: the released retriever owns a self-attention that is never called (kept for loading).
        self.self_attention = VideoLlambBridgeAttention(config)

    def forward(self, memory: torch.Tensor, memory_cache: torch.Tensor) -> torch.Tensor:
        return self.cross_attention(memory, context=memory_cache)


class VideoLlambMemoryBridge(nn.Module):
    """The recurrent memory bridge, written as one step; the loop over segments is the caller's.

    `step(segment_tokens, memory, memory_cache) -> (segment_output, memory, memory_cache)`: the segment's tokens
    and the memory go through the bridge layers together; the first `num_memory_tokens` outputs are the new memory,
    which joins the cache; the retriever then refreshes it from the whole cache.
    """

    def __init__(self, config: VideoLlambConfig):
        super().__init__()
        self.num_memory_tokens = config.num_memory_tokens
        # The memory every video (and every image) starts from.
        self.read_memory_emb = nn.Parameter(torch.zeros(config.num_memory_tokens, config.bridge_hidden_size))
        # Quirk: a second memory parameter exists in the released checkpoint but is never used.
        self.memory_tokens = nn.Parameter(torch.zeros(config.num_memory_tokens, config.bridge_hidden_size))
        self.layers = nn.ModuleList([VideoLlambBridgeLayer(config) for _ in range(config.bridge_num_layers)])
        self.retriever = VideoLlambRetriever(config)
        self.freeze_unused()
        self.cache_segment_states = config.bridge_memory_cache == "segment_states"
        # VideoLLaMB_Mem's `abs_vid_pe`: row s is added to the tokens of segment s (zero-initialised there).
        self.segment_position_embedding = (
            nn.Embedding(config.segment_position_embeddings, config.bridge_hidden_size)
            if config.segment_position_embeddings
            else None
        )

    def add_segment_position(self, segment_tokens: torch.Tensor, segment_index: int) -> torch.Tensor:
        """`segment_tokens + segment_position_embedding[segment_index]` (unchanged without the table)."""
        if self.segment_position_embedding is None:
            return segment_tokens
        if segment_index >= self.segment_position_embedding.num_embeddings:
            raise ValueError(
                f"Segment {segment_index} has no position embedding (the table has "
                f"{self.segment_position_embedding.num_embeddings} rows)."
            )
        # Through the module's call (not `.weight[...]`): accelerate's offload hooks load the table where it is on disk.
        index = torch.tensor([segment_index], device=segment_tokens.device)
        return segment_tokens + self.segment_position_embedding(index)[0].to(segment_tokens.dtype)

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """`(batch_size, num_memory_tokens, bridge_hidden_size)`. Quirk kept: later segments take the previous
        memory as it is; `read_memory_emb` is not added to it again (unreachable in the original)."""
        return self.read_memory_emb.unsqueeze(0).expand(batch_size, -1, -1)

    def encode_segment(self, segment_tokens: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bridge layers over `[memory ; segment_tokens]`.

        Args:
            segment_tokens (`torch.Tensor` of shape `(batch, segment_length, bridge_hidden_size)`).
            memory (`torch.Tensor` of shape `(batch, num_memory_tokens, bridge_hidden_size)`).

        Returns:
            `(segment_output (batch, segment_length, D), new_memory (batch, num_memory_tokens, D))`.
        """
        hidden_states = torch.cat([memory.to(segment_tokens.dtype), segment_tokens], dim=1)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        new_memory, segment_output = hidden_states.split([self.num_memory_tokens, segment_tokens.shape[1]], dim=1)
        return segment_output, new_memory

    def freeze_unused(self) -> None:
        """`requires_grad=False` on the released weights that no forward uses (`memory_tokens`, each layer's
        cross-attention, the retriever's self-attention): they would get no gradient anyway. Left trainable they
        made DDP need `find_unused_parameters` and an FSDP2 resume fail ("Missing optimizer state for parameter
        'model.memory_bridge.memory_tokens'": the optimizer never made state for them)."""
        self.memory_tokens.requires_grad_(False)
        _requires_grad(self.retriever.self_attention, False)
        for layer in self.layers:
            _requires_grad(layer.cross_attention, False)

    def forward(self, segment_tokens: torch.Tensor, memory=None, memory_cache=None, mode: str = "step"):
        """The module's call, which `step`, `encode_independently` and `encode_from_initial_memory` go through so
        that accelerate's hooks (device placement, disk offload) see the bridge's own weights (`read_memory_emb`)
        used: `mode` names which of them."""
        if mode == "step":
            return self._step(segment_tokens, memory, memory_cache)
        if mode == "independent":
            segment_output, new_memory = self.encode_segment(
                segment_tokens, self.initial_memory(segment_tokens.shape[0])
            )
            return self.retriever(new_memory, segment_output)
        if mode == "from_initial_memory":
            return self.encode_segment(segment_tokens, self.initial_memory(segment_tokens.shape[0]))
        raise ValueError(f"Unknown bridge mode {mode!r}.")

    def encode_from_initial_memory(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode_segment(tokens, initial_memory)`: the image path. Returns `(segment_output, new_memory)`."""
        return self(tokens, mode="from_initial_memory")

    def step(
        self,
        segment_tokens: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One recurrent step (through the module's call, see `forward`).

        Args:
            segment_tokens (`torch.Tensor` of shape `(batch, segment_length, bridge_hidden_size)`).
            memory (`torch.Tensor` of shape `(batch, num_memory_tokens, D)`, *optional*): `None` starts a video.
            memory_cache (`torch.Tensor` of shape `(batch, cached_tokens, D)`, *optional*): the new memories of
                the past segments (`num_memory_tokens` each), or with `bridge_memory_cache="segment_states"` their
                bridge outputs.

        Returns:
            `(segment_output, memory, memory_cache)`: the segment's bridge outputs (before the projector), the
            refreshed memory, and the cache with this segment's entry appended.
        """
        return self(segment_tokens, memory, memory_cache, mode="step")

    def _step(self, segment_tokens, memory, memory_cache):
        if memory is None:
            memory = self.initial_memory(segment_tokens.shape[0])
        segment_output, new_memory = self.encode_segment(segment_tokens, memory)
        entry = segment_output if self.cache_segment_states else new_memory
        memory_cache = entry if memory_cache is None else torch.cat([memory_cache, entry], dim=1)
        memory = self.retriever(new_memory, memory_cache)
        return segment_output, memory, memory_cache

    def encode_independently(self, tokens: torch.Tensor) -> torch.Tensor:
        """VideoLLaMB_Mem's image path: each row of `tokens (N, L, D)` (an image, or a frame of a very short
        video) goes through the bridge from the initial memory, and its memory is refreshed from its own bridge
        outputs. Returns the memories, `(N, num_memory_tokens, D)`."""
        return self(tokens, mode="independent")


class VideoLlambMultiModalProjector(nn.Module):
    """Bridge width -> language-model width: `act(linear(x))`."""

    def __init__(self, config: VideoLlambConfig):
        super().__init__()
        self.linear = nn.Linear(config.bridge_hidden_size, config.text_config.hidden_size)
        self.activation = ACT2FN[config.projector_hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(hidden_states))


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


def apply_freezing(model: nn.Module) -> None:
    """Apply `config.freeze_towers` / `config.freeze_language_model` to `model` (a VideoLLaMB model or backbone):
    frozen parts get `requires_grad=False` (loading makes every parameter trainable again, so this runs after
    `from_pretrained` too)."""
    for module in model.modules():
        if isinstance(module, VideoLlambModel):
            module.set_towers_trainable(not module.config.freeze_towers)
            _requires_grad(module.language_model, not module.config.freeze_language_model)
    head = getattr(model, "lm_head", None)
    if head is not None:
        _requires_grad(head, not model.config.freeze_language_model)
    for module in model.modules():
        if isinstance(module, VideoLlambMemoryBridge):
            module.freeze_unused()


def _requires_grad(module: nn.Module, trainable: bool) -> None:
    """`module.requires_grad_(trainable)` for its floating-point parameters: quantized (integer) weights take none."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            parameter.requires_grad_(trainable)


_modeling_utils_logger = std_logging.getLogger("transformers.modeling_utils")


class _HoldLoadReports(std_logging.Filter):
    def __init__(self):
        super().__init__()
        self.records = []

    def filter(self, record):
        if "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True


@contextlib.contextmanager
def _held_load_reports():
    """Hold back transformers' loading report while a load runs (re-emitted by the caller if it applies)."""
    held = _HoldLoadReports()
    _modeling_utils_logger.addFilter(held)
    try:
        yield held.records
    finally:
        _modeling_utils_logger.removeFilter(held)


class VideoLlambPreTrainedModel(PreTrainedModel):
    config: VideoLlambConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "LlamaDecoderLayer",
        "CLIPEncoderLayer",
        "VideoLlambVideoEncoderLayer",
        "VideoLlambMemoryBridge",
        "VideoLlambMultiModalProjector",
    ]
    _skip_keys_device_placement = ["cache", "video_features"]
    # The bridge always uses torch's scaled-dot-product attention; these flags are about the towers and LLaMA.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    # What a quantized load leaves in the load dtype when the user's config names nothing to skip (see
    # `videollamb_hf.quantization`): dotted paths from the root of VideoLlambForConditionalGeneration.
    _keep_unquantized_modules = UNQUANTIZED_MODULES

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, plus:

        - the authors' LLaVA-layout checkpoints (`model_type: "llava_llama"`, e.g. `ColorfulAI/VideoLLaMB`) load
          directly: config translated, keys renamed and the vocabulary grown by transformers' conversion mechanism,
          tower weights taken from the checkpoint or else from the LanguageBind folders (`video_tower=` /
          `image_tower=` override the paths the config names); anything missing or unexpected is an error;
        - safetensors only by default: `.bin` weights load only with an explicit `use_safetensors=None` (prefer
          safetensors, accept `.bin`) or `False` (`.bin` only), and then with `torch.load(weights_only=True)`;
        - `config.freeze_towers` is re-applied (loading makes every parameter trainable again).
        """
        kwargs.setdefault("use_safetensors", True)
        if (quantization := kwargs.get("quantization_config")) is not None:
            kwargs["quantization_config"] = keep_unquantized(quantization, cls._keep_unquantized_modules)
        output_loading_info = kwargs.pop("output_loading_info", False)
        with download_options(**kwargs), _held_load_reports() as reports:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        if getattr(model.config, "_original_layout", None):
            # The strict check below replaces transformers' report (which would call the tower weights that
            # come from the LanguageBind folders "newly initialized").
            download = {k: kwargs[k] for k in DOWNLOAD_KWARG_NAMES if kwargs.get(k) is not None}
            backbone = next(module for module in model.modules() if isinstance(module, VideoLlambModel))
            finish_original_loading(
                model, backbone, info, allow_pickle=kwargs["use_safetensors"] is not True, **download
            )
        else:
            for record in reports:
                _modeling_utils_logger.handle(record)
        apply_freezing(model)
        return (model, info) if output_loading_info else model

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """transformers' `save_pretrained`, writing this package's key names by default (`save_original_format`
        would otherwise reverse the renamings registered for the authors' checkpoints), and the
        `video-text-to-text` pipeline with the remote code (`pipeline(model=repo, trust_remote_code=True)`)."""
        from transformers.dynamic_module_utils import custom_object_save

        from .pipeline_videollamb import VideoTextToTextPipeline

        self.config.custom_pipelines = {
            "video-text-to-text": {
                "impl": f"pipeline_videollamb.{VideoTextToTextPipeline.__name__}",
                "pt": ("AutoModelForImageTextToText",),
                "tf": (),
                "type": "multimodal",
            }
        }
        # FSDP2's `fully_shard` swaps the model's class for a subclass defined in torch (`FSDPVideoLlamb...` in
        # `torch.distributed.fsdp._fully_shard._fsdp_init`): transformers would then copy torch's FSDP files as the
        # remote code and point `auto_map` at them (seen in an FSDP2 save). Save under our own class.
        wrapper = type(self)
        ours = next(cls for cls in wrapper.__mro__ if cls.__module__ == __name__)
        self.__class__ = ours
        try:
            output = super().save_pretrained(
                save_directory, *args, save_original_format=save_original_format, **kwargs
            )
        finally:
            self.__class__ = wrapper
        custom_object_save(VideoTextToTextPipeline, save_directory)
        return output

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VideoLlambMemoryBridge):
            init.zeros_(module.read_memory_emb)
            init.normal_(module.memory_tokens)


def _pad_to(tokens: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(tokens, (0, 0, 0, length - tokens.shape[0]))


def _placeholder_runs(mask: torch.Tensor, run_length: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Start of every block of `run_length` placeholders, in reading order.

    A contiguous run of `m * run_length` placeholders counts as `m` blocks (two media with no text between them).

    Returns:
        `(batch_index, start)` long tensors, one entry per medium.
    """
    padded = F.pad(mask, (1, 1))
    starts = mask & ~padded[:, :-2]
    ends = mask & ~padded[:, 2:]
    batch_index, start = starts.nonzero(as_tuple=True)
    _, end = ends.nonzero(as_tuple=True)
    lengths = end - start + 1
    bad = lengths % run_length != 0
    if bad.any():
        raise ValueError(
            f"Found a run of {int(lengths[bad][0])} {name} placeholder tokens; each {name} takes exactly "
            f"{run_length} (`config.{name}_seq_length`). Build inputs with VideoLlambProcessor, which expands each "
            f"<{name}> to that many tokens."
        )
    blocks = lengths // run_length
    offsets = torch.cat([torch.arange(int(n), device=mask.device) for n in blocks.tolist()]) * run_length
    return batch_index.repeat_interleave(blocks), start.repeat_interleave(blocks) + offsets


class VideoLlambModel(VideoLlambPreTrainedModel):
    """Towers + memory bridge + LLaMA, without the LM head. Its `forward` merges the visual tokens into the
    placeholder slots and returns hidden states aligned with `input_ids` (TRL's SFT trains through it)."""

    _keep_unquantized_modules = [name.removeprefix("model.") for name in UNQUANTIZED_MODULES if name != "lm_head"]

    def __init__(self, config: VideoLlambConfig):
        super().__init__(config)
        self.video_tower = VideoLlambVideoTower(config.vision_config)
        # A video-only checkpoint (`has_image_tower=False`) has none: images are refused.
        self.image_tower = AutoModel.from_config(config.image_config) if config.has_image_tower else None
        self.memory_bridge = VideoLlambMemoryBridge(config)
        self.multi_modal_projector = VideoLlambMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()
        self.set_towers_trainable(not config.freeze_towers)
        self.language_model.requires_grad_(not config.freeze_language_model)

    def set_towers_trainable(self, trainable: bool):
        """Frozen towers (the default, as released) take no gradient and run under `torch.no_grad()`."""
        self.config.freeze_towers = not trainable
        self.video_tower.requires_grad_(trainable)
        if self.image_tower is not None:
            self.image_tower.requires_grad_(trainable)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # -- encoders -----------------------------------------------------------------------------------------------

    def _encode_frames(self, tower: nn.Module, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a tower over `frames (N, 3, H, W)` in chunks of `config.tower_chunk_size`.

        Returns:
            `(cls (N, D), pooled patches (N, pooled_grid_size**2, D))`.
        """
        dtype = tower.embeddings.patch_embedding.weight.dtype
        all_cls, all_pooled = [], []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_towers):
            for chunk in frames.split(self.config.tower_chunk_size):
                hidden = tower_hidden_state(tower, chunk.to(dtype), self.config.vision_feature_layer)
                cls, pooled = split_and_pool(hidden, self.config.pooled_grid_size)
                all_cls.append(cls)
                all_pooled.append(pooled)
        return torch.cat(all_cls), torch.cat(all_pooled)

    def _video_lengths(self, pixel_values_videos: torch.Tensor, video_frames_mask: torch.Tensor | None) -> list[int]:
        num_videos, num_frames = pixel_values_videos.shape[:2]
        if video_frames_mask is None:
            lengths = [num_frames] * num_videos
        else:
            mask = video_frames_mask.bool()
            if mask.shape != (num_videos, num_frames):
                raise ValueError(
                    f"`video_frames_mask` has shape {tuple(mask.shape)}; expected (num_videos, num_frames) = "
                    f"{(num_videos, num_frames)}."
                )
            lengths = mask.sum(-1).tolist()
            prefix = torch.arange(num_frames, device=mask.device)[None] < mask.sum(-1, keepdim=True)
            if not torch.equal(mask, prefix):
                raise ValueError("`video_frames_mask` must mark the real frames first and the padding after them.")
        group = self.config.temporal_group_size
        for i, length in enumerate(lengths):
            if length == 0 or length % group != 0:
                raise ValueError(
                    f"Video {i} has {length} frames; the video tower attends over groups of {group} frames, so a "
                    f"video needs a positive multiple of {group} (sample e.g. num_frames={max(group, length // group * group)})."
                )
        return lengths

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_frames_mask: torch.Tensor | None = None,
        keep_segments: bool = False,
    ) -> VideoLlambVideoFeatures:
        """Encode videos once: towers, SceneTilling, the recurrent bridge over segments, the projector.

        Args:
            pixel_values_videos (`torch.Tensor` of shape `(num_videos, num_frames, 3, H, W)`).
            video_frames_mask (`torch.BoolTensor` of shape `(num_videos, num_frames)`, *optional*): `True` for real
                frames; padded frames (at the end) reach neither the tower's temporal attention nor SceneTilling.

        Returns:
            [`VideoLlambVideoFeatures`].
        """
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                "`pixel_values_videos` must have shape (num_videos, num_frames, 3, height, width), got "
                f"{tuple(pixel_values_videos.shape)}."
            )
        lengths = self._video_lengths(pixel_values_videos, video_frames_mask)
        if self.training and self.config.train_frame_flip:  # augmentation, training only
            flips = torch.rand(pixel_values_videos.shape[0]) < 0.5
            if flips.any():
                flipped = pixel_values_videos.flip(-1)
                index = flips.to(pixel_values_videos.device).view(-1, *([1] * (pixel_values_videos.ndim - 1)))
                pixel_values_videos = torch.where(index, flipped, pixel_values_videos)
        # Video by video over views of the real frames: no copy of the pixels, padding never encoded.
        encoded = [self._encode_frames(self.video_tower, video[:n]) for video, n in zip(pixel_values_videos, lengths)]
        return self.bridge_videos([cls for cls, _ in encoded], [pooled for _, pooled in encoded], keep_segments)

    def encode_video(
        self, video, video_processor, chunk_frames: int | None = None, **sampling
    ) -> VideoLlambVideoFeatures:
        """One (long) video to its features in bounded memory: decoded, transformed and run through the video tower
        `chunk_frames` frames at a time (default `config.tower_chunk_size`); only the pooled patches and CLS tokens
        of each frame are kept (`pooled_grid_size**2 + 1` vectors of `bridge_hidden_size`), then SceneTilling and
        the bridge run as in `get_video_features`, whose features this equals.

        Args:
            video: what `video_processor.iter_pixel_chunks` takes (a path, URL, bytes, frames, a frame iterator).
            video_processor: the [`VideoLlambVideoProcessor`] (its sampling and transform).
            sampling: `num_frames`, `fps`, `max_frames`, `start_time`, `end_time`, `sampling`.
        """
        chunk_frames = chunk_frames or self.config.tower_chunk_size
        _, chunks = video_processor.iter_pixel_chunks(video, chunk_frames, **sampling)
        return self.encode_video_chunks(chunks)

    def encode_video_chunks(self, chunks) -> VideoLlambVideoFeatures:
        """One video's features from an iterable of `(t, 3, H, W)` pixel chunks (each a multiple of the temporal
        group; `VideoLlambVideoProcessor.iter_pixel_chunks` makes them): see `encode_video`."""
        device = self.video_tower.embeddings.patch_embedding.weight.device
        if device.type == "meta":  # offloaded (device_map with disk): accelerate's hooks move the inputs
            device = None
        all_cls, all_pooled = [], []
        for pixels in chunks:
            cls, pooled = self._encode_frames(self.video_tower, pixels if device is None else pixels.to(device))
            all_cls.append(cls)
            all_pooled.append(pooled)
        if not all_cls:
            raise ValueError("The video gave no frames.")
        # The pooled patches stay in their chunks: the bridge takes at most `max_frames_per_segment` frames of each
        # segment from them, so joining them (a copy of everything kept) would double the peak for nothing.
        cls, pooled = torch.cat(all_cls), _FrameChunks(all_pooled)
        group = self.config.temporal_group_size
        if cls.shape[0] % group:
            raise ValueError(
                f"The video gave {cls.shape[0]} frames; the video tower attends over groups of {group} frames, so "
                f"it needs a multiple of {group}."
            )
        return self.bridge_videos([cls], [pooled])

    def bridge_videos(
        self, cls_per_video: list[torch.Tensor], pooled_per_video: list[torch.Tensor], keep_segments: bool = False
    ) -> VideoLlambVideoFeatures:
        """SceneTilling + the recurrent bridge + the projector over already computed tower features.

        Args:
            cls_per_video (`list[torch.Tensor]`): per video, `(num_frames, bridge_hidden_size)` CLS tokens.
            pooled_per_video (`list[torch.Tensor]`): per video, `(num_frames, pooled_grid_size**2, D)` pooled patches.
        """
        config = self.config
        bridge = self.memory_bridge
        visual_tokens, slots, boundaries_all, memories, caches, kept = [], [], [], [], [], []
        if keep_segments and config.bridge_output != "last_segment":
            raise ValueError("Per-segment tokens (the recurrent loss) exist for `bridge_output='last_segment'` only.")
        for cls, pooled in zip(cls_per_video, pooled_per_video):
            if config.bridge_output == "memories" and cls.shape[0] <= config.max_image_like_frames:
                # VideoLLaMB_Mem: a video this short is read frame by frame, like images.
                frame_memories = bridge.encode_independently(_joined(pooled))  # (T, M, D)
                visual_tokens.append(
                    _pad_to(self.multi_modal_projector(frame_memories.flatten(0, 1)), config.video_seq_length)
                )
                slots.append(frame_memories.shape[0] * frame_memories.shape[1])
                boundaries_all.append(list(range(cls.shape[0])))
                memories.append(frame_memories[-1])
                caches.append(frame_memories.flatten(0, 1))
                continue
            boundaries = find_scene_boundaries(
                cls,
                mode=config.scene_tiling_mode,
                top_k=config.scene_tiling_top_k,
                alpha=config.scene_tiling_alpha,
                max_boundaries=config.scene_tiling_max_boundaries,
            )
            memory = memory_cache = None
            segment_memories, segment_outputs = [], []
            for segment_index, (start, end) in enumerate(boundaries_to_segments(boundaries)):
                # A long segment is sub-sampled; `torch.linspace(..., dtype=int)` truncates like the original.
                steps = min(config.max_frames_per_segment, end - start + 1)
                index = torch.linspace(start, end, steps, dtype=torch.int).to(pooled.device)
                segment_tokens = bridge.add_segment_position(pooled.index_select(0, index), segment_index)
                segment_tokens = segment_tokens.reshape(1, -1, pooled.shape[-1])  # (1, steps*P, D)
                segment_output, memory, memory_cache = bridge.step(segment_tokens, memory, memory_cache)
                segment_memories.append(memory)
                if keep_segments:
                    segment_outputs.append(self.multi_modal_projector(segment_output[0]))
            if config.bridge_output == "memories":
                # VideoLLaMB_Mem: the refreshed memory after every segment, in order.
                tokens = self.multi_modal_projector(torch.cat(segment_memories, dim=1)[0])
            else:
                # Only the last segment reaches the language model: memory carries the earlier ones.
                tokens = self.multi_modal_projector(segment_output[0])
            visual_tokens.append(_pad_to(tokens, config.video_seq_length))
            slots.append(tokens.shape[0])
            boundaries_all.append(boundaries)
            memories.append(memory[0])
            caches.append(memory_cache[0])
            kept.append(segment_outputs)
        return VideoLlambVideoFeatures(
            visual_tokens=torch.stack(visual_tokens),
            num_slots_used=torch.tensor(slots, dtype=torch.long, device=visual_tokens[0].device),
            scene_boundaries=tuple(boundaries_all),
            memory=torch.stack(memories),
            memory_cache=tuple(caches),
            segment_tokens=tuple(kept) if keep_segments else None,
        )

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images: image tower, pooling, one bridge pass from the initial memory, the projector.

        Args:
            pixel_values (`torch.Tensor` of shape `(num_images, 3, H, W)`).

        Returns:
            `torch.Tensor` of shape `(num_images, image_seq_length, text_hidden_size)`.
        """
        if pixel_values.ndim != 4:
            raise ValueError(
                f"`pixel_values` must have shape (num_images, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        if self.image_tower is None:
            raise ValueError(
                "This model has no image tower (a video-only checkpoint: `has_image_tower=False`, its original config "
                "names no `mm_image_tower`); it takes videos only."
            )
        _, pooled = self._encode_frames(self.image_tower, pixel_values)
        if self.config.bridge_output == "memories":  # VideoLLaMB_Mem: the image's refreshed memory
            return self.multi_modal_projector(self.memory_bridge.encode_independently(pooled))
        segment_output, _ = self.memory_bridge.encode_from_initial_memory(pooled)
        return self.multi_modal_projector(segment_output)

    # -- merging ------------------------------------------------------------------------------------------------

    def get_placeholder_mask(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, token_id: int):
        if input_ids is not None:
            return input_ids == token_id
        token_embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
        return (inputs_embeds == token_embedding).all(-1)

    def _merge_visual_tokens(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor,
        video_features: VideoLlambVideoFeatures | None,
        image_features: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Write visual tokens into their placeholder slots.

        Returns:
            `(inputs_embeds, slot_mask)`: `slot_mask (batch, seq)` is `False` on the unused video slots, or `None`
            when no video was merged.
        """
        config = self.config
        slot_mask = None
        media = (
            ("video", config.video_token_id, config.video_seq_length, video_features, "pixel_values_videos"),
            ("image", config.image_token_id, config.image_seq_length, image_features, "pixel_values"),
        )
        for name, token_id, run_length, features, argument in media:
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, token_id)
            num_tokens = int(mask.sum())
            num_media = 0 if features is None else len(features)
            if num_tokens != num_media * run_length:
                raise ValueError(
                    f"{name.capitalize()} placeholders and {name} inputs do not match: the text has {num_tokens} "
                    f"{name} placeholder tokens, the {name} inputs give {num_media} {name}(s) x {run_length} = "
                    f"{num_media * run_length} tokens."
                    + (f" Pass `{argument}` (or `video_features`)." if num_media == 0 and name == "video" else "")
                    + (f" Pass `{argument}`." if num_media == 0 and name == "image" else "")
                )
            if num_media == 0:
                continue
            batch_index, start = _placeholder_runs(mask, run_length, name)
            if name == "video":
                used = features.num_slots_used.to(start.device)
                tokens = torch.cat([t[:n] for t, n in zip(features.visual_tokens, used.tolist())])
            else:
                used = torch.full_like(start, run_length)
                tokens = features.flatten(0, 1)
            offsets = torch.cat([torch.arange(int(n), device=start.device) for n in used.tolist()])
            rows = batch_index.repeat_interleave(used)
            cols = start.repeat_interleave(used) + offsets
            inputs_embeds = inputs_embeds.index_put((rows, cols), tokens.to(inputs_embeds.device, inputs_embeds.dtype))
            if name == "video":
                slot_mask = ~mask
                slot_mask[rows, cols] = True
        return inputs_embeds, slot_mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_frames_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        video_features: VideoLlambVideoFeatures | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> VideoLlambModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): text with each video expanded
                to `config.video_seq_length` placeholders and each image to `config.image_seq_length`.
            pixel_values (`torch.Tensor` of shape `(num_images, 3, H, W)`, *optional*).
            pixel_values_videos (`torch.Tensor` of shape `(num_videos, num_frames, 3, H, W)`, *optional*).
            video_frames_mask (`torch.BoolTensor` of shape `(num_videos, num_frames)`, *optional*).
            video_features ([`VideoLlambVideoFeatures`], *optional*): already encoded videos, instead of pixels.

        Media are matched to placeholder blocks in reading order (sample by sample, left to right). Extra keyword
        arguments that the language model does not understand (trainers pass some) are ignored.
        """
        if cache is None:
            cache = past_key_values
        if (
            self.training
            and self.config.recurrent_loss
            and not getattr(self, "_in_recurrent_loss", False)
            and pixel_values_videos is not None
        ):
            raise RuntimeError(
                "config.recurrent_loss=True, but this training step runs the model once over the last segment (a "
                "trainer that calls the backbone, e.g. TRL's SFTTrainer): that would silently skip the recurrent "
                "loss. Train with videollamb_hf.sft or videollamb_hf.training.VideoLlambTrainer, or call "
                "model.recurrent_loss(...)."
            )
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of `input_ids` or `inputs_embeds`.")
        if pixel_values_videos is not None and video_features is not None:
            raise ValueError("Pass either `pixel_values_videos` or `video_features`, not both.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values_videos is not None:
            video_features = self.get_video_features(pixel_values_videos, video_frames_mask)
        image_features = self.get_image_features(pixel_values) if pixel_values is not None else None
        inputs_embeds, slot_mask = self._merge_visual_tokens(input_ids, inputs_embeds, video_features, image_features)

        language_attention_mask = None
        if slot_mask is not None:
            # Unused video slots are masked out and skipped by the positions: LLaMA then computes exactly what it
            # computes on the compact sequence (the original's), at prefill and at every later decoding step.
            past_length = cache.get_seq_length() if cache is not None else 0
            length = inputs_embeds.shape[1]
            if attention_mask is None:
                attention_mask = torch.ones(
                    inputs_embeds.shape[0], past_length + length, dtype=torch.long, device=inputs_embeds.device
                )
            if attention_mask.ndim != 2 or attention_mask.shape[-1] != past_length + length:
                raise ValueError(
                    "With videos, `attention_mask` must be 2D and cover the cached and the new tokens: expected "
                    f"(batch, {past_length + length}), got {tuple(attention_mask.shape)}."
                )
            if position_ids is not None:
                real = attention_mask[:, past_length:].bool()
                resets = real[:, 1:] & real[:, :-1] & (position_ids[:, 1:] <= position_ids[:, :-1])
                if resets.any():
                    raise ValueError(
                        "`position_ids` restart inside a sequence (packed / padding-free batches); with videos the "
                        "model derives positions from the attention mask, so pack without videos or pad instead."
                    )
            full_mask = attention_mask.bool().clone()
            full_mask[:, past_length:] &= slot_mask.to(full_mask.device)
            position_ids = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_length:]
            attention_mask = language_attention_mask = full_mask.to(attention_mask.dtype)

        language_kwargs = {key: value for key, value in kwargs.items() if key in _LANGUAGE_MODEL_KWARGS}
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **language_kwargs,
        )
        return VideoLlambModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            video_features=video_features,
            attention_mask=language_attention_mask,
            position_ids=position_ids if language_attention_mask is not None else None,
        )


class VideoLlambForConditionalGeneration(VideoLlambPreTrainedModel, GenerationMixin):
    """VideoLLaMB with its LM head; `generate` encodes each video once per call."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: VideoLlambConfig):
        super().__init__(config)
        self.model = VideoLlambModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.lm_head.requires_grad_(not config.freeze_language_model)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_frames_mask: torch.Tensor | None = None,
        keep_segments: bool = False,
    ) -> VideoLlambVideoFeatures:
        """See [`VideoLlambModel.get_video_features`]."""
        return self.model.get_video_features(pixel_values_videos, video_frames_mask)

    def encode_video(
        self, video, video_processor, chunk_frames: int | None = None, **sampling
    ) -> VideoLlambVideoFeatures:
        """See [`VideoLlambModel.encode_video`]: a long video encoded in chunks of frames; pass the result to
        `generate(..., video_features=...)`."""
        return self.model.encode_video(video, video_processor, chunk_frames, **sampling)

    def encode_video_chunks(self, chunks) -> VideoLlambVideoFeatures:
        """See [`VideoLlambModel.encode_video_chunks`]."""
        return self.model.encode_video_chunks(chunks)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See [`VideoLlambModel.get_image_features`]."""
        return self.model.get_image_features(pixel_values)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_frames_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        video_features: VideoLlambVideoFeatures | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> VideoLlambCausalLMOutputWithPast:
        r"""
        See [`VideoLlambModel.forward`]. `labels (batch_size, sequence_length)` are aligned with `input_ids`
        (shifted inside the loss); placeholder positions never count. `generate` suppresses the placeholder tokens.

        `recurrent_loss_terms=True` (with `labels` and `pixel_values_videos`) returns instead the recurrent loss's
        `(sum of the token losses, number of label tokens)` over all segments (see `recurrent_loss`): trainers
        call it through the wrapped model (DDP, DeepSpeed and FSDP gather and reduce in its forward hooks) and
        normalise the sum over every process.
        """
        if kwargs.pop("recurrent_loss_terms", False):
            _, per_segment = self.recurrent_loss(
                input_ids, labels, pixel_values_videos, attention_mask=attention_mask,
                video_frames_mask=video_frames_mask, pixel_values=pixel_values, return_segment_losses=True,
            )  # fmt: skip
            return sum(term for term, _ in per_segment), sum(count for _, count in per_segment)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            video_frames_mask=video_frames_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            video_features=video_features,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            if input_ids is not None:
                is_placeholder = (input_ids == self.config.video_token_id) | (input_ids == self.config.image_token_id)
                labels = labels.masked_fill(is_placeholder.to(labels.device), -100)
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.text_config.vocab_size,
                num_items_in_batch=kwargs.get("num_items_in_batch"),
            )
        return VideoLlambCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            video_features=outputs.video_features,
            attention_mask=outputs.attention_mask,
            position_ids=outputs.position_ids,
        )

    def recurrent_loss(
        self,
        input_ids: torch.LongTensor,
        labels: torch.LongTensor,
        pixel_values_videos: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        video_frames_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        return_segment_losses: bool = False,
        **kwargs,
    ):
        """The original's recurrent loss (`LlavaLlamaForCausalLMRMT` + `prepare_retro_inputs_labels_for_multimodal`):
        the prompt runs through the language model once per segment, with that segment's tokens in the video's
        slots; the cross-entropy is taken over the labels of all passes together (their concatenation), so every
        recurrent step of the bridge gets gradient. One video per sample; a video with fewer segments than the
        longest in the batch contributes to its own segments only.

        Returns the loss (a scalar), or `(loss, per-segment (loss sum, token count) list)` with
        `return_segment_losses=True`.
        """
        if pixel_values_videos is None or input_ids is None:
            raise ValueError("The recurrent loss needs `input_ids` and `pixel_values_videos`.")
        per_sample = (input_ids == self.config.video_token_id).sum(-1) // self.config.video_seq_length
        if not torch.all(per_sample == 1):
            raise ValueError(f"The recurrent loss takes exactly one video per sample; got {per_sample.tolist()}.")
        features = self.model.get_video_features(pixel_values_videos, video_frames_mask, keep_segments=True)
        counts = [len(segments) for segments in features.segment_tokens]
        is_placeholder = (input_ids == self.config.video_token_id) | (input_ids == self.config.image_token_id)
        labels = labels.masked_fill(is_placeholder.to(labels.device), -100)
        total, items, per_segment = 0.0, 0, []
        self.model._in_recurrent_loss = True
        try:
            for s in range(max(counts)):
                tokens = [segments[min(s, len(segments) - 1)] for segments in features.segment_tokens]
                slots = self.config.video_seq_length
                step = VideoLlambVideoFeatures(
                    visual_tokens=torch.stack([_pad_to(t, slots) for t in tokens]),
                    num_slots_used=torch.tensor([t.shape[0] for t in tokens], device=tokens[0].device),
                    scene_boundaries=features.scene_boundaries,
                    memory=features.memory,
                    memory_cache=features.memory_cache,
                )
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, video_features=step,
                                    pixel_values=pixel_values).last_hidden_state  # fmt: skip
                logits = self.lm_head(hidden).float()
                step_labels = labels.clone()
                for i, count in enumerate(counts):
                    if s >= count:  # this video has no segment s
                        step_labels[i] = -100
                shifted = step_labels[:, 1:].reshape(-1).to(logits.device)
                loss_sum = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), shifted, ignore_index=-100, reduction="sum"
                )
                count = int((shifted != -100).sum())
                per_segment.append((loss_sum, count))
                total, items = total + loss_sum, items + count
        finally:
            self.model._in_recurrent_loss = False
        loss = total / max(items, 1)
        return (loss, per_segment) if return_segment_losses else loss

    # -- generation ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, *args, pixel_values_videos=None, video_frames_mask=None, video_features=None, **kwargs):
        """[`GenerationMixin.generate`], with each video encoded once per call (not once per beam or step)."""
        generation_config = kwargs.get("generation_config") or self.generation_config
        if generation_config.suppress_tokens is None and "suppress_tokens" not in kwargs:
            # The placeholders are input-only tokens: never generate them.
            kwargs["suppress_tokens"] = [self.config.video_token_id, self.config.image_token_id]
        if pixel_values_videos is not None:
            if video_features is not None:
                raise ValueError("Pass either `pixel_values_videos` or `video_features`, not both.")
            video_features = self.get_video_features(pixel_values_videos, video_frames_mask)
        return super().generate(*args, video_features=video_features, **kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # Media are listed per medium, not per sample: repeat each sample's media together, in order, so that the
        # expanded batch still matches its placeholders (a plain repeat_interleave would not, with 0 or 2 media).
        media = {}
        if expand_size > 1 and input_ids is not None:
            for key, token_id, run_length in (
                ("video_features", self.config.video_token_id, self.config.video_seq_length),
                ("pixel_values", self.config.image_token_id, self.config.image_seq_length),
            ):
                value = model_kwargs.pop(key, None)
                if value is None:
                    continue
                counts = ((input_ids == token_id).sum(-1) // run_length).tolist()
                firsts = [sum(counts[:i]) for i in range(len(counts))]
                indices = [first + j for first, n in zip(firsts, counts) for _ in range(expand_size) for j in range(n)]
                if key == "pixel_values":
                    media[key] = value.index_select(0, torch.tensor(indices, device=value.device))
                else:
                    media[key] = value.select(indices)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        model_kwargs.update(media)
        return input_ids, model_kwargs

    def prepare_inputs_for_generation(
        self,
        input_ids,
        next_sequence_length=None,
        cache=None,
        attention_mask=None,
        inputs_embeds=None,
        is_first_iteration=False,
        video_features=None,
        **kwargs,
    ):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        # Like pixels, encoded videos are merged at prefill only; later steps read them from the cache.
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["video_features"] = video_features
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        # Carry the holed mask and the slot-skipping positions of the prefill into every decoding step.
        if getattr(outputs, "attention_mask", None) is not None:
            model_kwargs["attention_mask"] = outputs.attention_mask
            if (position_ids := model_kwargs.get("position_ids")) is not None:
                new = outputs.position_ids.to(position_ids.device, position_ids.dtype)
                model_kwargs["position_ids"] = torch.cat([position_ids[..., : -new.shape[-1]], new], dim=-1)
        return super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )


__all__ = [
    "VideoLlambForConditionalGeneration",
    "VideoLlambMemoryBridge",
    "VideoLlambModel",
    "VideoLlambPreTrainedModel",
    "VideoLlambRetriever",
    "VideoLlambVideoFeatures",
    "VideoLlambVideoTower",
]
