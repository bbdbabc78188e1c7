"""Text-to-video search over a large index: exact search beside FAISS's inverted-file index.

    python benchmarks/bench_search.py [--n 1000000] [--dim 512] [--queries 200] [--target 0.95]

Two collections of N unit vectors: "random" (isotropic Gaussian: the worst case for any partitioning)
and "clustered" (2,000 Gaussian clusters of different sizes around random centres, noise of norm 0.5, like real
video embeddings, which gather by topic). Queries are collection vectors plus noise of norm 0.25. For each:
build time, size on disk (float16 safetensors for exact, the .faiss file) and in memory, latency per
query one at a time and in batches of 64, and recall@10 against exact search, FAISS at the smallest
nprobe reaching --target on held-out calibration queries. Prints one markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.ann import ExactIndex, FaissIndex, calibrate_nprobe, faiss_available, normalise_rows, recall_at_k  # noqa: E402


def collection(kind: str, n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return normalise_rows(torch.randn(n, dim, generator=g))
    centres = normalise_rows(torch.randn(2000, dim, generator=g))
    sizes = torch.distributions.Dirichlet(torch.full((2000,), 2.0)).sample() * n
    owner = torch.multinomial(sizes / sizes.sum(), n, replacement=True, generator=g)
    out = torch.empty(n, dim)
    for start in range(0, n, 100_000):  # in blocks: the noise of 1M x 512 at once would double the memory
        idx = owner[start:start + 100_000]
        out[start:start + len(idx)] = centres[idx] + (0.5 / dim ** 0.5) * torch.randn(len(idx), dim, generator=g)
    return normalise_rows(out)


def queries_like(vectors: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = vectors[torch.randint(0, len(vectors), (m,), generator=g)]
    return normalise_rows(base + (0.25 / base.shape[1] ** 0.5) * torch.randn(base.shape, generator=g))


def latency(index, queries: torch.Tensor, k: int = 10, batch: int = 1, **kw) -> float:
    """Milliseconds per query."""
    index.search(queries[:batch], k, **kw)  # warm-up
    start = time.perf_counter()
    for s in range(0, len(queries), batch):
        index.search(queries[s:s + batch], k, **kw)
    return 1000 * (time.perf_counter() - start) / len(queries)


def disk_size_fp16(vectors: torch.Tensor, folder: Path) -> int:
    from safetensors.torch import save_file

    path = folder / "exact.safetensors"
    save_file({"f0": vectors.half().contiguous()}, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def bench(kind: str, n: int, dim: int, n_queries: int, target: float, folder: Path) -> list[dict]:
    vectors = collection(kind, n, dim, seed=0)
    queries, calibration = queries_like(vectors, n_queries, seed=1), queries_like(vectors, n_queries, seed=2)
    rows = []
    start = time.perf_counter()
    exact = ExactIndex(vectors)
    build = time.perf_counter() - start
    _, truth = exact.search(queries, 10)
    rows.append({"data": kind, "index": "exact (float32 matmul)", "build_s": build,
                 "disk_mb": disk_size_fp16(vectors, folder) / 1e6, "memory_mb": exact.memory_bytes() / 1e6,
                 "ms_single": latency(exact, queries[:50]), "ms_batched": latency(exact, queries, batch=64),
                 "recall": 1.0, "setting": ""})
    if faiss_available():
        start = time.perf_counter()
        ivf = FaissIndex.build(vectors)
        build = time.perf_counter() - start
        nprobe, _ = calibrate_nprobe(ivf, exact, calibration, k=10, target=target)
        path = folder / "ann.faiss"
        ivf.save(path)
        recall = recall_at_k(ivf.search(queries, 10, nprobe)[1], truth)
        rows.append({"data": kind, "index": "FAISS IVFFlat", "build_s": build, "disk_mb": path.stat().st_size / 1e6,
                     "memory_mb": ivf.memory_bytes() / 1e6, "ms_single": latency(ivf, queries[:50], nprobe=nprobe),
                     "ms_batched": latency(ivf, queries, batch=64, nprobe=nprobe), "recall": recall,
                     "setting": f"nlist {ivf.nlist}, nprobe {nprobe}"})
        path.unlink()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 FAISS's nprobe is calibrated for")
    parser.add_argument("--data", nargs="+", default=["random", "clustered"], choices=["random", "clustered"])
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"N = {args.n:,} x {args.dim}, {args.queries} queries, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}, faiss {'installed' if faiss_available() else 'not installed'}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.data:
            rows += bench(kind, args.n, args.dim, args.queries, args.target, Path(tmp))
    print("| data | index | build (s) | disk (MB) | memory (MB) | ms / query, single | ms / query, batch 64 | "
          "recall@10 | setting |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['data']} | {r['index']} | {r['build_s']:.1f} | {r['disk_mb']:.0f} | {r['memory_mb']:.0f} | "
              f"{r['ms_single']:.2f} | {r['ms_batched']:.2f} | {r['recall']:.3f} | {r['setting']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
