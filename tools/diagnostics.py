"""Feature-collapse diagnostics: do a model's embeddings still spread out, or have they fallen together?

    python -m tools.diagnostics ~/videos.index [more.index ...]     # the video features of tools.index

* ``mean_pairwise_cosine(features)``: the mean cosine over all pairs of different rows. Near 0 for
  embeddings spread around the origin; near 1 when every row points the same way (a collapsed encoder
  ranks by noise).
* ``effective_rank(features)``: how many directions the rows actually vary along, between 1 and the
  dimension (Roy & Vetterli 2007). Near 1 when the embeddings differ along one direction only
  (dimensional collapse), near the dimension when they vary isotropically.

Both are computed in float64 and need no N x N matrix. Neither imports the training engine.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch
from torch import Tensor

from modules.heads.base import normalise


def _check(features: Tensor) -> Tensor:
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be a (rows, dim) matrix with at least 2 rows, got shape {tuple(features.shape)}")
    features = features.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values")
    return features


def mean_pairwise_cosine(features: Tensor) -> float:
    """Mean of cos(x_i, x_j) over the N(N-1) ordered pairs i != j (the off-diagonal mean of the cosine
    matrix), from the sum of the unit rows: sum_{i != j} u_i.u_j = |sum_i u_i|^2 - sum_i |u_i|^2. A zero
    row counts as cosine 0 with every other row."""
    units = normalise(_check(features))
    n = units.shape[0]
    total = units.sum(0)
    return float((total @ total - (units * units).sum()) / (n * (n - 1)))


def effective_rank(features: Tensor) -> float:
    """exp(entropy of the singular values of the centred rows, normalised to sum 1) (Roy & Vetterli,
    "The effective rank: a measure of effective dimensionality", EUSIPCO 2007). Centring first: a shared
    offset is no direction the rows vary along. Rows that do not vary at all have effective rank 0."""
    centred = _check(features)
    centred = centred - centred.mean(0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    if float(singular.sum()) == 0.0:
        return 0.0
    p = singular / singular.sum()
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def index_report(index_dir) -> str:
    """One line on the embeddings stored in a ``tools.index`` folder (its first feature tensor)."""
    from tools.store import IndexStore  # start-up

    store = IndexStore.open(index_dir)
    store.header()  # refuses another format
    features = store.load_features()[0]
    if features.ndim != 2:
        raise ValueError(f"{index_dir}: its first feature tensor is {tuple(features.shape)}, not one vector per video; "
                         "these diagnostics need (videos, dim)")
    rows, dim = features.shape
    return (f"{index_dir}: {rows} videos x {dim} dims: mean pairwise cosine {mean_pairwise_cosine(features):.4f}, "
            f"effective rank {effective_rank(features):.2f} of {dim}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.diagnostics",
                                     description="feature-collapse diagnostics of the video features in an index")
    parser.add_argument("index", nargs="+", help="folders written by python -m tools.index")
    args = parser.parse_args(argv)
    for index_dir in args.index:
        try:
            print(index_report(index_dir))
        except ValueError as error:  # IndexFolderError included
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
