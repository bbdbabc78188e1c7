"""UMP: Unified Modality-aware Prompt tuning (``--method ump``) -- a documented RECONSTRUCTION.

UMP's public code is unfinished (no shared generator, no shift module) and differs from the paper's
figure, so the internals here follow a reconstruction (docs/prompt_tuning.md), and every
choice that the paper's figure and README leave open is a flag:

* R-UPG (``UnifiedPromptGenerator``): ONE module for both branches. Per block k a learnable bank
  P_k (N_p x d_u) attends (single head, width d_a) to the current tokens of the modality it prompts,
  prompts = out_adapter(P_k + attention). Text uses identity adapters (width d_u = text width); video
  maps 768 -> d_u on the way in and back on the way out. Each modality is conditioned only on itself,
  so a text embedding never depends on a video (dual encoder, no batch leakage).
* Video: [CLS | patches | N_p prompts] per frame inside each block, prompts dropped after it.
* R-STS (``spatial_temporal_shift``): parameter-free, in the last K_d blocks: patch channels shift on
  the patch grid, prompt tokens shift across a clip's real frames (padded frames, ``video_mask`` 0,
  take no part: padding never changes a score); CLS is never shifted.
* Text: N_p prompts right after SOT (visible to EOT under the causal mask), replaced every block.
* Video embedding: the mean over frames of the projected CLS tokens (X-Pool's text-conditioned
  pooling, which the released code uses, is ``--ump_pooling xpool``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.clip import CLIP
from modules.clip.transformer import BlockHook, LayerNorm

from modules.flags import arg

from .base import masked_mean, normalise, register_head
from .prompting import PromptTuningHead, TextPromptHook


def add_ump_args(parser) -> None:
    g = parser.add_argument_group("UMP prompt tuning (--method ump; a reconstruction, see docs/prompt_tuning.md)")
    g.add_argument("--ump_prompt_length", type=int, default=8, help="N_p prompts per block (per frame for video)")
    g.add_argument("--ump_attn_dim", type=int, default=192, help="d_a of the generator's attention (192: 1.23M parameters)")
    g.add_argument("--ump_sts_layers", type=int, default=None,
                   help="K_d: the shift runs before each of the last K_d video blocks (default: half of them, 6 at B/32)")
    g.add_argument("--ump_sts_spatial", choices=("four", "two", "none"), default="four",
                   help="patch shift directions: four (left/right/up/down) or two (left/right)")
    g.add_argument("--ump_sts_channels", type=float, default=0.5,
                   help="fraction of the channels shifted spatially, split evenly over the directions")
    g.add_argument("--ump_sts_temporal", choices=("on", "off"), default="on",
                   help="shift half the prompts from the previous frame, half from the next")
    g.add_argument("--ump_sts_mode", choices=("zero", "cyclic"), default="zero",
                   help="what enters at a border: zeros, or the entries that left at the other side")
    g.add_argument("--ump_sts_where", choices=("stream", "residual"), default="stream",
                   help="stream: the shifted tokens replace the block input; residual: only the attention "
                        "branch reads them, x + Attn(LN(shift(x))) (TSM style)")
    g.add_argument("--ump_pooling", choices=("mean", "xpool"), default="mean",
                   help="mean of the frame CLS features (the paper's figure) or a text-conditioned pooler")
    g.add_argument("--ump_pool_dropout", type=float, default=0.3, help="dropout of the xpool pooler")


# -- R-STS ------------------------------------------------------------------------------------------
def _take(t: Tensor, dim: int, offset: int, cyclic: bool) -> Tensor:
    """out[k] = t[k + offset] along ``dim``; outside the range: wrap around or zero."""
    if offset == 0:
        return t
    if cyclic:
        return torch.roll(t, -offset, dims=dim)
    n, size = t.shape[dim], abs(offset)
    pad = torch.zeros_like(t.narrow(dim, 0, size))
    if offset > 0:
        return torch.cat([t.narrow(dim, size, n - size), pad], dim=dim)
    return torch.cat([pad, t.narrow(dim, 0, n - size)], dim=dim)


def _take_frames(t: Tensor, offset: int, cyclic: bool, valid: Tensor | None) -> Tensor:
    """t (B, F, ...): out[:, f] = t[:, f + offset], counting real frames only (``valid`` (B, F), 1 = real;
    None: all real). A clip's real frames shift among themselves as an unpadded clip of that length
    would: its first and last real frames are the borders (zero, or wrap around within the real
    frames). Padded frames neither give nor receive: they keep their own entries."""
    batch, frames = t.shape[:2]
    valid = t.new_ones(batch, frames, dtype=torch.bool) if valid is None else valid.to(t.device, torch.bool)
    length = valid.sum(1, keepdim=True)
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)  # positions of the real frames first
    target = valid.cumsum(1) - 1 + offset  # the rank, among the real frames, of the source
    inside = (target >= 0) & (target < length)
    if cyclic:
        target, inside = target % length.clamp_min(1), torch.ones_like(inside)
    own = torch.arange(frames, device=t.device).expand(batch, -1)
    source = torch.where(valid, order.gather(1, target.clamp(0, frames - 1)), own)
    per_frame = (batch, frames) + (1,) * (t.dim() - 2)
    out = t.gather(1, source.reshape(per_frame).expand_as(t))
    return out.masked_fill((valid & ~inside).reshape(per_frame), 0)


SPATIAL_DIRECTIONS = {"four": ((0, -1), (0, 1), (-1, 0), (1, 0)), "two": ((0, -1), (0, 1)), "none": ()}


def spatial_temporal_shift(x: Tensor, num_frames: int, grid: int, num_prompts: int, spatial: str = "four",
                           channels: float = 0.5, temporal: bool = True, mode: str = "zero",
                           inverse: bool = False, valid: Tensor | None = None) -> Tensor:
    """x (B*F, 1 + grid^2 + N_p, D) -> the same shape; no parameters.

    Patch channel block k takes the value of the grid neighbour (i + di_k, j + dj_k); prompts
    [0, N_p/2) take the vectors of frame f-1 and [N_p/2, N_p) those of frame f+1. ``inverse`` shifts
    the other way (with ``mode='cyclic'`` it restores the input exactly). ``valid`` (B, F), 1 = a real
    frame: the prompts shift only among a clip's real frames (see ``_take_frames``), so a padded clip
    gives its real frames exactly what the unpadded clip gives them.
    """
    cyclic, sign = mode == "cyclic", -1 if inverse else 1
    patches_end = 1 + grid * grid
    if x.shape[1] != patches_end + num_prompts:
        raise ValueError(f"STS expects 1 + {grid}x{grid} patches + {num_prompts} prompts tokens, got {x.shape[1]}")
    z = x.unflatten(0, (-1, num_frames))  # (B, F, n, D)
    cls, patches, prompts = z[:, :, :1], z[:, :, 1:patches_end], z[:, :, patches_end:]
    directions = SPATIAL_DIRECTIONS[spatial]
    if directions:
        width = patches.shape[-1]
        fold = int(width * channels / len(directions))
        grid_view = patches.unflatten(2, (grid, grid))  # (B, F, i, j, D)
        pieces = []
        for k, (di, dj) in enumerate(directions):
            piece = grid_view[..., k * fold:(k + 1) * fold]
            piece = _take(_take(piece, 2, sign * di, cyclic), 3, sign * dj, cyclic)
            pieces.append(piece)
        pieces.append(grid_view[..., len(directions) * fold:])
        patches = torch.cat(pieces, dim=-1).flatten(2, 3)
    if temporal and num_prompts:
        half = num_prompts // 2
        prompts = torch.cat([_take_frames(prompts[:, :, :half], -sign, cyclic, valid),
                             _take_frames(prompts[:, :, half:], sign, cyclic, valid)], dim=2)
    return torch.cat([cls, patches, prompts], dim=2).flatten(0, 1)


# -- R-UPG ------------------------------------------------------------------------------------------
class UnifiedPromptGenerator(nn.Module):
    """One prompt bank per block and one small cross-attention, shared by the text and video branches."""

    def __init__(self, layers: int, num_prompts: int, width: int, vision_width: int, attn_dim: int):
        super().__init__()
        self.prompt_bank = nn.Parameter(torch.randn(layers, num_prompts, width) * 0.02)
        self.video_in = nn.Linear(vision_width, width)
        self.video_out = nn.Linear(width, vision_width)
        self.norm = LayerNorm(width)
        self.query = nn.Linear(width, attn_dim)
        self.key = nn.Linear(width, attn_dim)
        self.value = nn.Linear(width, attn_dim)
        self.out = nn.Linear(attn_dim, width)
        # Zero output: the first pass gives the bare (projected) bank, CLIP sees small prompts at start.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, index: int, tokens: Tensor, modality: str, key_mask: Tensor | None = None) -> Tensor:
        """tokens (N, L, W_m) of the prompted modality -> prompts (N, N_p, W_m).
        ``key_mask`` (N, L), 1 = real token: padding does not condition the prompts."""
        context = self.video_in(tokens) if modality == "video" else tokens
        context = self.norm(context)
        bank = self.prompt_bank[index].to(context.dtype)
        query = self.query(bank).expand(tokens.shape[0], -1, -1)
        mask = None
        if key_mask is not None:
            mask = torch.zeros(key_mask.shape, device=tokens.device).masked_fill_(key_mask == 0, float("-inf"))
            mask = mask[:, None, :].to(query.dtype)
        attended = F.scaled_dot_product_attention(query, self.key(context), self.value(context), attn_mask=mask)
        prompts = bank + self.out(attended)
        return self.video_out(prompts) if modality == "video" else prompts


class UMPVideoHook(BlockHook):
    """Per frame and block: append the UPG prompts (58 tokens at B/32), shift in the last K_d blocks,
    drop the prompt outputs after the block (50 tokens). ``video_mask`` (B, F): padded frames take no
    part in the temporal shift."""

    def __init__(self, upg: UnifiedPromptGenerator, num_frames: int, grid: int, num_prompts: int,
                 sts_from: int, sts: dict, in_residual: bool, video_mask: Tensor | None = None):
        self.upg, self.num_frames, self.grid, self.num_prompts = upg, num_frames, grid, num_prompts
        self.sts_from, self.sts, self.in_residual, self.video_mask = sts_from, sts, in_residual, video_mask

    def shift(self, x: Tensor) -> Tensor:
        return spatial_temporal_shift(x, self.num_frames, self.grid, self.num_prompts, **self.sts,
                                      valid=self.video_mask)

    def before_block(self, index: int, x: Tensor) -> Tensor:
        if self.num_prompts:
            x = torch.cat([x, self.upg(index, x, "video").to(x.dtype)], dim=1)
        if index >= self.sts_from and not self.in_residual:
            x = self.shift(x)
        return x

    def attn_input(self, index: int, x: Tensor) -> Tensor:
        return self.shift(x) if index >= self.sts_from and self.in_residual else x

    def after_block(self, index: int, x: Tensor) -> Tensor:
        return x[:, : x.shape[1] - self.num_prompts]


class TextConditionedPool(nn.Module):
    """A caption's own weighting of a video's frames (single-head attention with the caption as query),
    as X-Pool pools; scores every (caption, video) pair, so similarity grows with Nt x Nv."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm_in, self.norm_mid, self.norm_out = LayerNorm(dim), LayerNorm(dim), LayerNorm(dim)
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """text (Nt, D), frames (Nv, F, D), mask (Nv, F) -> pooled videos (Nt, Nv, D)."""
        text, frames = self.norm_in(text), self.norm_in(frames)
        logits = torch.einsum("td,vfd->tvf", self.query(text), self.key(frames)) / math.sqrt(text.shape[-1])
        logits = logits.masked_fill(frame_mask[None] == 0, float("-inf"))
        pooled = self.norm_mid(self.out(torch.einsum("tvf,vfd->tvd", logits.softmax(-1), self.value(frames))))
        return self.norm_out(pooled + self.dropout(self.proj(pooled)))


@register_head("ump", add_args=add_ump_args)
class UMP(PromptTuningHead):
    def __init__(self, clip: CLIP, args=None):
        super().__init__(clip, args)
        vision, text = clip.config.vision, clip.config.text
        self.num_prompts = arg(args, "ump_prompt_length", 8)
        sts_layers = arg(args, "ump_sts_layers", None)
        if sts_layers is None:
            sts_layers = vision.layers // 2
        if not 0 <= sts_layers <= vision.layers:
            raise ValueError(f"--ump_sts_layers {sts_layers}: between 0 and {vision.layers}")
        self.sts_from = vision.layers - sts_layers
        self.sts = dict(spatial=arg(args, "ump_sts_spatial", "four"), channels=arg(args, "ump_sts_channels", 0.5),
                        temporal=arg(args, "ump_sts_temporal", "on") == "on", mode=arg(args, "ump_sts_mode", "zero"))
        self.sts_in_residual = arg(args, "ump_sts_where", "stream") == "residual"
        self.upg = UnifiedPromptGenerator(max(vision.layers, text.layers), self.num_prompts, text.width,
                                          vision.width, arg(args, "ump_attn_dim", 192))
        # Everything upstream of the zero-initialised output projection has exactly zero gradient at step 1.
        self.zero_grad_at_init = ("upg.norm.", "upg.query.", "upg.key.", "upg.value.", "upg.video_in.")
        self.pooling = arg(args, "ump_pooling", "mean")
        if self.pooling == "xpool":
            self.pooler = TextConditionedPool(clip.embed_dim, arg(args, "ump_pool_dropout", 0.3))

    # UMP's X-Pool-based training script decays every trainable parameter, biases and norms included.
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        return False

    def text_hook(self, text_mask: Tensor) -> TextPromptHook:
        return TextPromptHook(lambda index, words: self.upg(index, words, "text", text_mask),
                              self.num_prompts, self.clip.config.text.layers)

    def encode_text(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        hook = self.text_hook(text_mask)
        return self.clip.encode_text(text_ids, text_mask, hooks=[hook], pool_index=hook.pool_index(text_ids))

    def video_hook(self, num_frames: int, video_mask: Tensor | None = None) -> UMPVideoHook:
        return UMPVideoHook(self.upg, num_frames, self.clip.config.vision.grid_size, self.num_prompts,
                            self.sts_from, self.sts, self.sts_in_residual, video_mask)

    def encode_video(self, video: Tensor, video_mask: Tensor):
        batch, num_frames = video.shape[:2]
        hook = self.video_hook(num_frames, video_mask)
        visual = self.clip.visual
        tokens = visual.transformer(visual.embed(video.flatten(0, 1), num_frames), hooks=[hook])
        frames = visual.project(tokens[:, 0]).unflatten(0, (batch, num_frames))
        if self.pooling == "xpool":
            return frames, video_mask
        return masked_mean(frames, video_mask)

    def similarity(self, text_features, video_features) -> Tensor:
        if self.pooling != "xpool":
            return super().similarity(text_features, video_features)
        frames, video_mask = video_features
        rows = [(normalise(t)[:, None] * normalise(self.pooler(t, frames, video_mask))).sum(-1)
                for t in text_features.split(64)]  # bounded memory: 64 captions x every video at a time
        return torch.cat(rows)
