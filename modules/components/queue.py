"""``FeatureQueue``: MoCo-style queues of normalised key features, several sharing one pointer."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """Named queues stored as columns, ``(dim, size * slots)``, and one shared pointer.

    ``layout`` maps a name to ``(dim, slots)``: ``slots`` columns per queued item (1 for a video or a
    sentence, T for the frames of a video, stored video-major and frame-minor). Every queue starts as
    unit-norm Gaussian noise. ``enqueue`` overwrites items ``[ptr, ptr + n)`` of every queue with the
    normalised keys of the whole (gathered) batch and moves the pointer to ``(ptr + n) mod size``;
    there is no wrap-around, so ``size`` must be a multiple of ``n`` (``check_batch``).
    """

    def __init__(self, size: int, layout: Mapping[str, tuple[int, int]]):
        super().__init__()
        if size <= 0 or not layout:
            raise ValueError("a feature queue needs a positive size and at least one named queue")
        self.size = size
        self.layout = dict(layout)
        for name, (dim, slots) in self.layout.items():
            self.register_buffer(name, F.normalize(torch.randn(dim, size * slots), dim=0))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def check_batch(self, items: int) -> None:
        if items <= 0 or self.size % items:
            raise ValueError(f"the queue size {self.size} (--contrast_num_negative) must be a multiple of the global "
                             f"batch {items}: whole batches of queue columns are overwritten, with no wrap-around")

    def snapshot(self, name: str) -> Tensor:
        """A detached copy of queue ``name`` (dim, size * slots): the enqueue writes the buffer in place
        before the backward pass that still needs the negatives."""
        return getattr(self, name).detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: Mapping[str, Tensor], valid: Mapping[str, Tensor] | None = None) -> None:
        """``keys[name]``: (n, dim) for one slot per item, (n, slots, dim) otherwise, the same n for every
        queue. ``valid[name]`` (n, slots), optional: slots marked 0 (padded frames) keep their old column."""
        if set(keys) != set(self.layout):
            raise ValueError(f"enqueue needs keys for every queue {sorted(self.layout)}, got {sorted(keys)}")
        items = {k.shape[0] for k in keys.values()}
        if len(items) != 1:
            raise ValueError(f"every queue must receive the same number of items, got {sorted(items)}")
        n = items.pop()
        self.check_batch(n)
        start = int(self.ptr)
        for name, key in keys.items():
            dim, slots = self.layout[name]
            if key.shape[1:] != ((dim,) if slots == 1 else (slots, dim)):
                raise ValueError(f"queue {name!r} holds {slots} x {dim} per item, got keys of shape {tuple(key.shape)}")
            queue = getattr(self, name)
            columns = torch.arange(start * slots, (start + n) * slots, device=queue.device)
            rows = F.normalize(key.reshape(n * slots, dim).float(), dim=-1).to(queue.dtype)
            if valid is not None and name in valid:
                keep = valid[name].reshape(-1).bool().to(queue.device)
                columns, rows = columns[keep], rows[keep]
            queue[:, columns] = rows.t()
        self.ptr.fill_((start + n) % self.size)
