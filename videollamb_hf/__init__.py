"""VideoLLaMB for the Hugging Face ecosystem. Importing this package registers everything with transformers."""
# ruff: noqa: E402  (a log filter is installed before transformers is imported)

import logging
import sys


class _DropImportNoise(logging.Filter):
    """Drops known log lines that installed quantization backends emit while transformers imports them (every
    `import transformers.modeling_utils` imports torchao when it is installed): torchao's notes on its CUDA-only
    kernels that do not load on this machine, and torch's deprecation note on the enums torchao registers. Only
    while this package imports; nothing of ours uses those kernels, and torchao itself errors when they are used."""

    NOISE = {"torchao": ("Failed to load ",), "torch.utils._pytree": ("%s is an Enum subclass",)}

    def filter(self, record):
        return not str(record.msg).startswith(self.NOISE.get(record.name, ()))


class _DropDeepSpeedCpuNote(logging.Filter):
    """DeepSpeed (the `train` extra) writes "Setting accelerator to CPU. If you have GPU or other accelerator, we
    were unable to detect it." to stdout the first time anything imports it on a machine without GPUs, which
    transformers does when it saves or loads a model: that line would land in our commands' stdout (their
    output). Only that message is dropped, for the life of the process; DeepSpeed's other logs are untouched."""

    def filter(self, record):
        return not str(record.msg).startswith("Setting accelerator to CPU.")


logging.getLogger("DeepSpeed").addFilter(_DropDeepSpeedCpuNote())
_import_noise = _DropImportNoise()
for _name in _DropImportNoise.NOISE:
    logging.getLogger(_name).addFilter(_import_noise)

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.models.auto.video_processing_auto import AutoVideoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_videollamb import VideoLlambConfig, VideoLlambOriginalConfig, VideoLlambVisionConfig
from .image_processing_videollamb import VideoLlambImageProcessor
from .modeling_videollamb import (
    VideoLlambForConditionalGeneration,
    VideoLlambMemoryBridge,
    VideoLlambModel,
    VideoLlambPreTrainedModel,
    VideoLlambRetriever,
    VideoLlambVideoFeatures,
    VideoLlambVideoTower,
)
from .original_format import ORIGINAL_ARCHITECTURES, original_weight_conversions
from .pipeline_videollamb import VideoTextToTextPipeline
from .processing_videollamb import VideoLlambProcessor
from .quantization import quantization_config
from .scene_tiling import find_scene_boundaries
from .video_decoding import VideoDecodingError
from .video_processing_videollamb import VideoLlambVideoMetadata, VideoLlambVideoProcessor


__version__ = "0.1.0"

AutoConfig.register(VideoLlambConfig.model_type, VideoLlambConfig, exist_ok=True)
AutoConfig.register(VideoLlambVisionConfig.model_type, VideoLlambVisionConfig, exist_ok=True)
# The authors' checkpoints (`model_type: "llava_llama"`): translated on load, keys renamed by transformers' own
# conversion mechanism (the rules match only original key names, so native checkpoints pass unchanged).
AutoConfig.register(VideoLlambOriginalConfig.model_type, VideoLlambOriginalConfig, exist_ok=True)
register_checkpoint_conversion_mapping(VideoLlambConfig.model_type, original_weight_conversions(), overwrite=True)
AutoModel.register(VideoLlambConfig, VideoLlambModel, exist_ok=True)
AutoModel.register(VideoLlambVisionConfig, VideoLlambVideoTower, exist_ok=True)
AutoModelForImageTextToText.register(VideoLlambConfig, VideoLlambForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(VideoLlambConfig, slow_image_processor_class=VideoLlambImageProcessor, exist_ok=True)
AutoVideoProcessor.register(VideoLlambConfig, VideoLlambVideoProcessor, exist_ok=True)
AutoProcessor.register(VideoLlambConfig, VideoLlambProcessor, exist_ok=True)
# Saved folders carry this package's modules and an `auto_map`, so they load with `trust_remote_code=True` where
# videollamb_hf is not installed.
VideoLlambConfig.register_for_auto_class()
VideoLlambForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
VideoLlambProcessor.register_for_auto_class()
VideoLlambVideoProcessor.register_for_auto_class("AutoVideoProcessor")
VideoLlambImageProcessor.register_for_auto_class("AutoImageProcessor")
# pipeline("video-text-to-text") (no built-in task of that name in transformers).
PIPELINE_REGISTRY.register_pipeline(
    "video-text-to-text",
    pipeline_class=VideoTextToTextPipeline,
    pt_model=AutoModelForImageTextToText,
    type="multimodal",
)
# TRL resolves `getattr(transformers, config.architectures[0])`: make our classes visible there. Set on the module
# that `sys.modules` holds now: importing transformers' submodules may have replaced the lazy module object.
for _cls in (VideoLlambConfig, VideoLlambModel, VideoLlambForConditionalGeneration):
    setattr(sys.modules["transformers"], _cls.__name__, _cls)
# ... and the original `architectures` names, so `trl sft` on an original-layout repo builds our model.
for _name in ORIGINAL_ARCHITECTURES:
    setattr(sys.modules["transformers"], _name, VideoLlambForConditionalGeneration)
for _name in _DropImportNoise.NOISE:
    logging.getLogger(_name).removeFilter(_import_noise)

__all__ = [
    "VideoDecodingError",
    "VideoLlambConfig",
    "VideoLlambForConditionalGeneration",
    "VideoLlambImageProcessor",
    "VideoLlambProcessor",
    "VideoLlambVideoMetadata",
    "VideoLlambVideoProcessor",
    "VideoLlambMemoryBridge",
    "VideoLlambModel",
    "VideoLlambOriginalConfig",
    "VideoLlambPreTrainedModel",
    "VideoLlambRetriever",
    "VideoLlambVideoFeatures",
    "VideoLlambVideoTower",
    "VideoLlambVisionConfig",
    "VideoTextToTextPipeline",
    "find_scene_boundaries",
    "quantization_config",
]
