"""VideoLLaMB for the Hugging Face ecosystem. Importing this package registers everything with transformers."""

import sys

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
# TRL resolves `getattr(transformers, config.architectures[0])`: make our classes visible there. Set on the module
# that `sys.modules` holds now: importing transformers' submodules may have replaced the lazy module object.
for _cls in (VideoLlambConfig, VideoLlambModel, VideoLlambForConditionalGeneration):
    setattr(sys.modules["transformers"], _cls.__name__, _cls)

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
