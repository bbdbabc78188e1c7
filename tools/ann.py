"""Nearest neighbours by inner product over unit vectors: exact (tiled matrix products, always
available) or approximate with FAISS (``faiss-cpu``, an inverted-file index), used by the tools and
measured by benchmarks/bench_search.py.

The approximate index is an ``IndexIVFFlat``: ``nlist`` k-means cells (default ~sqrt(N)), of which
``nprobe`` are scanned per query; ``calibrate_nprobe`` picks the smallest nprobe whose recall@k against
exact search reaches a target on a sample of queries.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

FAISS_MIN_ITEMS = 50_000  # below this, exact search is fast enough and exact


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def normalise_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class ExactIndex:
    """Brute force: the top k of ``queries @ vectors.T`` (vectors float32, as given)."""

    kind = "exact"

    def __init__(self, vectors: torch.Tensor, tile: int = 1 << 18):
        self.vectors = vectors.float().contiguous()
        self.tile = tile

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def memory_bytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size()

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, row ids), both (M, min(k, N)), best first."""
        queries = queries.float()
        k = min(k, len(self))
        best_s, best_i = None, None
        for start in range(0, len(self), self.tile):
            block = queries @ self.vectors[start:start + self.tile].t()
            s, i = block.topk(min(k, block.shape[1]), dim=1)
            i = i + start
            if best_s is not None:
                s, order = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, order)
            best_s, best_i = s, i
        return best_s, best_i


class FaissIndex:
    """An inverted-file FAISS index over unit vectors (inner product)."""

    kind = "faiss"

    def __init__(self, index, nprobe: int):
        self.index = index
        self.nprobe = nprobe

    @classmethod
    def build(cls, vectors: torch.Tensor, nlist: int | None = None, train_size: int = 64, seed: int = 0) -> "FaissIndex":
        """k-means on at most ``train_size`` x nlist vectors, then every vector added (row ids = ids)."""
        import faiss

        data = np.ascontiguousarray(vectors.float().numpy())
        n, dim = data.shape
        nlist = nlist or max(1, min(int(round(math.sqrt(n))), n // 39 if n >= 39 else 1))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = data[rng.choice(n, size=min(n, train_size * nlist), replace=False)] if n > train_size * nlist else data
        index.cp.seed = seed
        index.train(sample)
        index.add(data)
        return cls(index, nprobe=min(8, nlist))

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def nlist(self) -> int:
        return self.index.nlist

    def memory_bytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).size)

    def search(self, queries: torch.Tensor, k: int, nprobe: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.index.nprobe = int(nprobe or self.nprobe)
        k = min(k, len(self))
        scores, ids = self.index.search(np.ascontiguousarray(queries.float().numpy()), k)
        return torch.from_numpy(scores), torch.from_numpy(ids).long()

    def save(self, path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path, nprobe: int) -> "FaissIndex":
        import faiss

        return cls(faiss.read_index(str(path)), nprobe)


def recall_at_k(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Mean share of each row's exact top k found in its approximate top k."""
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(1, e.numel()) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits))


def calibrate_nprobe(index: FaissIndex, exact: ExactIndex, queries: torch.Tensor, k: int = 10,
                     target: float = 0.95) -> tuple[int, float]:
    """The smallest nprobe (doubling from 1, then bisected) with recall@k >= target; (nprobe, recall)."""
    _, truth = exact.search(queries, k)

    def recall(nprobe: int) -> float:
        return recall_at_k(index.search(queries, k, nprobe)[1], truth)

    low, high = 0, 1
    while high < index.nlist and recall(high) < target:
        low, high = high, min(index.nlist, high * 2)
    while high - low > 1:
        mid = (low + high) // 2
        if recall(mid) >= target:
            high = mid
        else:
            low = mid
    return high, recall(high)


def timed(fn, *args, repeat: int = 1):
    """(result of the last call, seconds per call)."""
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn(*args)
    return out, (time.perf_counter() - start) / repeat


def scoring_mode(model, features: tuple[torch.Tensor, ...]) -> str:
    """"dot": the score is the cosine of two embeddings; "rerank": another score over features whose first
    tensor is an embedding (candidates by it, then the head's similarity); "full": the head's similarity
    on every video."""
    from modules.heads.base import RetrievalHead  # start-up: see the top

    if type(model).similarity is RetrievalHead.similarity:
        return "dot"
    return "rerank" if features[0].ndim == 2 else "full"


def primary_vectors(features) -> torch.Tensor:
    """Unit vectors of the first feature tensor (the embedding candidates are found by)."""
    first = features[0] if isinstance(features, (tuple, list)) else features
    return normalise_rows(first)


def from_rows(features: tuple[torch.Tensor, ...], rows: torch.Tensor):
    picked = tuple(f.index_select(0, rows) for f in features)
    return picked[0] if len(picked) == 1 else picked
