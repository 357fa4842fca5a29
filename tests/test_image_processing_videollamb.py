"""VideoLlambImageProcessor: LanguageBind_Image's transform (bicubic antialiased short side, centre crop, CLIP
normalisation), optional pad-to-square."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import VIDEOS
from PIL import Image

from videollamb_hf import VideoLlambImageProcessor
from videollamb_hf.video_processing_videollamb import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def literal_languagebind_image(image: Image.Image) -> torch.Tensor:
    """ToTensor -> Resize(224, BICUBIC, antialias) with torchvision's size rule -> CenterCrop(224) -> Normalize."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    h, w = x.shape[1:]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = 224, int(224 * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)[0]
    top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
    x = x[:, top : top + 224, left : left + 224]
    return (x - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(OPENAI_CLIP_STD)[:, None, None]


@pytest.fixture(scope="module")
def processor():
    return VideoLlambImageProcessor()


def test_real_image_matches_the_literal_chain(processor):
    image = Image.open(VIDEOS / "readingsky.png").convert("RGB")
    pixels = processor(str(VIDEOS / "readingsky.png"))["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pixels[0], literal_languagebind_image(image), rtol=0, atol=1e-6)
    wide = image.resize((300, 170))
    torch.testing.assert_close(processor(wide)["pixel_values"][0], literal_languagebind_image(wide), rtol=0, atol=1e-6)


def test_constant_image_normalises_to_known_values(processor):
    pixels = processor(np.full((50, 80, 3), 255, dtype=np.uint8))["pixel_values"][0]
    expected = (1 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(pixels.mean((1, 2)), expected, rtol=0, atol=1e-5)


def test_pad_to_square_uses_the_mean_colour(processor):
    tall = np.zeros((100, 40, 3), dtype=np.uint8)
    padded = processor(tall, do_pad=True)["pixel_values"][0]
    mean_colour = torch.tensor([int(m * 255) for m in OPENAI_CLIP_MEAN]) / 255.0
    expected_side = (mean_colour - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(padded[:, 112, 5], expected_side, rtol=0, atol=1e-5)  # padded border
    assert processor(tall)["pixel_values"].shape == (1, 3, 224, 224)


def test_inputs_and_errors(processor, tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    from_array = processor(array)["pixel_values"]
    assert torch.equal(processor(Image.fromarray(array))["pixel_values"], from_array)
    assert torch.equal(processor(torch.from_numpy(array).permute(2, 0, 1))["pixel_values"], from_array)
    assert processor([array, array])["pixel_values"].shape == (2, 3, 224, 224)
    with pytest.raises(FileNotFoundError):
        processor(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Could not read"):
        processor(str(tmp_path / "bad.png"))
    with pytest.raises(TypeError):
        processor(3.5)
