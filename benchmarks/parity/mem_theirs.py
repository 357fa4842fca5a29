# ruff: noqa: E402  (imports follow the path and stub set-up on purpose)
"""Mem side B: the vendored package that runs VideoLLaMB_Mem (bigai-nlco/MM-NIAVH needlehaystack/baselines/llava,
transformers 4.39.1): its load_pretrained_model on the same tiny repo; its CLIPImageProcessor + the NIAVH runner's
frame sampling on the real clips (decord replaced by the frames our decoder gives at the same indices)."""

import os
import sys


WORK = os.environ.get("PARITY_WORK", "/tmp/videollamb_parity")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # torchvision, decord, ... are needed by their processors only: stubbed


# a checkout of bigai-nlco/MM-NIAVH: `needlehaystack.baselines.llava` from its root, and its top-level
# `from llava.constants import ...` served by the same vendored copy
sys.path.insert(0, os.path.join(os.environ["NIAVH_CODE"], "needlehaystack", "baselines"))
sys.path.insert(0, os.environ["NIAVH_CODE"])
import torch


data = torch.load(f"{WORK}/mem/data.pt")
os.chdir(data["root"])
import needlehaystack.baselines.llava.model.multimodal_projector.rmt_r_transformer_projector as rmt


stubs.patch_tiny_bridge(rmt, num_memory_tokens=4, grid=3)
import needlehaystack.baselines.llava.model.builder as builder


stubs.load_in_float32(builder)
tokenizer, model, processors, _ = builder.load_pretrained_model(
    data["repo"], None, "videollamb-mem-llava-1.5-7b", device="cpu", device_map="cpu"
)
model.eval()
print(
    "their class:",
    type(model).__name__,
    "video tower:",
    type(model.get_video_tower()).__name__,
    "projector:",
    type(model.get_model().mm_projector).__module__,
)
worst = 0.0
for name, case in data["cases"].items():
    px = case["pixels"][0]
    if case["raw"] is not None:
        theirs_px = processors["VIDEO"](images=case["raw"].numpy(), return_tensors="pt")["pixel_values"]
        pdiff = (theirs_px - px).abs().max().item() if theirs_px.shape == px.shape else float("nan")
        print(f"{name}: frames theirs {tuple(theirs_px.shape)} ours {tuple(px.shape)}; pixel max |diff| {pdiff:.2e}")
        px = theirs_px
    ids = case["ids"]
    token = data["video_token_id"]
    compact, i = [], 0
    while i < len(ids):
        if ids[i] == token:
            compact.append(-201)
            while i < len(ids) and ids[i] == token:
                i += 1
        else:
            compact.append(ids[i])
            i += 1
    with torch.no_grad():
        out = model(input_ids=torch.tensor([compact]), X=[px], X_modalities=["VIDEO"], X_sizes=[None])
        gen = model.generate(
            torch.tensor([compact]),
            X=[px],
            X_modalities=["VIDEO"],
            X_sizes=[None],
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
        )
    theirs, ours = out.logits[0], case["logits"]
    if theirs.shape != ours.shape:
        print(f"{name}: SHAPE MISMATCH ours {tuple(ours.shape)} theirs {tuple(theirs.shape)}")
        worst = float("inf")
        continue
    rel = ((theirs - ours).abs().max() / theirs.abs().max()).item()
    worst = max(worst, rel)
    print(
        f"{name}: {px.shape[0]} frames, visual tokens {case['slots']}, boundaries {case['boundaries']}; positions "
        f"{tuple(ours.shape)}; relative logit diff {rel:.2e}; greedy identical={case['generated'] == gen[0].tolist()} "
        f"({gen[0].tolist()})"
    )
print(f"worst relative logit difference: {worst:.2e}")
