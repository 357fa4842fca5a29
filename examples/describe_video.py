"""Describe a video with VideoLLaMB: processor + model + generate.

    python examples/describe_video.py VIDEO [--model FOLDER] [--question TEXT] [--num-frames 16] [--scenes]

Without `--model`, a tiny random model is written to `./tiny-videollamb-repo` first (`save_tiny_repo`), so the
script runs offline on a CPU; its answer is noise. The printed JSON holds the answer, the sampled frames'
timestamps and the scenes the model's SceneTilling found.
"""

import argparse
import json

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import videollamb_hf  # noqa: F401  (registers VideoLLaMB)
from videollamb_hf.testing_utils import save_tiny_repo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("--model", default=None, help="a VideoLLaMB folder (default: write and use a tiny one)")
    parser.add_argument("--question", default="Describe the video in one sentence.")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--scenes", action="store_true", help="scene-aware frame sampling")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    model_dir = args.model or save_tiny_repo("tiny-videollamb-repo")
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    messages = [{"role": "user", "content": [{"type": "video", "path": args.video},
                                             {"type": "text", "text": args.question}]}]  # fmt: skip
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        processor_kwargs={"num_frames": args.num_frames, "sampling": "scenes" if args.scenes else "uniform",
                          "return_metadata": True},
    )  # fmt: skip
    metadata = inputs.pop("video_metadata")[0]
    with torch.no_grad():
        features = model.get_video_features(inputs["pixel_values_videos"], inputs.get("video_frames_mask"))
        output = model.generate(**{k: v for k, v in inputs.items() if k != "pixel_values_videos"},
                                video_features=features, max_new_tokens=args.max_new_tokens, do_sample=False)  # fmt: skip
    answer = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    timestamps = metadata.timestamps
    boundaries = features.scene_boundaries[0]
    print(json.dumps({
        "answer": answer,
        "frame_timestamps_s": [round(t, 3) for t in timestamps],
        "scene_ends_s": [round(timestamps[b], 3) for b in boundaries],
        "random_weights": args.model is None,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
