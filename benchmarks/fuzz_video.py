"""Fuzz the video decoder with mutated real clips and count the outcomes.

    python benchmarks/fuzz_video.py [--inputs 10000] [--timeout 10] [--seed 0]

Each input is one random corruption (`testing_utils.mutate_video_bytes`: truncation, bit flips, overwritten or
zeroed ranges, removed/duplicated chunks, spliced headers) of a shared clip, decoded by `VideoLlambVideoProcessor`
in a watchdog child process (`testing_utils.DecodeWatchdog`) that is killed past the time bound. Prints the counts:
decoded / clear error / other exception / over the time bound, and the first few of the last two kinds.
Target: 0 other exceptions, 0 over the bound.
"""

import argparse
import collections
import random
import time
from pathlib import Path

from videollamb_hf.testing_utils import DecodeWatchdog, mutate_video_bytes


VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    clips = [(VIDEOS / name).read_bytes() for name in ("readingsky.mp4", "sample_demo_3.mp4", "sample_demo_9.mp4")]
    rng = random.Random(args.seed)
    counts = collections.Counter()
    examples = collections.defaultdict(list)
    start = time.perf_counter()
    with DecodeWatchdog(timeout_s=args.timeout) as watchdog:
        for i in range(args.inputs):
            data = mutate_video_bytes(rng.choice(clips), rng.choice(clips), rng)
            kind, detail = watchdog.outcome(data)
            counts[kind] += 1
            if kind not in ("decoded", "clear error") and len(examples[kind]) < 5:
                examples[kind].append(f"input {i}: {detail}")
            if (i + 1) % 1000 == 0:
                print(f"{i + 1} inputs, {time.perf_counter() - start:.0f} s: {dict(counts)}", flush=True)
    print(f"\n{args.inputs} inputs in {time.perf_counter() - start:.0f} s (time bound {args.timeout} s per input)")
    for kind in ("decoded", "clear error", "other", "over the time bound"):
        print(f"{kind:>20}: {counts[kind]}")
    for kind, lines in examples.items():
        print(f"\n{kind}:\n  " + "\n  ".join(lines))


if __name__ == "__main__":
    main()
