"""Evaluation throughput: questions per second on the tiny model with video decoding in DataLoader workers vs
inline, in the same run (the shared clips stand in for a benchmark's videos).

    python benchmarks/bench_eval_throughput.py [--questions 48] [--workers 2] [--num-frames 16]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--benchmark", default="egoschema")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from videollamb_hf.evaluation import evaluate, load_questions
    from videollamb_hf.testing_utils import save_tiny_repo

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    folder = {"egoschema": "egoschema", "nextqa": "next", "mvbench": "mvbench", "egoplan": "egoplan"}[args.benchmark]
    questions = load_questions(args.benchmark, shared / "benchmarks" / folder / "test_q.json",
                               shared / "benchmarks" / folder / "test_a.json")[: args.questions]  # fmt: skip
    clips = sorted((shared / "videos").glob("*.mp4"))
    video_map = {q.video_name: str(clips[i % len(clips)]) for i, q in enumerate(questions)}
    repo = save_tiny_repo(tempfile.mkdtemp(prefix="bench-eval-"))
    model = AutoModelForImageTextToText.from_pretrained(repo).eval()
    processor = AutoProcessor.from_pretrained(repo)
    results = {}
    for workers in (0, args.workers):
        out = tempfile.mkdtemp(prefix=f"bench-eval-{workers}-")
        start = time.perf_counter()
        evaluate(model, processor, args.benchmark, questions, shared / "videos", out, num_frames=args.num_frames,
                 max_new_tokens=4, video_map=video_map, progress=False, num_workers=workers)  # fmt: skip
        results[workers] = len(questions) / (time.perf_counter() - start)
    print(f"{len(questions)} {args.benchmark} questions, {args.num_frames} frames, tiny model, 2 threads")
    print(f"  inline decoding:        {results[0]:.2f} questions/s")
    print(f"  {args.workers} DataLoader workers: {results[args.workers]:.2f} questions/s "
          f"({results[args.workers] / results[0]:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
