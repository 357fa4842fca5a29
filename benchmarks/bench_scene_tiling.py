"""SceneTilling: our vectorised scoring vs the literal nested-loop definition, in one run.

    python benchmarks/bench_scene_tiling.py [--repeats 3]

Two tables:
1. Scoring (depth scores + boundary selection, top-k and threshold mode) from a similarity curve: the part the
   original computes with nested loops and we compute in O(n). Curves: "random" (short climbs, the loop's easy
   case), "scenes" (long flat scenes with small noise), "monotone" (one climb over the whole video, the loop's
   O(n^2) worst case).
2. End to end from 1024-d frame features, cosine similarities included. Both sides call the same
   `torch.cosine_similarity` (bit-identical scores need it), so at large n that shared step dominates.
The literal loop is skipped where it would take minutes ("-").
"""

import argparse
import time

import torch

from videollamb_hf.scene_tiling import boundaries_from_depths, depth_scores, find_scene_boundaries
from videollamb_hf.testing_utils import literal_boundaries_from_similarities, literal_scene_boundaries


def curve(kind: str, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    if kind == "random":
        return torch.rand(n - 1, generator=g)
    if kind == "scenes":
        cuts = torch.zeros(n - 1)
        cuts[63::64] = 0.6
        return 0.95 - cuts + 0.01 * torch.rand(n - 1, generator=g)
    return torch.linspace(0.99, 0.1, n - 1)


def features(kind: str, n: int, dim: int = 1024) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    if kind == "random":
        return torch.randn(n, dim, generator=g)
    scenes = torch.randn(max(2, n // 64 + 1), dim, generator=g)
    return scenes.repeat_interleave(64, 0)[:n] + 0.05 * torch.randn(n, dim, generator=g)


def best_time(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def ours_from_similarities(sim):
    depths = depth_scores(sim)
    return boundaries_from_depths(depths), boundaries_from_depths(depths, "threshold")


def literal_from_similarities(sim):
    return literal_boundaries_from_similarities(sim), literal_boundaries_from_similarities(sim, "threshold")


def row(n, kind, ours_t, ref_t, agree):
    if ref_t is None:
        return f"{n:>7} {kind:>9} {ours_t * 1e3:>10.3f} {'-':>13} {'-':>9}  -"
    return f"{n:>7} {kind:>9} {ours_t * 1e3:>10.3f} {ref_t * 1e3:>13.1f} {ref_t / ours_t:>8.0f}x  {agree}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = f"{'frames':>7} {'input':>9} {'ours (ms)':>10} {'literal (ms)':>13} {'ratio':>9}  boundaries agree"
    print("1. Scoring from the similarity curve (depth scores + top-k and threshold selection)")
    print(header)
    for n in (64, 1024, 16384):
        for kind in ("random", "scenes", "monotone"):
            sim = curve(kind, n)
            ours_t, ours = best_time(lambda s=sim: ours_from_similarities(s), args.repeats)
            if kind == "monotone" and n > 1024:
                print(row(n, kind, ours_t, None, None))
                continue
            ref_t, ref = best_time(lambda s=sim: literal_from_similarities(s), 1 if n > 1024 else args.repeats)
            print(row(n, kind, ours_t, ref_t, ours == ref))
    print("\n2. End to end from 1024-d frame features (shared cosine similarity included)")
    print(header)
    for n in (64, 1024, 16384):
        for kind in ("random", "scenes"):
            feats = features(kind, n)
            ours_t, ours = best_time(
                lambda f=feats: (find_scene_boundaries(f), find_scene_boundaries(f, "threshold")), args.repeats
            )
            ref_t, ref = best_time(
                lambda f=feats: (literal_scene_boundaries(f), literal_scene_boundaries(f, "threshold")),
                1 if n > 1024 else args.repeats,
            )
            print(row(n, kind, ours_t, ref_t, ours == ref))


if __name__ == "__main__":
    main()
