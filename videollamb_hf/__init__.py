"""VideoLLaMB for the Hugging Face ecosystem. Importing this package registers everything with transformers."""

import sys

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .configuration_videollamb import VideoLlambConfig, VideoLlambVisionConfig
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
from .processing_videollamb import VideoLlambProcessor
from .scene_tiling import find_scene_boundaries
from .video_decoding import VideoDecodingError
from .video_processing_videollamb import VideoLlambVideoMetadata, VideoLlambVideoProcessor


__version__ = "0.1.0"

AutoConfig.register(VideoLlambConfig.model_type, VideoLlambConfig, exist_ok=True)
AutoConfig.register(VideoLlambVisionConfig.model_type, VideoLlambVisionConfig, exist_ok=True)
AutoModel.register(VideoLlambConfig, VideoLlambModel, exist_ok=True)
AutoModel.register(VideoLlambVisionConfig, VideoLlambVideoTower, exist_ok=True)
AutoModelForImageTextToText.register(VideoLlambConfig, VideoLlambForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(VideoLlambConfig, slow_image_processor_class=VideoLlambImageProcessor, exist_ok=True)
AutoVideoProcessor.register(VideoLlambConfig, VideoLlambVideoProcessor, exist_ok=True)
AutoProcessor.register(VideoLlambConfig, VideoLlambProcessor, exist_ok=True)
# TRL resolves `getattr(transformers, config.architectures[0])`: make our classes visible there. Set on the module
# that `sys.modules` holds now: importing transformers' submodules may have replaced the lazy module object.
for _cls in (VideoLlambConfig, VideoLlambModel, VideoLlambForConditionalGeneration):
    setattr(sys.modules["transformers"], _cls.__name__, _cls)

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
    "VideoLlambPreTrainedModel",
    "VideoLlambRetriever",
    "VideoLlambVideoFeatures",
    "VideoLlambVideoTower",
    "VideoLlambVisionConfig",
    "find_scene_boundaries",
]
