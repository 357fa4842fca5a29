"""VideoLlambImageProcessor: the LanguageBind_Image transform in torch, without torchvision.

`ToTensor` -> short side to 224 (bicubic, antialiased; long side `int(224 * long / short)` as torchvision's
`Resize(224)`) -> centre crop 224 (Python rounding) -> CLIP normalisation. `do_pad=True` first pads to a square
with the mean colour, as the authors' training does (`image_aspect_ratio: "pad"`).
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .video_processing_videollamb import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, center_crop


def _to_pil(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"No such image file: {str(image)!r}.")
        try:
            with Image.open(path) as opened:
                return opened.convert("RGB")
        except OSError as error:
            raise ValueError(f"Could not read {str(image)!r} as an image: {error}.") from error
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = image.transpose(1, 2, 0)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"An image array must be uint8 (height, width, 3), got {image.dtype} {image.shape}.")
        return Image.fromarray(image)
    raise TypeError(f"Cannot read an image from {type(image).__name__}: pass a path, a PIL image or a uint8 array.")


def expand_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Pad to a square, the image centred (LLaVA's `expand2square`)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), color)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


class VideoLlambImageProcessor(BaseImageProcessor):
    r"""Image processor of VideoLLaMB (LanguageBind_Image).

    Args:
        size (`dict`, defaults to `{"shortest_edge": 224}`), crop_size (`dict`, defaults to 224 x 224).
        image_mean, image_std: CLIP normalisation.
        do_pad (`bool`, defaults to `False`): pad to a square with the mean colour first (the training recipe).
    """

    model_input_names = ["pixel_values"]

    def __init__(self, size=None, crop_size=None, image_mean=None, image_std=None, do_pad=False, **kwargs):
        super().__init__(**kwargs)
        self.size = size or {"shortest_edge": 224}
        self.crop_size = crop_size or {"height": 224, "width": 224}
        self.image_mean = list(image_mean or OPENAI_CLIP_MEAN)
        self.image_std = list(image_std or OPENAI_CLIP_STD)
        self.do_pad = do_pad

    def transform(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> `(3, crop_h, crop_w)` float32."""
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        height, width = x.shape[1:]
        target = self.size["shortest_edge"]
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(target * long / short)
        new_size = (target, new_long) if height <= width else (new_long, target)
        x = F.interpolate(x[None], size=new_size, mode="bicubic", align_corners=False, antialias=True)[0]
        x = center_crop(x, self.crop_size["height"], self.crop_size["width"])
        mean = torch.tensor(self.image_mean)[:, None, None]
        std = torch.tensor(self.image_std)[:, None, None]
        return (x - mean) / std

    def preprocess(self, images, do_pad: bool | None = None, return_tensors=None, **kwargs) -> BatchFeature:
        """`images`: one image or a list (paths, PIL images, uint8 arrays). Returns `pixel_values (N, 3, 224, 224)`."""
        do_pad = self.do_pad if do_pad is None else do_pad
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("Got an empty list of images.")
        pixels = []
        for image in images:
            image = _to_pil(image)
            if do_pad:
                image = expand_to_square(image, tuple(int(m * 255) for m in self.image_mean))
            pixels.append(self.transform(image))
        return BatchFeature(data={"pixel_values": torch.stack(pixels)})


__all__ = ["VideoLlambImageProcessor"]
