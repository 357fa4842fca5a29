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
