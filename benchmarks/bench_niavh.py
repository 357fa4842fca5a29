"""Needle in a Video Haystack: seconds per cell at L = 60 s and 320 s, composing through files (the original's way:
the whole composed video written once, then read back by the processor) vs in memory (only the frames the
processor samples are composed, nothing written), in one run, same model, same cells.

    python benchmarks/bench_niavh.py [--model DIR] [--lengths 60 320] [--depths 50] [--fps 1] [--json]

Default model: the tiny random one (`save_tiny_repo`), so the figures are the harness's own cost (decoding the
haystack, composing, writing, sampling); a real model adds the same model time to every route. The haystack is
the shared `sample_demo_1.mp4` + `dance.mp4` (640x360), the needle the shared `readingsky.png`. For files, a cold
cell (compose + write + read) and a warm one (the cached file read again) are both timed.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder or id (default: the tiny random model)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[60, 320])
    parser.add_argument("--depths", type=float, nargs="+", default=[50.0])
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from transformers import pipeline

    import videollamb_hf  # noqa: F401
    from videollamb_hf.evaluation.niavh import Haystack, Needle, compose, compose_to_file, sample_indices
    from videollamb_hf.testing_utils import save_tiny_repo

    work = Path(tempfile.mkdtemp(prefix="bench-niavh-"))
    model = args.model or save_tiny_repo(work / "model")
    pipe = pipeline("video-text-to-text", model=model)
    video_processor = pipe.processor.video_processor
    haystack = Haystack([SHARED / "sample_demo_1.mp4", SHARED / "dance.mp4"])
    needle = Needle("image", str(SHARED / "readingsky.png"))
    question = "What is the young man doing?"
    generate = {"max_new_tokens": args.max_new_tokens, "return_full_text": False}
    pipe(compose(haystack, needle, 4, 0, indices=[0, 5, 10, 15] * 2), question, **generate)  # warm-up

    rows = []
    for length in args.lengths:
        for depth in args.depths:
            indices = sample_indices(length, video_processor, fps=args.fps)
            start = time.perf_counter()
            frames = compose(haystack, needle, length, depth, indices=indices)
            composed = time.perf_counter() - start
            memory_answer = pipe(frames, question, processor_kwargs={"num_frames": len(frames)}, **generate)
            memory = time.perf_counter() - start

            cache = work / f"cache-{length}-{depth:g}"
            start = time.perf_counter()
            path = compose_to_file(haystack, needle, length, depth, cache)
            written = time.perf_counter() - start
            kwargs = {"fps": args.fps, "max_frames": 512}
            file_answer = pipe(str(path), question, processor_kwargs=kwargs, **generate)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            path = compose_to_file(haystack, needle, length, depth, cache)  # cached
            pipe(str(path), question, processor_kwargs=kwargs, **generate)
            warm = time.perf_counter() - start
            rows.append({
                "length_s": length, "depth": depth, "frames": len(indices),
                "memory_s": round(memory, 3), "memory_compose_s": round(composed, 3),
                "file_cold_s": round(cold, 3), "file_write_s": round(written, 3), "file_warm_s": round(warm, 3),
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "cold_over_memory": round(cold / memory, 2), "warm_over_memory": round(warm / memory, 2),
                "same_answer": memory_answer[0]["generated_text"] == file_answer[0]["generated_text"],
            })  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| L (s) | depth | frames | memory s/cell | files, cold s/cell (write) | files, warm s/cell | file MB "
          "| cold / memory | warm / memory | same answer |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['length_s']} | {r['depth']:g} | {r['frames']} | {r['memory_s']} | {r['file_cold_s']} "
              f"({r['file_write_s']}) | {r['file_warm_s']} | {r['file_mb']} | {r['cold_over_memory']}x "
              f"| {r['warm_over_memory']}x | {'yes' if r['same_answer'] else 'NO'} |")  # fmt: skip


if __name__ == "__main__":
    main()
