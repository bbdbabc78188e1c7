"""``PixelDecoder``: the MAE decoder that predicts the pixels of the masked tubes from the visible tokens.

Parameter names follow VideoMAE's pre-training checkpoints (``encoder_to_decoder``, ``mask_token``,
``blocks``, ``norm``, ``head``), so their decoder loads by dropping the ``decoder.`` prefix.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from modules.clip.transformer import LayerNorm
from modules.videomae.transformer import Block, init_vit_weights, run_blocks, sincos_table


class PixelDecoder(nn.Module):
    """visible tokens (B, Nv, W_enc) -> Linear (no bias) to W_dec + decoder sin-cos positions; then one
    learned mask token (+ its position) per masked tube appended, visible first and masked last; the
    blocks; LayerNorm and Linear to ``out_dim`` on the last Nm tokens only. Returns (B, Nm, out_dim),
    row k predicting the k-th masked position in the order given (ascending token index)."""

    def __init__(self, encoder_width: int, width: int, layers: int, heads: int, out_dim: int, mlp_ratio: float = 4.0,
                 eps: float = 1e-6, qkv_bias: bool = True):
        super().__init__()
        self.encoder_to_decoder = nn.Linear(encoder_width, width, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, qkv_bias, eps) for _ in range(layers)])
        self.norm = LayerNorm(width, eps=eps)
        self.head = nn.Linear(width, out_dim)
        init_vit_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def forward(self, visible: Tensor, visible_index: Tensor, masked_index: Tensor, num_tokens: int,
                valid: Tensor | None = None) -> Tensor:
        """``visible`` (B, Nv, W_enc) encoder outputs at token positions ``visible_index`` (B, Nv);
        ``masked_index`` (B, Nm) the positions to predict; ``num_tokens`` the clip's token count (the
        position table's length); ``valid`` (B, Nv + Nm), optional: 0 hides padded tubes from attention."""
        positions = sincos_table(num_tokens, self.mask_token.shape[-1], visible.device)
        x = self.encoder_to_decoder(visible)
        x = x + positions[visible_index].to(x.dtype)
        masked = self.mask_token.to(x.dtype) + positions[masked_index].to(x.dtype)
        x = run_blocks(self.blocks, torch.cat([x, masked], dim=1), valid)
        return self.head(self.norm(x[:, x.shape[1] - masked_index.shape[1]:]))
