"""What one training micro-step hands to a head, and the default contrastive step.

A head owns its step: ``head.training_step(batch, ctx) -> {"loss": total, other named terms}`` (the
default, in ``modules.heads.base``, encodes both sides, gathers them from every rank and calls
``compute_loss``), and ``head.after_optimizer_step(ctx)`` runs after each optimiser step (momentum
updates, ...). The engine calls the step through the (DDP-wrapped) model's ``forward`` so DDP sees it.

``StepContext`` is how a head reaches the engine without importing it: autocast, gathering across
ranks (with or without gradient), the rank and world size, the global step.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from engine.distributed import DistEnv, gather_features, gather_rows


def autocast_context(precision: str, device: torch.device):
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "amp_fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def as_float(features):
    """fp32 copies of (a tuple of) floating-point features; integer tensors (masks) pass through."""
    if isinstance(features, (tuple, list)):
        return tuple(f.float() if f.is_floating_point() else f for f in features)
    return features.float()


@dataclass
class StepContext:
    env: DistEnv
    precision: str = "fp32"
    step: int = 0  # optimiser steps done so far
    micro_step: int = 0  # this micro-batch's index within the optimiser step (gradient accumulation)

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def device(self) -> torch.device:
        return self.env.device

    def autocast(self):
        return autocast_context(self.precision, self.env.device)

    def gather(self, features):
        """Every rank's features (tensor or tuple, equal shapes), rank order, differentiable, as fp32."""
        return as_float(gather_features(features))

    def gather_nograd(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``x`` concatenated in rank order, without gradient (momentum keys, queues)."""
        return gather_rows(x.detach().contiguous(), self.env)
