"""Video-text losses of the single-stream methods: NormSoftmax (VTC) and binary matching with random negatives (VTM)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_matrix(text: Tensor, video: Tensor, eps: float = 1e-8) -> Tensor:
    """(Nt, D), (Nv, D) -> (Nt, Nv) cosine similarities, in fp32."""
    return F.normalize(text.float(), dim=-1, eps=eps) @ F.normalize(video.float(), dim=-1, eps=eps).t()


def norm_softmax(similarity: Tensor, temperature: float = 0.05) -> Tensor:
    """Frozen-in-time's NormSoftmax on a square cosine matrix (rows = texts, diagonal = pairs): the SUM of
    both directional cross-entropies, −mean_i log softmax(S/τ)_ii − mean_j log softmax(Sᵀ/τ)_jj."""
    logits = similarity.float() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)


def random_negatives(count: int, generator: torch.Generator) -> Tensor:
    """For every i in range(count), a uniformly random j != i (count >= 2)."""
    if count < 2:
        raise ValueError("random negatives need at least 2 samples in the batch")
    offsets = torch.randint(1, count, (count,), generator=generator)
    return (torch.arange(count) + offsets) % count


def matching_labels(positives: int, device=None) -> Tensor:
    """Binary matching targets: [1] * positives followed by [0] * positives."""
    return torch.cat([torch.ones(positives, dtype=torch.long), torch.zeros(positives, dtype=torch.long)]).to(device)
