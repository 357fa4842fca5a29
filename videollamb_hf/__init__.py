"""VideoLLaMB for the Hugging Face ecosystem. Importing this package registers everything with transformers."""

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_videollamb import VideoLlambConfig, VideoLlambVisionConfig
from .modeling_videollamb import (
    VideoLlambForConditionalGeneration,
    VideoLlambMemoryBridge,
    VideoLlambModel,
    VideoLlambPreTrainedModel,
    VideoLlambRetriever,
    VideoLlambVideoFeatures,
    VideoLlambVideoTower,
)
from .scene_tiling import find_scene_boundaries


__version__ = "0.1.0"

AutoConfig.register(VideoLlambConfig.model_type, VideoLlambConfig, exist_ok=True)
AutoConfig.register(VideoLlambVisionConfig.model_type, VideoLlambVisionConfig, exist_ok=True)
AutoModel.register(VideoLlambConfig, VideoLlambModel, exist_ok=True)
AutoModel.register(VideoLlambVisionConfig, VideoLlambVideoTower, exist_ok=True)
AutoModelForImageTextToText.register(VideoLlambConfig, VideoLlambForConditionalGeneration, exist_ok=True)
# TRL resolves `getattr(transformers, config.architectures[0])`: make our classes visible there.
for _cls in (VideoLlambConfig, VideoLlambModel, VideoLlambForConditionalGeneration):
    setattr(transformers, _cls.__name__, _cls)

__all__ = [
    "VideoLlambConfig",
    "VideoLlambForConditionalGeneration",
    "VideoLlambMemoryBridge",
    "VideoLlambModel",
    "VideoLlambPreTrainedModel",
    "VideoLlambRetriever",
    "VideoLlambVideoFeatures",
    "VideoLlambVideoTower",
    "VideoLlambVisionConfig",
    "find_scene_boundaries",
]
