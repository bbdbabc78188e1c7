"""``TubeMaskGenerator``: VideoMAE's tube masking, drawn reproducibly from a seed and a draw counter."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def masked_count(ratio: float, positions: int) -> int:
    """⌊ratio · positions⌋ without float surprises (0.7 * 10 is 6.999... in binary)."""
    return int(math.floor(ratio * positions + 1e-9))


class TubeMaskGenerator(nn.Module):
    """For each sample, exactly ⌊ratio · H'W'⌋ of the H'W' spatial positions are masked, and the same
    positions are masked in every one of the T' temporal slices (a masked "tube" runs through time).

    ``forward(batch, slices)`` -> bool (batch, slices · H'W'), True = masked, in the trunk's token
    order (t · H'W' + h · W' + w). Without an explicit generator the draws come from a private
    generator seeded with ``seed`` and a draw counter kept as a buffer: every rank draws the same masks
    for the same step (draw the global batch, take your rows) and a resumed run continues the sequence.
    """

    def __init__(self, positions: int, ratio: float, seed: int = 0):
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"the video mask ratio must be in [0, 1), got {ratio}: at least one tube stays visible")
        self.positions, self.ratio, self.seed = positions, ratio, seed
        self.num_masked = masked_count(ratio, positions)
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def next_generator(self) -> torch.Generator:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 + int(self.draws))
        self.draws += 1
        return generator

    def spatial(self, batch: int, generator: torch.Generator) -> Tensor:
        """(batch, H'W') bool with exactly ``num_masked`` True per row (a uniformly random subset)."""
        ranks = torch.rand(batch, self.positions, generator=generator).argsort(dim=1).argsort(dim=1)
        return ranks < self.num_masked

    @torch.no_grad()
    def forward(self, batch: int, slices: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        generator = generator if generator is not None else self.next_generator()
        return self.spatial(batch, generator).repeat(1, slices).to(device)

    def extra_repr(self) -> str:
        return f"positions={self.positions}, ratio={self.ratio}, masked={self.num_masked}"
