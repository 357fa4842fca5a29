"""Long videos on the tiny model: memory, time and language-model tokens as the frame count grows.

    python benchmarks/bench_long_video.py [--frames 16 256 1024 4096]

Each frame count runs in a fresh process (so peak memory is its own): one forward pass of a prompt with one video.
Printed per run: peak resident memory above the level just before the forward (pixels already allocated), the
forward time, time per frame, the tokens that reach the language model (real positions of its attention mask),
and for reference the tokens an uncompressed LLaVA-style model would feed it (every frame's 144-equivalent pooled
tokens: frames x image_seq_length). Targets: LM tokens constant; memory and time linear in frames.
"""

import argparse
import json
import subprocess
import sys


CHILD = r"""
import json, resource, sys, time
import torch
from videollamb_hf.testing_utils import get_tiny_model
torch.set_num_threads(1)
frames = int(sys.argv[1])
model = get_tiny_model()
config = model.config
ids = torch.tensor([[1, 5, 6] + [config.video_token_id] * config.video_seq_length + [7, 8]])
pixels = torch.randn(1, frames, 3, 16, 16)
with torch.no_grad():
    model(input_ids=ids, pixel_values_videos=pixels[:, :16])  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = model(input_ids=ids, pixel_values_videos=pixels)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "frames": frames, "peak_kib": peak - before, "seconds": elapsed,
    "lm_tokens": int(out.attention_mask.sum()), "lm_token_bound": ids.shape[1], "segments": len(out.video_features.scene_boundaries[0]),
    "uncompressed_tokens": frames * config.image_seq_length + ids.shape[1] - config.video_seq_length,
}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 256, 1024, 4096])
    args = parser.parse_args()
    rows = []
    for frames in args.frames:
        result = subprocess.run([sys.executable, "-c", CHILD, str(frames)], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(
        f"{'frames':>7} {'peak +MiB':>10} {'time (s)':>9} {'ms/frame':>9} {'LM tokens':>10} {'segments':>9} "
        f"{'uncompressed':>13}"
    )
    for r in rows:
        print(
            f"{r['frames']:>7} {r['peak_kib'] / 1024:>10.1f} {r['seconds']:>9.3f} "
            f"{r['seconds'] / r['frames'] * 1e3:>9.3f} {r['lm_tokens']:>10} {r['segments']:>9} "
            f"{r['uncompressed_tokens']:>13}"
        )
    first, last = rows[0], rows[-1]
    scale = last["frames"] / first["frames"]
    print(
        f"\n{scale:.0f}x the frames: time x{last['seconds'] / first['seconds']:.1f}; LM tokens stay within "
        f"{first['lm_token_bound']} (text + video_seq_length slots; a short last segment uses fewer)"
    )
    if len(rows) >= 3:
        (a, b) = rows[-2], rows[-1]
        slope = (b["peak_kib"] - a["peak_kib"]) / (b["frames"] - a["frames"])
        print(
            f"memory slope between the two longest runs: {slope:.2f} KiB/frame "
            f"(pixels alone: {3 * 16 * 16 * 4 / 1024:.2f} KiB/frame)"
        )


if __name__ == "__main__":
    main()
