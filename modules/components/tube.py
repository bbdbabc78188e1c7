"""Tube tokens and local alignment (T2VLP, github.com/Unified-Robots/T2VLP).

``TubeTokens``: learned semantic centres soft-pool the patch tokens of every frame (the input of the
first joint block of the vision tower), one pooled token per (centre, frame); for each centre the
sequence [mean CLS token; pooled frame tokens] runs through a small "local" transformer initialised
from the vision tower's last blocks, and its first output, through a copy of ``ln_post`` and the
projection, is that centre's tube token. No position embedding is added, so frame order does not
change a tube token; padded frames are left out of the mean and hidden from the local attention.

``local_alignment``: each centre, projected into the text space, attends over the caption's token
features (padding excluded); the MSE between that attended text feature and the tube token is the
alignment loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.clip.transformer import LayerNorm, Transformer, key_mask


class TubeTokens(nn.Module):
    """(B, T, 1 + P, W) block-input tokens and (B, T) frame mask -> tube tokens (B, K, D)."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_centers: int, num_blocks: int):
        super().__init__()
        cfg = visual.cfg
        if not 0 < num_blocks <= cfg.layers:
            raise ValueError(f"the local tube transformer copies 1..{cfg.layers} vision blocks, got {num_blocks}")
        if num_centers < 1:
            raise ValueError(f"--num_centers must be >= 1, got {num_centers}")
        self.centers = nn.Parameter(torch.randn(num_centers, cfg.width) * cfg.width ** -0.5)
        self.center_proj = nn.Linear(cfg.width, embed_dim)  # centres as queries over the text tokens
        self.local = Transformer(cfg.width, num_blocks, cfg.heads, cfg.mlp_ratio)
        self.ln_post = LayerNorm(cfg.width)
        self.proj = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.sync_from(visual)

    @torch.no_grad()
    def sync_from(self, visual: nn.Module) -> None:
        """Local blocks = the vision tower's last blocks, ln_post and projection = its own (as built, or
        after loading weights that have no tube module)."""
        blocks = visual.transformer.resblocks[len(visual.transformer.resblocks) - self.local.layers:]
        for ours, theirs in zip(self.local.resblocks, blocks, strict=True):
            ours.load_state_dict(theirs.state_dict())
        self.ln_post.load_state_dict(visual.ln_post.state_dict())
        self.proj.copy_(visual.proj)

    def pool(self, tokens: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(head token h (B, W): masked mean of the CLS tokens, pooled (B, K, T, W)): for centre k and
        frame t, the patches weighted by softmax over patches of C_k . z_p (no temperature, no norm)."""
        tokens = tokens.to(self.centers.dtype)
        cls, patches = tokens[:, :, 0], tokens[:, :, 1:]
        weights = torch.einsum("btpw,kw->btkp", patches, self.centers).float().softmax(-1).to(patches.dtype)
        pooled = torch.einsum("btkp,btpw->bktw", weights, patches)
        valid = frame_mask.to(cls.dtype).unsqueeze(-1)
        head = (cls * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        return head, pooled

    def forward(self, tokens: Tensor, frame_mask: Tensor) -> Tensor:
        head, pooled = self.pool(tokens, frame_mask)
        batch, centers, frames, width = pooled.shape
        sequence = torch.cat([head[:, None, None].expand(-1, centers, 1, -1), pooled], dim=2).flatten(0, 1)
        valid = torch.cat([torch.ones_like(frame_mask[:, :1]), frame_mask], dim=1).bool()
        mask = key_mask(valid.repeat_interleave(centers, dim=0))
        out = self.local(sequence, attn_mask=mask)[:, 0]  # (B*K, W): the head position
        return (self.ln_post(out) @ self.proj.to(out.dtype)).view(batch, centers, -1)

    def center_queries(self) -> Tensor:
        """The centres projected into the text space, (K, D)."""
        return self.center_proj(self.centers)


def alignment_weights(queries: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
    """beta (B, K, L) = softmax over the valid tokens of queries_k . w_j; padding gets exactly 0."""
    logits = torch.einsum("kd,bld->bkl", queries.float(), words.float())
    return logits.masked_fill(~word_mask.bool()[:, None, :], float("-inf")).softmax(-1)


def local_alignment(queries: Tensor, words: Tensor, word_mask: Tensor, tubes: Tensor) -> Tensor:
    """MSE(sum_j beta_kj w_j, u_k), the mean over (B, K, D) of unnormalised features."""
    attended = torch.einsum("bkl,bld->bkd", alignment_weights(queries, words, word_mask), words.float())
    return F.mse_loss(attended, tubes.float())
