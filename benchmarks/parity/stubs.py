"""Stub the imports the authors' package needs only for its processors and unrelated encoders."""

import importlib.abc
import importlib.machinery
import sys
import types


STUBBED = (
    "torchvision",
    "pytorchvideo",
    "decord",
    "cv2",
    "imageio",
    "timm",
    "deepspeed",
    "flash_attn",
    "open_clip",
    "ffmpeg",
    "moviepy",
    "av",
    "einops_exts",
    "sklearn",
    "scipy",
    "skimage",
    "matplotlib",
    "gradio",
    "wandb",
)


class _Anything(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Dummy(f"{self.__name__}.{name}")


class _Dummy:
    def __init__(self, name="dummy", *args, **kwargs):
        self._name = name

    def __call__(self, *args, **kwargs):
        return _Dummy(self._name)

    def __getattr__(self, name):
        return _Dummy(f"{self._name}.{name}")

    def __mro_entries__(self, bases):
        return (object,)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Anything(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())


def patch_tiny_bridge(rmt, num_memory_tokens: int, grid: int):
    """Their bridge hard-codes 32 memory tokens and a 12x12 (Mem: 14x14) pool: give their classes the tiny
    checkpoint's sizes (`rmt`: their `rmt_r_transformer_projector` module)."""
    import torch

    init_projector, init_bridge = rmt.TransformerProjector.__init__, rmt.RMTRTransformerProjector.__init__

    def projector_init(self, config, depth):
        init_projector(self, config, depth)
        self.num_memory_tokens = num_memory_tokens
        self.read_memory_emb = torch.nn.Parameter(torch.zeros(num_memory_tokens, config.mm_hidden_size))
        self.memory_tokens = torch.nn.Parameter(torch.randn(num_memory_tokens, config.mm_hidden_size))

    def bridge_init(self, config, depth):
        init_bridge(self, config, depth)
        self.h = self.w = grid
        self.pooler = torch.nn.AdaptiveAvgPool2d((grid, grid))

    rmt.TransformerProjector.__init__, rmt.RMTRTransformerProjector.__init__ = projector_init, bridge_init


def load_in_float32(builder):
    """Their loader casts everything to float16: make that cast float32 so both sides compare in fp32."""
    import torch

    class Float32Torch(types.ModuleType):
        def __getattr__(self, name):
            return torch.float32 if name == "float16" else getattr(torch, name)

    builder.torch = Float32Torch("torch")
