"""The VideoMAE joint trunk: tubelet embedding, BERT text embedding, one stack of ViT blocks for both.

``JointTrunk`` follows the backbone contract the heads rely on:

* ``embed_video(video)`` (B, T, 3, H, W) -> (B, N, W) tokens in Conv3d flatten order (t, h, w),
  with the fixed sin-cos table added (no CLS token, no learned positions);
* ``embed_text(ids)`` (B, L) -> (B, L, W) through a ``transformers`` BertEmbeddings layer;
* ``forward(tokens, key_mask)`` runs the blocks over any sequence of those tokens (video only, text
  only, or [visible video ; text]) with a key-padding mask, then the final LayerNorm.

Blocks are VideoMAE's: pre-LN, exact GELU, LayerNorm eps 1e-6, a bias-free qkv projection with
separate learnable q and v biases (k has none), attention computed by SDPA, optional stochastic depth.
Methods change what flows through the blocks with the CLIP family's ``BlockHook``s
(``before_block``, ``attn_mask``, ``after_block``), never by forking the blocks.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from modules.clip.transformer import BlockHook, LayerNorm

from .config import VideoMAEConfig
from .row_noise import RowStream, next_stream


@functools.lru_cache(maxsize=16)
def _sincos(length: int, width: int) -> Tensor:
    position = torch.arange(length, dtype=torch.float64)[:, None]
    exponent = (2 * (torch.arange(width) // 2)).double() / width
    angles = position / torch.pow(10000.0, exponent)[None]
    table = torch.where(torch.arange(width) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.float()


def sincos_table(length: int, width: int, device=None) -> Tensor:
    """(length, width) fixed positions: dim 2i is sin(p / 10000^(2i/W)), dim 2i+1 the cos of the same angle."""
    return _sincos(length, width).to(device)


def key_mask_bias(valid: Tensor | None) -> Tensor | None:
    """(B, S) 1 = attend / 0 = padding -> additive fp32 (B, 1, 1, S) mask (None when nothing is padded)."""
    if valid is None or bool(valid.all()):
        return None
    bias = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
    return bias.masked_fill(~valid.bool(), float("-inf"))[:, None, None, :]


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's parameters: ``qkv`` (no bias), ``q_bias``, ``v_bias``, ``proj``."""

    def __init__(self, width: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(width)) if qkv_bias else None
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        batch, length, width = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: Tensor, rate: float, training: bool, stream: RowStream | None = None) -> Tensor:
    """Stochastic depth: a sample's residual branch is dropped with probability ``rate`` (kept ones scaled),
    drawn from ``stream`` (per sample, ``row_noise``) or else the global RNG."""
    if rate <= 0.0 or not training:
        return x
    if stream is not None:
        return x * stream.keep((1,) * (x.ndim - 1), rate, x.dtype)
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, eps: float = 1e-6,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads, qkv_bias)
        self.norm2 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, noise: RowStream | None = None) -> Tensor:
        attn_noise, mlp_noise = (noise.derive(0), noise.derive(1)) if noise is not None else (None, None)
        x = x + drop_path(self.attn(self.norm1(x), attn_mask), self.drop_path_rate, self.training, attn_noise)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training, mlp_noise)


def init_vit_weights(module: nn.Module) -> None:
    """VideoMAE's initialisation: Linear xavier-uniform with zero bias, LayerNorm 1 / 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def run_blocks(blocks: Sequence[nn.Module], x: Tensor, valid: Tensor | None = None, hooks: Sequence[BlockHook] = (),
               grad_checkpointing: bool = False) -> Tensor:
    """The blocks over ``x`` with a key-padding mask (``valid`` (B, S), 1 = real token) and hooks. Under
    ``row_noise`` the call takes one stream and hands each block its own, as an argument: a checkpointed
    block recomputes the masks it drew."""
    base = key_mask_bias(valid)
    stream = next_stream()
    for index, block in enumerate(blocks):
        for hook in hooks:
            x = hook.before_block(index, x)
        masks = [m for m in (hook.attn_mask(index, x) for hook in hooks) if m is not None]
        mask = base
        for extra in masks:
            mask = extra.float() if mask is None else mask + extra.float()
        noise = stream.derive(index) if stream is not None else None
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, mask, noise, use_reentrant=False)
        else:
            x = block(x, mask, noise)
        for hook in hooks:
            x = hook.after_block(index, x)
    return x


def complete_tubelets(video: Tensor, video_mask: Tensor | None, tubelet: int) -> tuple[Tensor, Tensor]:
    """Frames past a clip's last real one (and up to a multiple of ``tubelet``) become copies of it, as
    VideoMAE's loaders repeat the frames of short videos; returns (video (B, T', ...), mask (B, T')) with
    T' the next multiple of ``tubelet`` and the mask 0 on every added or padded frame. The tubelet at a
    clip's end is thus complete, and tubelets with no real frame are the caller's to hide."""
    batch, frames = video.shape[:2]
    total = -(-frames // tubelet) * tubelet
    mask = torch.ones(batch, frames, dtype=torch.long, device=video.device) if video_mask is None else video_mask
    mask = F.pad(mask.long(), (0, total - frames))
    if total == frames and bool(mask.all()):
        return video, mask
    index = torch.arange(total, device=video.device).expand(batch, -1)
    source = torch.where(mask.bool(), index, torch.zeros_like(index)).cummax(dim=1).values
    source = source.clamp_max(frames - 1)
    return video[torch.arange(batch, device=video.device)[:, None], source], mask


class TubeletEmbedding(nn.Module):
    """A 3-D convolution with kernel = stride = (tubelet, patch, patch) (parameters ``proj``, ``proj_bias``;
    VideoMAE's ``patch_embed.proj``) plus the fixed sin-cos table; no CLS token."""

    def __init__(self, config: VideoMAEConfig):
        super().__init__()
        self.config = config
        t, p = config.tubelet_size, config.patch_size
        conv = nn.Conv3d(3, config.width, kernel_size=(t, p, p), stride=(t, p, p))  # PyTorch's initialisation
        self.proj, self.proj_bias = nn.Parameter(conv.weight.detach()), nn.Parameter(conv.bias.detach())

    def forward(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, T/t * H/p * W/p, width), token index t*(H/p)^2 + h*(W/p) + w."""
        batch, frames, channels, height, width = video.shape
        size, tubelet = self.config.image_size, self.config.tubelet_size
        if (height, width) != (size, size) or channels != 3:
            raise ValueError(f"the VideoMAE trunk takes (B, T, 3, {size}, {size}) clips; got {tuple(video.shape)} "
                             f"(set --image_resolution {size})")
        if frames % tubelet:
            raise ValueError(f"{frames} frames is not a multiple of the tubelet size {tubelet}")
        stride = self.proj.shape[2:]
        x = F.conv3d(video.transpose(1, 2).to(self.proj.dtype), self.proj, self.proj_bias, stride=stride)
        x = x.flatten(2).transpose(1, 2)
        return x + sincos_table(x.shape[1], x.shape[2], x.device).to(x.dtype)


class JointTrunk(nn.Module):
    """One ViT over video tokens, text tokens or both (SimVTP's single stream).

    ``video=False`` / ``text=False`` build a trunk copy without that input side (fine-tuning's dual
    encoder keeps one side per copy); ``final_norm=False`` drops the last LayerNorm (mean pooling then
    uses the head's own ``fc_norm``, as VideoMAE's fine-tuning does)."""

    def __init__(self, config: VideoMAEConfig, video: bool = True, text: bool = True, final_norm: bool = True,
                 drop_path_rate: float = 0.0, text_overrides: dict | None = None):
        super().__init__()
        self.config = config
        rates = [drop_path_rate * i / max(1, config.layers - 1) for i in range(config.layers)]  # linear in depth
        self.visual = TubeletEmbedding(config) if video else None
        self.text, self.text_dropout = None, 0.0
        if text:
            from transformers.models.bert.modeling_bert import BertEmbeddings

            self.text = BertEmbeddings(config.bert_config(**(text_overrides or {})))
            # BERT's embedding dropout runs in embed_text instead, so it can be drawn per sample (row_noise)
            # and the embedding layer (compiled by --compile) holds no randomness.
            self.text_dropout, self.text.dropout = self.text.dropout.p, nn.Identity()
        self.blocks = nn.ModuleList([Block(config.width, config.heads, config.mlp_ratio, config.qkv_bias,
                                           config.norm_eps, rate) for rate in rates])
        self.norm = LayerNorm(config.width, eps=config.norm_eps) if final_norm else None
        self.grad_checkpointing = False
        self.init_weights()

    @property
    def width(self) -> int:
        return self.config.width

    def init_weights(self) -> None:
        init_vit_weights(self)
        if self.text is not None:  # BERT's initialisation of its embedding tables
            for table in (self.text.word_embeddings, self.text.position_embeddings, self.text.token_type_embeddings):
                nn.init.normal_(table.weight, std=0.02)
            if self.text.word_embeddings.padding_idx is not None:
                with torch.no_grad():
                    self.text.word_embeddings.weight[self.text.word_embeddings.padding_idx].zero_()

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def embed_video(self, video: Tensor, video_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, T, 3, H, W) frames and their (B, T) mask -> (tokens (B, N, W), valid (B, N) bool). Padded
        frames are replaced by the clip's last real one (``complete_tubelets``); a token is real when its
        tubelet holds a real frame. A clip's tokens are therefore the same whatever padding follows it."""
        if self.visual is None:
            raise RuntimeError("this trunk copy has no video embedding (the text branch of a dual encoder)")
        video, mask = complete_tubelets(video, video_mask, self.config.tubelet_size)
        return self.visual(video), self.token_validity(mask)

    def embed_text(self, ids: Tensor) -> Tensor:
        if self.text is None:
            raise RuntimeError("this trunk copy has no text embedding (the video branch of a dual encoder)")
        if int(ids.max()) >= self.text.word_embeddings.num_embeddings:
            raise ValueError(f"token id {int(ids.max())} is outside the text embedding's vocabulary of "
                             f"{self.text.word_embeddings.num_embeddings} (tokenizer and --bert_path disagree?)")
        embedded = self.text(input_ids=ids)
        if not self.training or self.text_dropout <= 0.0:
            return embedded
        stream = next_stream()
        if stream is None:
            return F.dropout(embedded, self.text_dropout, training=True)
        return embedded * stream.keep(tuple(embedded.shape[1:]), self.text_dropout, embedded.dtype)

    def token_validity(self, video_mask: Tensor) -> Tensor:
        """(B, T) frame mask (T a multiple of the tubelet) -> (B, N) bool: a token is real when any frame of
        its tubelet is."""
        tubelet, per_slice = self.config.tubelet_size, self.config.grid ** 2
        slices = video_mask.bool().view(video_mask.shape[0], -1, tubelet).any(-1)
        return slices.repeat_interleave(per_slice, dim=1)

    def forward(self, tokens: Tensor, valid: Tensor | None = None, hooks: Sequence[BlockHook] = ()) -> Tensor:
        """(B, S, W) tokens, ``valid`` (B, S) 1 for real tokens -> (B, S, W) after the blocks and final norm."""
        x = run_blocks(self.blocks, tokens, valid, hooks, self.grad_checkpointing)
        return self.norm(x) if self.norm is not None else x


def count_trunk_parameters(config: VideoMAEConfig) -> int:
    """Closed form of the video trunk's parameters (tubelet conv, blocks, final norm), for tests and docs."""
    w, hidden = config.width, int(config.width * config.mlp_ratio)
    conv = 3 * config.tubelet_size * config.patch_size ** 2 * w + w
    attention = 3 * w * w + (2 * w if config.qkv_bias else 0) + w * w + w
    block = 2 * (2 * w) + attention + (w * hidden + hidden) + (hidden * w + w)
    return conv + config.layers * block + 2 * w

