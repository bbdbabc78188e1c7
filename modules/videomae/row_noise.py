"""Dropout and stochastic depth keyed by sample, not by process.

With the global RNG, a sample's dropout mask depends on which rank holds it, on its position in the
micro-batch and on how many numbers were drawn before it: 2 ranks then train differently from 1
process, and the micro-steps of one optimiser step repeat each other's masks when seeded alike. Here
every random number is a hash of (key, row, element): ``key`` mixes the seed, the optimiser step and a
stream counter (one stream per pass through the blocks, per block and per site), ``row`` is the sample's
index in the optimiser step's global batch. A sample gets the same masks however the global batch is
split over ranks and micro-steps, and different samples and steps get independent ones.

Cost: the hash is a dozen integer element-wise ops on this rank's rows only (no generator state, no
draw for other ranks' rows): B numbers per stochastic-depth site, B x L x W for the text dropout. The
values are exact integer arithmetic, so they are the same on every device and thread count.

Use: the head wraps a training step in ``with row_noise(RowNoise(key, rows)):``; ``run_blocks`` takes
one stream per call (captured as an argument, so a checkpointed block recomputes the same masks) and
``JointTrunk.embed_text`` one for the text dropout. Without a ``row_noise`` context both fall back
to the global RNG.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

_LOW32 = 0xFFFFFFFF


def _times(x, constant: int):
    """(x · constant) mod 2^32 for x in [0, 2^32), a Python int or an int64 tensor: split in 16-bit
    halves so no int64 product overflows."""
    return ((x & 0xFFFF) * constant + (((x >> 16) * (constant & 0xFFFF)) << 16)) & _LOW32


def mix32(x):
    """A bijective 32-bit integer hash (Wellons' "lowbias32" constants) of ints or int64 tensors."""
    x = x & _LOW32
    x = _times(x ^ (x >> 16), 0x7FEB352D)
    x = _times(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


def combine(*values: int) -> int:
    key = 0
    for value in values:
        key = mix32(key ^ mix32(value))
    return key


@dataclass(frozen=True)
class RowStream:
    """The random numbers of one draw site: element e of row r is a hash of (key, rows[r], e)."""
    key: int
    rows: Tensor  # (B,) int64: each row's index in the optimiser step's global batch

    def derive(self, salt: int) -> "RowStream":
        return RowStream(combine(self.key, salt), self.rows)

    def uniform(self, shape: tuple[int, ...]) -> Tensor:
        """(B, *shape) float32 in [0, 1) on the rows' device, 24 random bits each."""
        elements = torch.arange(int(torch.Size(shape).numel()), device=self.rows.device)
        per_row = mix32(self.key ^ mix32(self.rows))
        bits = mix32(per_row[:, None] ^ mix32(elements)[None, :])
        return ((bits >> 8).float() * 2.0 ** -24).view(len(self.rows), *shape)

    def keep(self, shape: tuple[int, ...], rate: float, dtype: torch.dtype) -> Tensor:
        """(B, *shape): 0 with probability ``rate``, else 1 / (1 - rate)."""
        return (self.uniform(shape) >= rate).to(dtype) / (1.0 - rate)


class RowNoise:
    """The randomness of one training micro-step: ``key`` (seed and optimiser step mixed, see
    ``step_key``) and ``rows``, this rank's rows' indices in the step's global batch. Each
    ``next_stream`` is a fresh, independent stream; every rank and split takes them in the same order."""

    def __init__(self, key: int, rows: Tensor):
        self.key, self.rows, self.streams = key, rows, 0

    def next_stream(self) -> RowStream:
        self.streams += 1
        return RowStream(combine(self.key, self.streams), self.rows)

    @contextmanager
    def rows_as(self, rows: Tensor):
        """Streams for a batch laid out otherwise (e.g. positives then negatives: 2B rows)."""
        saved, self.rows = self.rows, rows
        try:
            yield
        finally:
            self.rows = saved


def step_key(seed: int, step: int) -> int:
    return combine(seed, step)


def global_rows(micro_step: int, world_size: int, rank: int, rows: int, device=None) -> Tensor:
    """This rank's rows' indices in the optimiser step's global batch: micro-step a takes the a-th chunk of
    world_size x rows samples and rank r the r-th slice of it (``engine.train_data.EpochSampler``'s layout)."""
    first = (micro_step * world_size + rank) * rows
    return torch.arange(first, first + rows, device=device)


_CURRENT: ContextVar[RowNoise | None] = ContextVar("videomae_row_noise", default=None)


@contextmanager
def row_noise(noise: RowNoise):
    token = _CURRENT.set(noise)
    try:
        yield noise
    finally:
        _CURRENT.reset(token)


def next_stream() -> RowStream | None:
    """The next stream of the active ``row_noise`` context; None outside one (use the global RNG)."""
    noise = _CURRENT.get()
    return noise.next_stream() if noise is not None else None
