import os
from pathlib import Path

import pytest
import torch

import videollamb_hf  # noqa: F401  (registers the Auto classes)
from videollamb_hf.testing_utils import get_tiny_config, get_tiny_model


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIDEOS = SHARED / "data" / "videos"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_config():
    return get_tiny_config()


@pytest.fixture(scope="session")
def tiny_model():
    """Shared read-only tiny model (eval mode, fp32). Tests that change a model build their own."""
    return get_tiny_model()
