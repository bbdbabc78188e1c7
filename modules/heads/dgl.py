"""DGL: Dynamic Global-Local prompt tuning (``--method dgl``), per docs/prompt_tuning.md and github.com/knightyxp/DGL.

CLIP stays frozen. A "shared latent space" generates, for every prompted block, both the text prompts
and the frame (local) prompts: a Linear map from one small table (``--shared_latent_space linear``) or
one pre-LN transformer block over a larger table (``transformer``). The generator's input is a
parameter, so the prompts are the same for every sample: they are computed once per encoder call and
broadcast over the batch.

Video layout per video (frame-major): [g_1..g_ng | frame 1: CLS, f_1..f_nl, patches | frame 2 ...].
Global-local attention is an additive mask given to the shared transformer through a hook: a frame
token sees its own frame and the global prompts; a global prompt sees everything but padded frames
(``video_mask`` 0: the mask is then one per sample), so padding never changes a score. DGL's own loader
fills a short clip's slots with copies of its last frame and its model reads them all: ``--padded_frames
last_frame`` gives that (an all-ones mask), docs/reproduce.md the difference. Local prompts are
replaced before every prompted block; the global prompts are inserted once and evolve (shallow).
The video embedding is the projected output of global prompt 0 (``--visual_output_type``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modules.clip import CLIP
from modules.clip.transformer import BlockHook, QuickGELU, ResidualBlock

from modules.flags import arg

from .base import masked_mean, register_head
from .prompting import PromptTuningHead, TextPromptHook

VISUAL_OUTPUT_TYPES = ("global_prompt", "global_prompts_mean", "frame_cls_mean", "global_and_cls_mean")


def add_dgl_args(parser) -> None:
    g = parser.add_argument_group("DGL prompt tuning (--method dgl)")
    g.add_argument("--shared_latent_space", choices=("linear", "transformer"), default="transformer",
                   help="prompt generator: a Linear map (0.83M parameters) or one transformer block (9.57M at 12 frames)")
    g.add_argument("--text_prompt_length", type=int, default=8,
                   help="text prompts per block: half prefix (after SOT), half postfix (see --dgl_postfix)")
    g.add_argument("--visual_prompt_length", type=int, default=4, help="local prompts per frame per block")
    g.add_argument("--global_prompt_length", type=int, default=4, help="global video prompts (inserted once)")
    g.add_argument("--unified_transformer_layers", "--unified_prompt_layers", dest="unified_transformer_layers",
                   type=int, default=None, help="blocks that get fresh (deep) prompts, from block 0 (default: all, 12 at B/32)")
    g.add_argument("--dgl_postfix", action="store_true",
                   help="also append the postfix text prompts after the padding; under the causal mask they "
                        "cannot reach EOT (dead, as in the official code), so they only cost time")
    g.add_argument("--visual_output_type", choices=VISUAL_OUTPUT_TYPES, default="global_prompt",
                   help="video embedding: global prompt 0, mean of the global prompts, mean of the frame CLS "
                        "tokens, or the mean of both")
    g.add_argument("--dgl_attention", choices=("global_local", "frame"), default="global_local",
                   help="frame: every frame is its own sequence (no global prompts; ablation/debugging)")


@dataclass
class DGLPrompts:
    """Per prompted block l: text prefix (Lp, n_pre, Wt), text postfix (Lp, n_post, Wt) or None,
    frame prompts (Lp, T', n_l, Wv) with T' = 1 (shared by all frames) or one set per frame index."""

    text_prefix: Tensor
    text_postfix: Tensor | None
    frames: Tensor


def global_local_mask(num_global: int, num_frames: int, frame_tokens: int, device=None,
                      valid_frames: Tensor | None = None) -> Tensor:
    """Additive fp32 (N, N) mask: 0 where query i may see key j (i or j global, or the same frame).

    With ``valid_frames`` (B, T), 1 = a real frame: one (B, N, N) mask per sample in which the global
    prompts do not see the padded frames, so nothing of them reaches a global prompt or, through it, a
    real frame. A padded frame still sees itself and the globals (no empty row); nothing reads it."""
    frame_id = torch.arange(num_frames, device=device).repeat_interleave(frame_tokens)
    frame_id = torch.cat([torch.full((num_global,), -1, device=device), frame_id])
    is_global = frame_id < 0
    sees_key = is_global[:, None]  # a global query sees every key ...
    if valid_frames is not None:  # ... of a real frame
        real = valid_frames.to(device=device, dtype=torch.bool).repeat_interleave(frame_tokens, dim=1)
        real = torch.cat([real.new_ones(real.shape[0], num_global), real], dim=1)
        sees_key = sees_key & real[:, None, :]
    allowed = sees_key | is_global[None, :] | (frame_id[:, None] == frame_id[None, :])
    return torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, float("-inf"))


class DGLVideoHook(BlockHook):
    """Builds the global-local layout before block 0, replaces the local prompts before every later
    prompted block, and supplies the global-local mask (per sample when ``video_mask`` pads a clip)."""

    def __init__(self, frame_prompts: Tensor, global_prompts: Tensor, num_frames: int, depth: int, joint: bool,
                 video_mask: Tensor | None = None):
        self.frame_prompts = frame_prompts  # (Lp, T' , n_l, W)
        self.global_prompts = global_prompts  # (n_g, W)
        self.num_frames, self.depth, self.joint = num_frames, depth, joint
        # (B, T), 1 = a real frame; None when no clip is padded: one (N, N) mask then serves the batch
        # (a meta tensor has no values to check: shapes only, it gets the per-sample mask).
        unpadded = video_mask is None or (not video_mask.is_meta and bool(video_mask.all()))
        self.valid_frames = None if unpadded else video_mask.bool()
        self.num_local, self.num_global = frame_prompts.shape[2], global_prompts.shape[0]
        self.frame_tokens: int | None = None  # S = 1 + n_l + P, known once the patches arrive
        self._mask: Tensor | None = None

    def _locals(self, index: int, dtype) -> Tensor:
        prompts = self.frame_prompts[index]
        if prompts.shape[0] != 1:  # one set per frame index
            prompts = prompts[: self.num_frames]
        return prompts.to(dtype)

    def _with_locals(self, frames: Tensor, index: int, keep_from: int) -> Tensor:
        """frames (B, T, S', W): CLS, then the layer's local prompts, then frames[:, :, keep_from:]."""
        batch, num_frames, _, width = frames.shape
        prompts = self._locals(index, frames.dtype).expand(batch, num_frames, -1, -1)
        return torch.cat([frames[:, :, :1], prompts, frames[:, :, keep_from:]], dim=2)

    def before_block(self, index: int, x: Tensor) -> Tensor:
        if index == 0:  # x: (B*T, 1 + P, W) per-frame tokens after ln_pre
            frames = self._with_locals(x.unflatten(0, (-1, self.num_frames)), 0, keep_from=1)
            self.frame_tokens = frames.shape[2]
            if not self.joint:
                return frames.flatten(0, 1)
            batch = frames.shape[0]
            globals_ = self.global_prompts.to(x.dtype).expand(batch, -1, -1)
            return torch.cat([globals_, frames.flatten(1, 2)], dim=1)
        if index >= self.depth or self.num_local == 0:
            return x
        if not self.joint:
            frames = x.unflatten(0, (-1, self.num_frames))
            return self._with_locals(frames, index, 1 + self.num_local).flatten(0, 1)
        globals_, frames = x[:, : self.num_global], x[:, self.num_global:].unflatten(1, (self.num_frames, -1))
        frames = self._with_locals(frames, index, 1 + self.num_local)
        return torch.cat([globals_, frames.flatten(1, 2)], dim=1)

    def attn_mask(self, index: int, x: Tensor) -> Tensor | None:
        if not self.joint:
            return None
        if self._mask is None or self._mask.device != x.device:
            self._mask = global_local_mask(self.num_global, self.num_frames, self.frame_tokens, x.device,
                                           self.valid_frames)
        return self._mask

    def frame_cls_rows(self) -> Tensor:
        return self.num_global + torch.arange(self.num_frames) * self.frame_tokens


@register_head("dgl", add_args=add_dgl_args)
class DGL(PromptTuningHead):
    def __init__(self, clip: CLIP, args=None):
        super().__init__(clip, args)
        vision, text = clip.config.vision, clip.config.text
        self.latent = arg(args, "shared_latent_space", "transformer")
        self.num_text = arg(args, "text_prompt_length", 8)
        self.num_local = arg(args, "visual_prompt_length", 4)
        self.num_global = arg(args, "global_prompt_length", 4)
        self.depth = arg(args, "unified_transformer_layers", None)
        if self.depth is None:
            self.depth = min(vision.layers, text.layers)
        self.use_postfix = arg(args, "dgl_postfix", False)
        self.output_type = arg(args, "visual_output_type", "global_prompt")
        self.joint = arg(args, "dgl_attention", "global_local") == "global_local"
        self.max_frames = arg(args, "max_frames", 12)
        self._check(vision, text)
        self.num_prefix = self.num_text // 2
        self.num_postfix = self.num_text - self.num_prefix
        depth, wv, wt = self.depth, vision.width, text.width
        bound = math.sqrt(6.0 / (3 * vision.patch_size ** 2 + wv))  # VPT-style uniform bound
        self.prompt_embeddings = nn.Parameter(torch.empty(self.num_global, wv).uniform_(-bound, bound))
        if self.latent == "linear":
            self.visual_prompt_embedding = nn.Parameter(torch.empty(self.num_local, depth * wv).uniform_(-bound, bound))
            # Both projections always exist (the paper's count and released checkpoints include the postfix
            # one), but the postfix one only trains with --dgl_postfix: otherwise it never reaches the loss,
            # and a trainable parameter outside the graph stops DDP at its second step.
            self.prefix_text_prompt_proj_layer = nn.Linear(wv, wt)
            self.postfix_text_prompt_proj_layer = nn.Linear(wv, wt)
            self.postfix_text_prompt_proj_layer.requires_grad_(self.use_postfix)
            self.zero_grad_at_init = ("postfix_text_prompt_proj_layer.",)  # behind the causal mask
        else:
            rows = self.num_text + self.num_local * self.max_frames
            self.unified_prompt_embedding = nn.Embedding(rows, depth * wv)  # N(0, 1), as the official code
            self.PromptTransformer = ResidualBlock(wv, vision.heads, vision.mlp_ratio)
            self.unified_prompt_mlp = nn.Sequential(nn.Linear(wv, 2 * wv), QuickGELU(), nn.Linear(2 * wv, wt))

    def _check(self, vision, text) -> None:
        if self.output_type not in VISUAL_OUTPUT_TYPES:
            raise ValueError(f"--visual_output_type {self.output_type!r}: one of {VISUAL_OUTPUT_TYPES}")
        if not 0 <= self.depth <= min(vision.layers, text.layers):
            raise ValueError(f"--unified_transformer_layers {self.depth}: at most {min(vision.layers, text.layers)}")
        if self.latent == "linear" and self.num_text != 2 * self.num_local:
            raise ValueError("DGL-Linear maps each local prompt to one prefix and one postfix text prompt: "
                             f"--text_prompt_length must be 2 x --visual_prompt_length ({2 * self.num_local})")
        if self.num_text % 2:
            raise ValueError("--text_prompt_length is split evenly into prefix and postfix prompts: use an even number")
        needs_global = self.output_type in ("global_prompt", "global_prompts_mean", "global_and_cls_mean")
        if needs_global and (self.num_global == 0 or not self.joint):
            raise ValueError(f"--visual_output_type {self.output_type} needs global prompts and global_local attention")
        if not self.joint and self.num_global:
            raise ValueError("--dgl_attention frame has no place for global prompts: set --global_prompt_length 0")

    # DGL decays everything but biases (its LayerNorm exclusion never matches): follow the code.
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        return "bias" in name

    # -- the shared latent space ------------------------------------------------------------------
    def generate_prompts(self) -> DGLPrompts:
        depth, wv = self.depth, self.clip.config.vision.width
        if self.latent == "linear":
            table = self.visual_prompt_embedding.view(self.num_local, depth, wv).transpose(0, 1)  # (Lp, n_l, Wv)
            prefix = self.prefix_text_prompt_proj_layer(table)
            postfix = self.postfix_text_prompt_proj_layer(table) if self.use_postfix else None
            return DGLPrompts(prefix, postfix, table.unsqueeze(1))
        table = self.unified_prompt_embedding.weight.view(-1, depth, wv).transpose(0, 1)  # (Lp, N_u, Wv)
        out = self.PromptTransformer(table) if table.shape[1] else table  # the Lp layers are independent sequences
        text = self.unified_prompt_mlp(out[:, : self.num_text])
        frames = out[:, self.num_text:].unflatten(1, (self.max_frames, self.num_local))  # frame t: rows 4t..4t+3
        postfix = text[:, self.num_prefix:] if self.use_postfix else None
        return DGLPrompts(text[:, : self.num_prefix], postfix, frames)

    # -- encoders ---------------------------------------------------------------------------------
    def text_hook(self, prompts: DGLPrompts) -> TextPromptHook:
        postfix = None
        if prompts.text_postfix is not None:
            postfix = lambda index, words: prompts.text_postfix[index].unsqueeze(0)  # noqa: E731
        return TextPromptHook(lambda index, words: prompts.text_prefix[index].unsqueeze(0), self.num_prefix,
                              self.depth, postfix, self.num_postfix)

    def encode_text(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        hook = self.text_hook(self.generate_prompts())
        return self.clip.encode_text(text_ids, text_mask, hooks=[hook], pool_index=hook.pool_index(text_ids))

    def video_hook(self, prompts: DGLPrompts, num_frames: int, video_mask: Tensor | None = None) -> DGLVideoHook:
        if prompts.frames.shape[1] != 1 and num_frames > prompts.frames.shape[1]:
            raise ValueError(f"DGL-Transformer was built for --max_frames {prompts.frames.shape[1]}; got {num_frames}")
        return DGLVideoHook(prompts.frames, self.prompt_embeddings, num_frames, self.depth, self.joint, video_mask)

    def video_tokens(self, video: Tensor, hooks=(), video_mask: Tensor | None = None) -> tuple[Tensor, DGLVideoHook]:
        """Final tokens before ln_post: (B, N, W) with global-local attention, (B*T, S, W) per frame.
        Padded frames (``video_mask`` 0) are hidden from the global prompts."""
        batch, num_frames = video.shape[:2]
        hook = self.video_hook(self.generate_prompts(), num_frames, video_mask)
        visual = self.clip.visual
        tokens = visual.transformer(visual.embed(video.flatten(0, 1), num_frames), hooks=[hook, *hooks])
        return tokens, hook

    def encode_video(self, video: Tensor, video_mask: Tensor) -> Tensor:
        batch, num_frames = video.shape[:2]
        tokens, hook = self.video_tokens(video, video_mask=video_mask)
        visual = self.clip.visual
        if self.output_type == "global_prompt":
            return visual.project(tokens[:, 0])
        parts = []
        if self.output_type in ("global_prompts_mean", "global_and_cls_mean"):
            parts.append(visual.project(tokens[:, : self.num_global]).mean(1))
        if self.output_type in ("frame_cls_mean", "global_and_cls_mean"):
            if self.joint:
                cls = tokens[:, hook.frame_cls_rows().to(tokens.device)]
            else:
                cls = tokens[:, 0].unflatten(0, (batch, num_frames))
            parts.append(masked_mean(visual.project(cls), video_mask))
        return sum(parts) / len(parts)

