# ruff: noqa: E402  (imports follow the path and stub set-up on purpose)
"""Mem side A (ours): tiny VideoLLaMB_Mem-layout repo on disk, our loader + processor; frames of real clips through
our processor (fps 1, CLIP per frame) and through random tensors; logits and greedy tokens."""

import os


WORK = os.environ.get("PARITY_WORK", "/tmp/videollamb_parity")
VIDEOS = os.environ.get("VIDEOS", os.path.join(os.path.dirname(__file__), "../../../shared/data/videos"))
import os
import shutil

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from videollamb_hf.testing_utils import save_tiny_original_repo


root = f"{WORK}/mem/root"
shutil.rmtree(root, ignore_errors=True)
info = save_tiny_original_repo(root, variant="mem")
# their builder prefixes tower paths with needlehaystack/baselines: give them the same folders there
os.makedirs(f"{root}/needlehaystack/baselines", exist_ok=True)
os.symlink(f"{root}/checkpoints", f"{root}/needlehaystack/baselines/checkpoints")
os.chdir(root)
model = AutoModelForImageTextToText.from_pretrained(info["repo"], dtype=torch.float32)
processor = AutoProcessor.from_pretrained(info["repo"])
config = model.config
g = torch.Generator().manual_seed(11)
cases = {}
videos = {"demo1_fps1": f"{VIDEOS}/sample_demo_1.mp4", "dance_fps1": f"{VIDEOS}/dance.mp4"}
inputs_list = []
for name, frames in (("rand40", 40), ("rand3_imagelike", 3), ("rand9", 9)):
    inputs_list.append((name, torch.randn(1, frames, 3, 16, 16, generator=g), None))
import math

import numpy as np

from videollamb_hf.video_decoding import VideoReader


raw = {}
for name, path in videos.items():
    px = processor.video_processor(path)["pixel_values_videos"]
    reader = VideoReader(path)  # the NIAVH runner's sampling: min(ceil(n / avg_fps), 512), linspace(0, n-1, int)
    n, fps = reader.index.num_frames, reader.index.fps
    idx = np.linspace(0, n - 1, min(math.ceil(n / fps), 512), dtype=int)
    raw[name] = torch.from_numpy(np.ascontiguousarray(reader.get_frames(idx)))
    inputs_list.append((name, px, path))
for name, px, path in inputs_list:
    ids = [1, 5, 6, 7] + [config.video_token_id] * config.video_seq_length + [8, 9, 10, 11]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), pixel_values_videos=px)
        gen = model.generate(
            input_ids=torch.tensor([ids]), pixel_values_videos=px, max_new_tokens=8, do_sample=False, pad_token_id=0
        )
        feats = model.model.get_video_features(px)
    real = out.attention_mask[0].bool()
    cases[name] = {
        "ids": ids,
        "pixels": px,
        "path": path,
        "raw": raw.get(name),
        "logits": out.logits[0, real][:, :400],
        "generated": gen[0, len(ids) :].tolist(),
        "slots": int(feats.num_slots_used[0]),
        "boundaries": feats.scene_boundaries[0],
    }
torch.save(
    {"cases": cases, "repo": info["repo"], "root": root, "video_token_id": config.video_token_id},
    f"{WORK}/mem/data.pt",
)
print({k: (tuple(v["pixels"].shape), v["slots"], v["boundaries"], v["generated"]) for k, v in cases.items()})
