"""A cross-modal fusion encoder and what trains it (T2VLP, github.com/Unified-Robots/T2VLP):

* ``FusionEncoder``: a bidirectional transformer whose blocks start as CLIP's first text blocks, with
  its own positional table (initialised from the text tower's);
* ``prefix_lm_mask`` / ``key_mask``: additive fp32 masks (visual rows never see text under the
  prefix-LM mask; text rows see the visual part and earlier text);
* ``VocabHead``: token logits tied to CLIP's token embedding, ``dropout(o) P Eᵀ + b``;
* ``MatchHead``: bilinear video-text matching logits [unmatch, match] on normalised outputs, the text
  outputs normalised across the pairs scored together (T2VLP's) or each on its own;
* ``HardNegativeSampler``: one negative per row drawn from the off-diagonal softmax of a similarity
  matrix, with a generator every rank seeds alike, so all ranks draw the same negatives from the
  gathered matrix;
* ``gather_batch`` / ``rank_share``: gathering per-rank batches of any sizes and turning this rank's
  share of a loss sum into a term whose DDP-averaged gradient is the global mean's.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.clip.transformer import Transformer, key_mask

__all__ = ["FusionEncoder", "HardNegativeSampler", "MATCH_NORMS", "MatchHead", "VocabHead", "gather_batch", "key_mask",
           "prefix_lm_mask", "rank_share"]


class FusionEncoder(nn.Module):
    """``layers`` pre-LN blocks of the text tower's width, no causal mask, positions of their own.

    Blocks 0..min(layers, text depth)-1 start as the text tower's; any further block keeps CLIP's
    initialisation. The positional table has ``positions`` rows; the first ones copy the text tower's.
    """

    def __init__(self, text: nn.Module, layers: int, positions: int):
        super().__init__()
        cfg = text.cfg
        if layers < 1:
            raise ValueError(f"the fusion encoder needs at least 1 block, got {layers}")
        self.transformer = Transformer(cfg.width, layers, cfg.heads, cfg.mlp_ratio)
        self.transformer.init_weights()
        self.positional_embedding = nn.Parameter(torch.randn(positions, cfg.width) * 0.01)
        self.sync_from(text)

    @torch.no_grad()
    def sync_from(self, text: nn.Module) -> None:
        for ours, theirs in zip(self.transformer.resblocks, text.transformer.resblocks):
            ours.load_state_dict(theirs.state_dict())
        rows = min(self.positional_embedding.shape[0], text.positional_embedding.shape[0])
        self.positional_embedding[:rows].copy_(text.positional_embedding[:rows])

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x (N, S, W) -> (N, S, W); ``attn_mask`` additive fp32, (N, 1, S) or (N, S, S)."""
        positions = self.positional_embedding.shape[0]
        if x.shape[1] > positions:
            raise ValueError(f"a fusion sequence of {x.shape[1]} tokens exceeds the {positions} fusion positions "
                             "(1 + frames + centres + words)")
        return self.transformer(x + self.positional_embedding[: x.shape[1]].to(x.dtype), attn_mask=attn_mask)


def prefix_lm_mask(visual_valid: Tensor, text_valid: Tensor) -> Tensor:
    """(N, V) and (N, L) 0/1 -> additive fp32 (N, V+L, V+L): visual rows see the valid visual keys
    only, text rows the valid visual keys and the valid text keys at or before themselves."""
    n, v = visual_valid.shape
    length = v + text_valid.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool, device=visual_valid.device)
    allowed[:v, v:] = False  # the visual prefix never reads the text it conditions
    allowed[v:, v:] = torch.ones_like(allowed[v:, v:]).tril_()  # text is causal
    valid = torch.cat([visual_valid, text_valid], dim=1).bool()
    allowed = allowed[None] & valid[:, None, :]
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


class VocabHead(nn.Module):
    """logits(o) = dropout(o) P Eᵀ + b with E the token embedding passed in (tied, never copied)."""

    def __init__(self, width: int, vocab_size: int, dropout: float = 0.2):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(width, width) * width ** -0.5)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        return (self.dropout(hidden) @ self.proj.to(hidden.dtype)) @ embedding.to(hidden.dtype).t() + self.bias


MATCH_NORMS = ("candidates", "vector")


class MatchHead(nn.Module):
    """Logits [ôᵥᵀ M⁻ ôₜ, ôᵥᵀ M⁺ ôₜ] of (unmatched, matched) for a group of K scored pairs.

    ``visual`` and ``text`` (..., K, D) hold Ψ's outputs of the K pairs along dim -2. ôᵥ = dropout(v / |v|).
    With ``norm="candidates"`` (T2VLP's code) ôₜ = dropout(t / ||t||_K): every text dimension is divided by
    its norm over the K pairs, so a pair's logits depend on the other pairs scored with it; ``"vector"``
    divides each t by its own norm. Dropout follows the normalisation in both, as in T2VLP's code.
    """

    def __init__(self, width: int, dropout: float = 0.2, norm: str = "candidates", eps: float = 1e-12):
        super().__init__()
        if norm not in MATCH_NORMS:
            raise ValueError(f"the matching head's text normalisation must be one of {', '.join(MATCH_NORMS)}, got {norm!r}")
        self.unmatch = nn.Parameter(torch.randn(width, width) * width ** -0.5)
        self.match = nn.Parameter(torch.randn(width, width) * width ** -0.5)
        self.dropout = nn.Dropout(dropout)
        self.norm, self.eps = norm, eps

    def candidate_sumsq(self, text: Tensor) -> Tensor:
        """(..., K, D) -> (..., 1, D): Σ_K t², the part of the candidate-axis norm these rows contribute."""
        return text.float().square().sum(-2, keepdim=True)

    def forward(self, visual: Tensor, text: Tensor, text_sumsq: Tensor | None = None) -> Tensor:
        """(..., K, D) twice -> (..., K, 2). ``text_sumsq`` (``"candidates"`` only): Σ t² over a group larger
        than the rows given (training: the whole global batch, gathered from every rank)."""
        v = F.normalize(visual.float(), dim=-1, eps=self.eps)
        t = text.float()
        if self.norm == "candidates":
            sumsq = self.candidate_sumsq(t) if text_sumsq is None else text_sumsq.float()
            t = t / sumsq.sqrt().clamp_min(self.eps)
        else:
            t = F.normalize(t, dim=-1, eps=self.eps)
        v, t = self.dropout(v), self.dropout(t)
        return torch.stack([((v @ m.float()) * t).sum(-1) for m in (self.unmatch, self.match)], dim=-1)


class HardNegativeSampler(nn.Module):
    """For an (N, N) score matrix (rows = texts, columns = videos, the pairs on the diagonal): a
    negative video per text drawn ∝ softmax of its row without the diagonal, and a negative text per
    video drawn ∝ softmax of its column without the diagonal. The draws use a CPU generator seeded
    with ``seed`` and a draw counter kept as a buffer: every rank draws the same negatives from the
    same gathered matrix, and a resumed run continues the sequence."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def next_generator(self) -> torch.Generator:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 + int(self.draws))
        self.draws += 1
        return generator

    @staticmethod
    def probabilities(scores: Tensor) -> Tensor:
        """Row-wise softmax with the diagonal excluded (exactly 0), in float64 on the CPU."""
        scores = scores.detach().double().cpu()
        eye = torch.eye(scores.shape[0], dtype=torch.bool)
        return scores.masked_fill(eye, float("-inf")).softmax(-1)

    @torch.no_grad()
    def forward(self, scores: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if scores.shape[0] < 2 or scores.shape[0] != scores.shape[1]:
            raise ValueError(f"hard negatives need a square score matrix of at least 2 pairs, got {tuple(scores.shape)}")
        generator = generator if generator is not None else self.next_generator()
        video_for_text = torch.multinomial(self.probabilities(scores), 1, generator=generator).squeeze(1)
        text_for_video = torch.multinomial(self.probabilities(scores.t()), 1, generator=generator).squeeze(1)
        return video_for_text.to(scores.device), text_for_video.to(scores.device)


def gather_batch(ctx, tensors: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], Tensor]:
    """Every rank's rows of ``tensors`` (same first dim within a rank, any size across ranks) in rank
    order, floating point ones differentiable and fp32 (``ctx.gather``), and the offsets (W + 1,) of
    each rank's rows: rank r holds rows offsets[r]:offsets[r+1]. Rows are padded to the largest rank
    for the collective and the padding dropped after it."""
    rows = tensors[0].shape[0]
    if ctx.world_size == 1:
        return tuple(ctx.gather(tuple(tensors))), torch.tensor([0, rows])
    device = tensors[0].device
    sizes = ctx.gather_nograd(torch.tensor([rows], device=device)).cpu()
    most = int(sizes.max())
    padded = tuple(torch.cat([t, t.new_zeros(most - rows, *t.shape[1:])]) if rows < most else t for t in tensors)
    gathered = ctx.gather(padded)
    keep = torch.cat([torch.arange(r * most, r * most + int(n)) for r, n in enumerate(sizes)]).to(device)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    return tuple(g.index_select(0, keep) for g in gathered), offsets


def rank_share(local_sum: Tensor, count: int | Tensor, ctx) -> Tensor:
    """A loss whose value is the global mean Σ_all / count and whose gradient is W · Σ_this_rank / count:
    DDP's average over the W ranks then gives exactly the global mean's gradient, for any per-rank
    batch sizes. ``count``: the number of terms over all ranks."""
    scaled = local_sum * ctx.world_size / count
    if ctx.world_size == 1:
        return scaled
    total = ctx.gather_nograd(local_sum.detach().float().reshape(1)).sum() / count
    return scaled + (total - scaled.detach())
