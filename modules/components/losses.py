"""Contrastive losses shared by the pre-training heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def queue_infonce(query: Tensor, key: Tensor, queue: Tensor, temperature: float, reduction: str = "mean") -> Tensor:
    """MoCo's InfoNCE: for each row b, -log softmax([q_b . k_b, q_b . Q_1, ..., q_b . Q_K] / tau)[0].

    ``query`` and ``key`` (N, D) are L2-normalised here (so the loss ignores their scale); ``queue``
    (D, K) holds unit columns. Only the queue serves as negatives (never the other keys of the batch),
    and neither the key nor the queue carries a gradient. ``reduction``: "mean" or "none" (per row).
    """
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(key.detach().float(), dim=-1)
    positive = (q * k).sum(-1, keepdim=True)
    negatives = q @ queue.detach().float()
    logits = torch.cat([positive, negatives], dim=1) / temperature
    loss = -F.log_softmax(logits, dim=1)[:, 0]
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
