"""``MomentumTwin``: frozen exponential-moving-average copies of named modules (MoCo's key encoders)."""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn


class MomentumTwin(nn.Module):
    """Deep copies of ``sources`` (name -> module) whose parameters never train: after each
    ``update(sources)`` every copied parameter is ``m * key + (1 - m) * query``. Only parameters are
    averaged; buffers (BatchNorm running statistics) are the copy's own.

    The copies are sub-modules, so ``state_dict()`` carries them; their ``requires_grad`` is False, so
    neither the optimiser nor DDP sees them. The query modules are passed to every call rather than
    kept here, so no parameter is registered twice.
    """

    def __init__(self, sources: Mapping[str, nn.Module], momentum: float):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.copies = nn.ModuleDict({name: copy.deepcopy(module) for name, module in sources.items()})
        self.copies.requires_grad_(False)
        # The optimiser step of the last update: several micro-steps of one step update once.
        self.register_buffer("last_step", torch.tensor(-1, dtype=torch.long))

    def __getitem__(self, name: str) -> nn.Module:
        return self.copies[name]

    def __contains__(self, name: str) -> bool:
        return name in self.copies

    def _pairs(self, sources: Mapping[str, nn.Module]):
        if set(sources) != set(self.copies):
            raise ValueError(f"momentum sources {sorted(sources)} differ from the copies {sorted(self.copies)}")
        for name, source in sources.items():
            yield self.copies[name], source

    @torch.no_grad()
    def update(self, sources: Mapping[str, nn.Module], step: int | None = None) -> bool:
        """key <- m * key + (1 - m) * query for every parameter; with ``step``, at most once per step
        (gradient accumulation runs several micro-steps on the same query weights). Returns whether
        it updated."""
        if step is not None:
            if int(self.last_step) == step:
                return False
            self.last_step.fill_(step)
        m = self.momentum
        for key, query in self._pairs(sources):
            for k, q in zip(key.parameters(), query.parameters(), strict=True):
                k.mul_(m).add_(q.detach().to(k.dtype), alpha=1.0 - m)
        return True

    @torch.no_grad()
    def sync(self, sources: Mapping[str, nn.Module]) -> None:
        """Copy the query parameters and buffers exactly (after loading weights that have no twin)."""
        for key, query in self._pairs(sources):
            for k, q in zip(key.parameters(), query.parameters(), strict=True):
                k.copy_(q)
            for k, q in zip(key.buffers(), query.buffers(), strict=True):
                k.copy_(q)
