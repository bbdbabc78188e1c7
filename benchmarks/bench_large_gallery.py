"""Time and peak memory of tiled retrieval ranking on a large gallery.

Random unit-norm features (captions = their video's feature plus noise) stand in for a model; the
similarity is a dot product, as in the meanP head. Every score of the (queries x videos) matrix is
computed once, tile by tile, and the full matrix is never held.

    .venv/bin/python benchmarks/bench_large_gallery.py                      # 20k x 20k, a minute on 2 cores
    .venv/bin/python benchmarks/bench_large_gallery.py --videos 100000      # the 100k x 100k case
    .venv/bin/python benchmarks/bench_large_gallery.py --videos 3000 --captions_per_video 20 --dsl

Peak memory is the process's maximum resident set size (resource.getrusage), so it includes the
Python interpreter, torch and the feature matrices.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modules import metrics as M  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20000)
    parser.add_argument("--captions_per_video", type=int, default=1)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=5.0, help="caption = video feature + noise * N(0, I/D)")
    parser.add_argument("--tile_elements", type=int, default=M.DEFAULT_TILE_ELEMENTS)
    parser.add_argument("--dsl", action="store_true", help="also time DSL post-processing (one extra pass)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(args.seed)
    videos = torch.nn.functional.normalize(torch.randn(args.videos, args.dim, generator=generator), dim=1)
    owner = torch.arange(args.videos).repeat_interleave(args.captions_per_video)
    texts = videos[owner] + args.noise * torch.randn(owner.numel(), args.dim, generator=generator) / args.dim ** 0.5
    texts = torch.nn.functional.normalize(texts, dim=1)
    rss_features = peak_rss_mib()

    def tile(rows, cols):
        return texts[rows] @ videos[cols].T

    print(f"{owner.numel()} captions x {args.videos} videos, D={args.dim}, {torch.get_num_threads()} threads, "
          f"tile <= {args.tile_elements} scores; full matrix would be {owner.numel() * args.videos * 4 / 2**30:.1f} GiB")
    start = time.perf_counter()
    counts = M.count_ranks(tile, owner, args.videos, tile_elements=args.tile_elements)
    raw = M.summarise(counts.ranks())
    seconds = time.perf_counter() - start
    print(f"raw ranks: {seconds:.1f} s ({owner.numel() * args.videos / seconds / 1e9:.2f} G scores/s), "
          f"peak RSS {peak_rss_mib():.0f} MiB (after building features: {rss_features:.0f} MiB)")
    if args.dsl:
        start = time.perf_counter()
        t2v, v2t = M.dsl_transforms(tile, owner.numel(), args.videos, 1.0, args.tile_elements)
        dsl_counts = M.count_ranks(tile, owner, args.videos, t2v_transform=t2v, v2t_transform=v2t,
                                   tile_elements=args.tile_elements)
        raw.update(M.summarise(dsl_counts.ranks(), prefix="dsl/"))
        print(f"dsl: {time.perf_counter() - start:.1f} s, peak RSS {peak_rss_mib():.0f} MiB")
    print(M.format_table(raw))


if __name__ == "__main__":
    main()
