# ruff: noqa: E402  (imports follow the path and stub set-up on purpose)
"""Side B: the authors' own loader (llava.model.builder.load_pretrained_model, transformers 4.39.1) on the SAME
tiny original-layout repo; their towers are reloaded from the ./checkpoints/LanguageBind_* folders as in their code."""

import os
import sys


WORK = os.environ.get("PARITY_WORK", "/tmp/videollamb_parity")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # torchvision, decord, ... are needed by their processors only: stubbed


sys.path.insert(0, os.environ["VIDEOLLAMB_CODE"])  # a checkout of bigai-nlco/VideoLLaMB
import torch


data = torch.load(f"{WORK}/original/data.pt")
os.chdir(data["root"])  # their config names ./checkpoints/LanguageBind_*: run from there, as they did
import llava.model.multimodal_projector.rmt_r_transformer_projector as rmt


stubs.patch_tiny_bridge(rmt, num_memory_tokens=4, grid=2)
import llava.model.builder as builder


stubs.load_in_float32(builder)
tokenizer, model, processors, _ = builder.load_pretrained_model(
    data["repo"], None, "videollamb-llava-1.5-7b", device="cpu", device_map="cpu"
)
model.eval()
print("their class:", type(model).__name__, "dtype", model.dtype, "vocab", model.lm_head.weight.shape[0])
worst = 0.0
for name, case in data["cases"].items():
    ids = case["ids"]
    video = name.startswith("video")
    token = data["video_token_id"] if video else data["image_token_id"]
    compact, i = [], 0
    while i < len(ids):
        if ids[i] == token:
            compact.append(-201 if video else -200)
            while i < len(ids) and ids[i] == token:
                i += 1
        else:
            compact.append(ids[i])
            i += 1
    px = case["pixels"][0]
    X = [px.permute(1, 0, 2, 3)] if video else [px]  # their video layout is (C, T, H, W)
    modality = "VIDEO" if video else "IMAGE"
    with torch.no_grad():
        out = model(input_ids=torch.tensor([compact]), X=X, X_modalities=[modality], X_sizes=[None])
        gen = model.generate(
            torch.tensor([compact]),
            X=X,
            X_modalities=[modality],
            X_sizes=[None],
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
        )
    theirs, ours = out.logits[0], case["logits"]
    rel = ((theirs - ours).abs().max() / theirs.abs().max()).item()
    worst = max(worst, rel)
    print(
        f"{name}: positions ours {tuple(ours.shape)} theirs {tuple(theirs.shape)}; max |diff| "
        f"{(theirs - ours).abs().max().item():.2e}, relative {rel:.2e}; greedy ours {case['generated']} theirs "
        f"{gen[0].tolist()} identical={case['generated'] == gen[0].tolist()}"
    )
print(f"worst relative logit difference: {worst:.2e}")
