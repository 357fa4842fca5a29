"""Streaming captions: per-frame cost of our StreamingCaptioner over a 2,000-frame stream vs the original's strategy
(`serve/cli_streaming.py`: every caption re-runs the whole model over all frames seen so far), same tiny model, same
run.

    python benchmarks/bench_streaming.py [--frames 2000] [--fps 4] [--max-new-tokens 8] [--json]

Prints the mean time per frame over frames 200-400 and over the last 200 (target: ratio <= 1.5), and the original
strategy's time per caption at growing stream lengths.
"""

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def synthetic_stream(num_frames: int, fps: float, seed: int = 0, size: int = 32):
    """`(timestamp, frame)`: random "scenes" of 12 to 60 frames, a moving bar inside each."""
    rng = np.random.default_rng(seed)
    index = 0
    while index < num_frames:
        length = int(rng.integers(12, 61))
        base = rng.integers(0, 256, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        for i in range(length):
            if index >= num_frames:
                return
            frame = base.copy()
            frame[:, (i * 2) % size] = 255
            yield index / fps, frame
            index += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--rerun-every", type=int, default=200, help="stream lengths at which the original is timed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from videollamb_hf.streaming import StreamingCaptioner
    from videollamb_hf.testing_utils import save_tiny_repo

    folder = save_tiny_repo(tempfile.mkdtemp(prefix="bench-stream-"))
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    captioner = StreamingCaptioner(model, processor, window=8, min_scene_frames=4, max_new_tokens=args.max_new_tokens)

    per_frame, captions = [], 0
    frames = list(synthetic_stream(args.frames, args.fps))
    for timestamp, frame in frames:
        start = time.perf_counter()
        events = captioner.feed(frame, timestamp)
        per_frame.append(time.perf_counter() - start)
        captions += sum(e.kind == "caption" for e in events)
    captions += sum(e.kind == "caption" for e in captioner.finish())
    early = float(np.mean(per_frame[200:400]))
    late = float(np.mean(per_frame[-200:]))

    # The original: at each caption, the whole model over every frame so far (a multiple of the group of 8).
    rerun = []
    pixels_all = processor.video_processor([f for _, f in frames], num_frames=len(frames))["pixel_values_videos"]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids, _ = processor._tokenize_prompt(prompt, add_special_tokens=True)
    input_ids = torch.tensor([ids])
    for length in range(args.rerun_every, args.frames + 1, args.rerun_every):
        length -= length % 8
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values_videos=pixels_all[:, :length],
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
            )
        rerun.append((length, time.perf_counter() - start))

    result = {
        "frames": args.frames,
        "fps": args.fps,
        "captions": captions,
        "scenes": len(captioner.scenes),
        "ours_ms_per_frame_200_400": round(early * 1e3, 3),
        "ours_ms_per_frame_last_200": round(late * 1e3, 3),
        "ours_ratio_last_to_early": round(late / early, 3),
        "original_s_per_caption": [(n, round(t, 4)) for n, t in rerun],
        "original_growth_last_to_first": round(rerun[-1][1] / rerun[0][1], 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.frames} frames at {args.fps} fps, {captions} captions over {len(captioner.scenes)} scenes (tiny model)"
    )
    print(f"ours: {result['ours_ms_per_frame_200_400']} ms/frame over frames 200-400, "
          f"{result['ours_ms_per_frame_last_200']} ms/frame over the last 200: ratio {result['ours_ratio_last_to_early']}"
          f" (target <= 1.5)")  # fmt: skip
    print("original (re-run everything per caption): seconds per caption by stream length")
    for n, t in rerun:
        print(f"  {n:5d} frames: {t:.4f} s")
    print(f"  growth {result['original_growth_last_to_first']}x from {rerun[0][0]} to {rerun[-1][0]} frames")


if __name__ == "__main__":
    main()
