# ruff: noqa: E402  (imports follow the path and stub set-up on purpose)
"""Side A (ours): build a tiny ORIGINAL-layout repo on disk, load it with our loader, save inputs/logits/greedy."""

import os


WORK = os.environ.get("PARITY_WORK", "/tmp/videollamb_parity")
VIDEOS = os.environ.get("VIDEOS", os.path.join(os.path.dirname(__file__), "../../../shared/data/videos"))
import shutil

import torch
from transformers import AutoModelForImageTextToText

from videollamb_hf.testing_utils import save_tiny_original_repo


root = f"{WORK}/original/root"
shutil.rmtree(root, ignore_errors=True)
info = save_tiny_original_repo(root)
import os


os.chdir(root)
model = AutoModelForImageTextToText.from_pretrained(info["repo"], dtype=torch.float32)
config = model.config
g = torch.Generator().manual_seed(7)
cases = {}
for name, frames in (("video16", 16), ("video64", 64), ("image", None)):
    if frames:
        px = torch.randn(1, frames, 3, 16, 16, generator=g)
        ids = [1, 5, 6, 7] + [config.video_token_id] * config.video_seq_length + [8, 9, 10, 11]
        inputs = {"pixel_values_videos": px}
    else:
        px = torch.randn(1, 3, 16, 16, generator=g)
        ids = [1, 5, 6, 7] + [config.image_token_id] * config.image_seq_length + [8, 9, 10, 11]
        inputs = {"pixel_values": px}
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), **inputs)
        gen = model.generate(
            input_ids=torch.tensor([ids]), **inputs, max_new_tokens=8, do_sample=False, pad_token_id=0
        )
    real = out.attention_mask[0].bool() if out.attention_mask is not None else torch.ones(len(ids), dtype=torch.bool)
    # logits over the original 400-row vocabulary (ours has 2 placeholder rows more)
    cases[name] = {
        "ids": ids,
        "pixels": px,
        "logits": out.logits[0, real][:, :400],
        "generated": gen[0, len(ids) :].tolist(),
    }
torch.save(
    {
        "cases": cases,
        "repo": info["repo"],
        "root": root,
        "video_token_id": config.video_token_id,
        "image_token_id": config.image_token_id,
    },
    f"{WORK}/original/data.pt",
)
print({k: (tuple(v["logits"].shape), v["generated"]) for k, v in cases.items()})
