"""The one pre-LN transformer shared by CLIP's image and text towers and by every method head.

Methods change what flows through the blocks, never the blocks themselves, through ``BlockHook``s:

* ``before_block(i, x)`` may return a new token tensor: insert, replace or drop prompt tokens (DGL,
  UMP), shift tokens (UMP's STS), regroup frames into one sequence (T2VLP joint attention), or just
  record ``x`` (taps of intermediate tokens).
* ``attn_mask(i, x)`` may return an additive mask for block ``i`` (DGL's global-local attention).
* ``after_block(i, x)`` may return a new token tensor (drop prompt outputs, undo a regrouping).
* ``attn_input(i, x)`` may transform only what the attention branch of block ``i`` reads (before its
  LayerNorm) while the residual keeps ``x`` (a TSM-style shift in the residual branch, UMP's option).

Masks are built in fp32 and cast to the compute dtype only inside attention, so ``-inf`` and large
negative values survive autocast.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (CLIP's fp16 weights need it), cast back."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float() if self.weight is not None else None,
                           self.bias.float() if self.bias is not None else None, self.eps)
        return out.to(dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation CLIP was trained with (not torch's exact GELU)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class KVCache:
    """The keys and values one attention layer has seen so far (incremental decoding: earlier positions
    are not recomputed). ``Attention.forward(..., cache=)`` appends the new positions' and attends over all."""

    def __init__(self):
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def extend(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        return keys, values

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        if self.keys is not None:
            self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, computed by SDPA.

    Parameter names match ``nn.MultiheadAttention`` so OpenAI and CLIP4Clip checkpoints load as they are.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # never leave uninitialised memory behind

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None) -> Tensor:
        """``attn_mask``: additive, (L, S), (batch, L, S) or (batch, 1, L, S); with ``cache`` the keys are the
        cached positions followed by ``x``'s (S = cached + L)."""
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.extend(k, v)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (batch, L, S) -> broadcast over heads
                attn_mask = attn_mask.unsqueeze(1)
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal and attn_mask is None)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False,
                attn_input: Callable[[Tensor], Tensor] | None = None, cache: KVCache | None = None) -> Tensor:
        branch = x if attn_input is None else attn_input(x)
        x = x + self.attn(self.ln_1(branch), attn_mask, is_causal, cache)
        return x + self.mlp(self.ln_2(x))


class BlockHook:
    """Extension point of ``Transformer.forward``; every method defaults to doing nothing."""

    def before_block(self, index: int, x: Tensor) -> Tensor:
        return x

    def attn_mask(self, index: int, x: Tensor) -> Tensor | None:
        return None

    def after_block(self, index: int, x: Tensor) -> Tensor:
        return x

    def attn_input(self, index: int, x: Tensor) -> Tensor:
        return x


def _overrides_attn_input(hook) -> bool:
    method = getattr(type(hook), "attn_input", None)
    return method is not None and method is not BlockHook.attn_input


class TokenTap(BlockHook):
    """Records the tokens entering the chosen blocks: ``tap.tokens[i]``."""

    def __init__(self, indices: Sequence[int]):
        self.indices = set(indices)
        self.tokens: dict[int, Tensor] = {}

    def before_block(self, index: int, x: Tensor) -> Tensor:
        if index in self.indices:
            self.tokens[index] = x
        return x


class JointFrames(BlockHook):
    """Lets the tokens of all frames of a video attend to each other from block ``first`` on.

    Frames arrive as (B*T, N, W); from ``first`` to the last block they travel as one sequence of
    (B, T*N, W) and are split back into frames after the last block (T2VLP's last two blocks).
    ``frame_mask`` (B, T), optional: the tokens of frames marked 0 (padding) are hidden from every
    query of the joint blocks, so padding never changes a real frame's tokens.
    """

    def __init__(self, num_frames: int, first: int, last: int, frame_mask: Tensor | None = None):
        self.num_frames, self.first, self.last = num_frames, first, last
        # (B, 1, T), expanded to every token of its frame in attn_mask; None without padding.
        self.key_mask = key_mask(frame_mask) if frame_mask is not None else None

    def attn_mask(self, index: int, x: Tensor) -> Tensor | None:
        if self.key_mask is None or not self.first <= index <= self.last:
            return None
        return self.key_mask.repeat_interleave(x.shape[1] // self.num_frames, dim=2)  # (B, 1, T*N)

    def before_block(self, index: int, x: Tensor) -> Tensor:
        if index == self.first:
            frames, tokens, width = x.shape
            return x.reshape(frames // self.num_frames, self.num_frames * tokens, width)
        return x

    def after_block(self, index: int, x: Tensor) -> Tensor:
        if index == self.last:
            videos, tokens, width = x.shape
            return x.reshape(videos * self.num_frames, tokens // self.num_frames, width)
        return x


def key_mask(valid: Tensor) -> Tensor | None:
    """(N, S) 0/1 -> additive fp32 (N, 1, S) mask, -inf on the keys marked 0, broadcast over every
    query; None when every key is valid (the unmasked path stays as it is)."""
    valid = valid.bool()
    if bool(valid.all()):
        return None
    mask = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    return mask.masked_fill(~valid, float("-inf"))[:, None, :]


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """Additive fp32 mask: query i sees keys j <= i."""
    return torch.full((length, length), float("-inf"), device=device).triu_(1)


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.resblocks = nn.ModuleList([ResidualBlock(width, heads, mlp_ratio) for _ in range(layers)])
        self.grad_checkpointing = False

    def init_weights(self) -> None:
        attn_std = self.width ** -0.5
        proj_std = self.width ** -0.5 * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, hooks: Sequence[BlockHook] = ()) -> Tensor:
        """x: (batch, tokens, width). ``attn_mask`` is an additive base mask applied in every block."""
        for index, block in enumerate(self.resblocks):
            for hook in hooks:
                x = hook.before_block(index, x)
            mask = self._block_mask(index, x, attn_mask, hooks)
            # With no extra mask SDPA's own causal path is used; it is faster than an explicit mask.
            is_causal = self.causal and mask is None
            attn_input = self._attn_input(index, hooks)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, is_causal, attn_input, use_reentrant=False)
            else:
                x = block(x, mask, is_causal, attn_input)
            for hook in hooks:
                x = hook.after_block(index, x)
        return x

    @staticmethod
    def _attn_input(index: int, hooks: Sequence[BlockHook]) -> Callable[[Tensor], Tensor] | None:
        # None when no hook overrides attn_input, so the common path stays exactly as before.
        active = [hook for hook in hooks if _overrides_attn_input(hook)]
        if not active:
            return None

        def apply(x: Tensor) -> Tensor:
            for hook in active:
                x = hook.attn_input(index, x)
            return x

        return apply

    def _block_mask(self, index: int, x: Tensor, base: Tensor | None, hooks: Sequence[BlockHook]) -> Tensor | None:
        masks = [m for m in (hook.attn_mask(index, x) for hook in hooks) if m is not None]
        if base is not None:
            masks.append(base)
        if not masks:
            return None
        if self.causal:
            masks.append(causal_mask(x.shape[1], x.device))
        total = masks[0].float()
        for mask in masks[1:]:
            total = total + mask.float()
        return total

