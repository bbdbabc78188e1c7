"""Feature-collapse diagnostics: do a model's embeddings still spread out, or have they fallen together?

    python -m tools.diagnostics ~/videos.index [more.index ...]     # the video features of tools.index

* ``mean_pairwise_cosine(features)``: the mean cosine over all pairs of different rows. Near 0 for
  embeddings spread around the origin; near 1 when every row points the same way (a collapsed encoder
  ranks by noise).
* ``effective_rank(features)``: how many directions the rows actually vary along, between 1 and the
  dimension (Roy & Vetterli 2007). Near 1 when the embeddings differ along one direction only
  (dimensional collapse), near the dimension when they vary isotropically.

Both are computed in float64 and need no N x N matrix. They live in ``modules/metrics.py``: every
retrieval evaluation reports them for the video and text features (``features/*`` in metrics.jsonl).
"""
from __future__ import annotations

import argparse
import sys

from modules.metrics import effective_rank, mean_pairwise_cosine

__all__ = ["effective_rank", "index_report", "main", "mean_pairwise_cosine"]


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
