"""Encoded features as the evaluation passes them around: a tensor or a tuple of tensors, batch in dim 0
(``RetrievalHead.encode_text`` / ``encode_video``), put back in dataset order after a sharded pass and
scored tile by tile through the head's ``similarity``."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from modules import metrics as M

Features = Any  # Tensor or tuple of Tensors, batch in dim 0


def concat_features(parts: Sequence[Features]) -> Features:
    if isinstance(parts[0], (tuple, list)):
        return tuple(torch.cat([p[i] for p in parts], 0) for i in range(len(parts[0])))
    return torch.cat(list(parts), 0)


def select_features(features: Features, index: torch.Tensor) -> Features:
    if isinstance(features, (tuple, list)):
        return tuple(f.index_select(0, index.to(f.device)) for f in features)
    return features.index_select(0, index.to(features.device))


def feature_count(features: Features) -> int:
    return (features[0] if isinstance(features, (tuple, list)) else features).shape[0]


def put_in_order(features: Features, indices: torch.Tensor, total: int) -> Features:
    """Rows sorted by dataset index, one per index (a sharded sampler may pad with repeats)."""
    order = torch.argsort(indices, stable=True)
    sorted_idx = indices[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    keep = order[first]
    if int(first.sum()) != total or not torch.equal(indices[keep].cpu(), torch.arange(total)):
        raise RuntimeError(f"encoded {int(first.sum())} distinct items, expected {total}")
    return select_features(features, keep)


def similarity_tiles(model, text: Features, video: Features) -> M.TileFn:
    @torch.no_grad()
    def tile(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return model.similarity(select_features(text, rows), select_features(video, cols))

    return tile
