"""CLIP: a Vision Transformer image tower and a causal text transformer, projected to one space.

The parameter layout follows OpenAI's release (``visual.*`` unchanged; the text tower's pieces live
under ``text.``), so checkpoints convert by renaming keys only (see ``loading.py``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import CLIPConfig, TextConfig, VisionConfig, get_config
from .transformer import BlockHook, JointFrames, LayerNorm, TokenTap, Transformer


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.num_patches + 1, cfg.width))
        self.ln_pre = LayerNorm(cfg.width)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_post = LayerNorm(cfg.width)
        self.proj = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.conv2: nn.Conv3d | None = None  # set by enable_3d_patch()

    def init_weights(self) -> None:
        scale = self.cfg.width ** -0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        nn.init.kaiming_uniform_(self.conv1.weight, a=math.sqrt(5))
        self.transformer.init_weights()

    def enable_3d_patch(self) -> None:
        """CLIP4Clip's ``--linear_patch 3d``: a (3, p, p) Conv3d over neighbouring frames, initialised so
        that it starts equal to the 2-D patch embedding (the centre slice holds conv1, the others 0)."""
        weight = self.conv1.weight
        self.conv2 = nn.Conv3d(3, self.cfg.width, kernel_size=(3, self.cfg.patch_size, self.cfg.patch_size),
                               stride=(1, self.cfg.patch_size, self.cfg.patch_size), padding=(1, 0, 0), bias=False,
                               device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.conv2.weight.zero_()
            self.conv2.weight[:, :, 1] = weight
        self.conv1.requires_grad_(False)  # video frames now go through conv2 only; conv1 stays for images

    def patchify(self, images: Tensor, num_frames: int | None = None) -> Tensor:
        """(N, 3, H, W) -> patch tokens (N, P, width); with a 3-D patch, N = videos x ``num_frames``."""
        images = images.to(self.conv1.weight.dtype)
        if self.conv2 is not None and num_frames:
            clips = images.unflatten(0, (-1, num_frames)).transpose(1, 2)  # (B, 3, T, H, W)
            grid = self.conv2(clips).transpose(1, 2).flatten(0, 1)  # (B*T, width, h, w)
        else:
            grid = self.conv1(images)
        return grid.flatten(2).transpose(1, 2)

    def embed(self, images: Tensor, num_frames: int | None = None) -> Tensor:
        """(N, 3, H, W) -> tokens (N, 1 + P, width): [CLS | patches] + positions, after ln_pre."""
        patches = self.patchify(images, num_frames)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        if tokens.shape[1] != self.positional_embedding.shape[0]:
            raise ValueError(
                f"images of {tuple(images.shape[-2:])} give {tokens.shape[1] - 1} patches, but this model was "
                f"built for {self.cfg.image_size}x{self.cfg.image_size} ({self.cfg.num_patches} patches)"
            )
        return self.ln_pre(tokens + self.positional_embedding.to(tokens.dtype))

    def project(self, tokens: Tensor) -> Tensor:
        """ln_post then the projection, for any token tensor (..., width) -> (..., embed_dim)."""
        return self.ln_post(tokens) @ self.proj

    def forward(self, images: Tensor, hooks: Sequence[BlockHook] = (), return_tokens: bool = False,
                num_frames: int | None = None):
        """Image features (N, D) from the CLS token; with ``return_tokens`` also every token projected.
        ``num_frames`` tells a 3-D patch embedding how the N images group into videos."""
        tokens = self.transformer(self.embed(images, num_frames), hooks=hooks)
        if return_tokens:
            projected = self.project(tokens)
            return projected[:, 0], projected
        return self.project(tokens[:, 0])


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, causal=True)
        self.ln_final = LayerNorm(cfg.width)
        self.proj = nn.Parameter(torch.empty(cfg.width, embed_dim))

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.proj, std=self.cfg.width ** -0.5)
        self.transformer.init_weights()

    def embed(self, ids: Tensor) -> Tensor:
        """(N, L) ids -> (N, L, width) token plus position embeddings, in the dtype of the blocks."""
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the context length {self.cfg.context_length}")
        blocks = self.transformer.resblocks
        dtype = blocks[0].attn.in_proj_weight.dtype if len(blocks) else self.token_embedding.weight.dtype
        # With fp16 blocks (CLIP4Clip's fp16 weights) the embeddings stay fp32; as in OpenAI's CLIP, each is cast
        # to fp16 first and the sum is taken in fp16 (adding in fp32, then casting, rounds differently).
        return self.token_embedding(ids).to(dtype) + self.positional_embedding[: ids.shape[1]].to(dtype)

    def forward(self, ids: Tensor, hooks: Sequence[BlockHook] = (), pool_index: Tensor | None = None,
                return_tokens: bool = False):
        """Sentence features (N, D) read at the end-of-text token.

        ``pool_index`` overrides where the sentence feature is read (hooks that insert tokens before
        EOT move it); by default it is the position of the largest id, EOT.
        """
        tokens = self.ln_final(self.transformer(self.embed(ids), hooks=hooks))
        if pool_index is None:
            pool_index = ids.argmax(dim=-1)
        pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), pool_index] @ self.proj
        if return_tokens:
            return pooled, tokens @ self.proj
        return pooled


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision, config.embed_dim)
        self.text = TextTransformer(config.text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def init_weights(self) -> "CLIP":
        self.visual.init_weights()
        self.text.init_weights()
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1 / 0.07))
        return self

    def encode_image(self, images: Tensor, hooks: Sequence[BlockHook] = (), return_tokens: bool = False):
        """images float (N, 3, H, W), CLIP-normalised -> (N, D)."""
        return self.visual(images, hooks=hooks, return_tokens=return_tokens)

    def encode_text(self, ids: Tensor, mask: Tensor | None = None, hooks: Sequence[BlockHook] = (),
                    pool_index: Tensor | None = None, return_tokens: bool = False):
        """ids (N, L) -> (N, D); with ``return_tokens`` also (N, L, D) token features after ln_final and
        the projection. ``mask`` is accepted for symmetry: under the causal mask no real token can see
        the padding after EOT, so it changes nothing here; heads use it to pool tokens."""
        del mask
        return self.text(ids, hooks=hooks, pool_index=pool_index, return_tokens=return_tokens)

    def encode_frames(self, video: Tensor, taps: Sequence[int] = (), joint_last_n: int = 0,
                      hooks: Sequence[BlockHook] = (), frame_mask: Tensor | None = None
                      ) -> tuple[Tensor, dict[int, Tensor]]:
        """video (B, T, 3, H, W) -> frame features (B, T, D) and {block: tokens (B, T, N, W)} for ``taps``.

        ``joint_last_n = k`` makes the last k blocks attend across all frames of a video (T2VLP);
        ``frame_mask`` (B, T) hides padded frames (0) from the joint attention.
        """
        batch, frames = video.shape[:2]
        tap = TokenTap(taps)
        all_hooks = [*hooks, tap]
        if joint_last_n:
            depth = self.config.vision.layers
            if not 0 < joint_last_n <= depth:
                raise ValueError(f"joint_last_n must be in 1..{depth} (the vision tower's blocks), got {joint_last_n}")
            all_hooks.append(JointFrames(frames, depth - joint_last_n, depth - 1, frame_mask))
        features = self.visual(video.flatten(0, 1), hooks=all_hooks, num_frames=frames)
        # Per-frame (B*T, N, W) and joint (B, T*N, W) token layouts both regroup to (B, T, N, W).
        tapped = {i: x.reshape(batch, frames, -1, x.shape[-1]) for i, x in tap.tokens.items()}
        return features.view(batch, frames, -1), tapped

    def forward(self, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(ids), self.logit_scale.exp()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable
        self.text.transformer.grad_checkpointing = enable

    def freeze(self, prefixes: Sequence[str] = ("",)) -> int:
        """Stop gradients for every parameter whose name starts with one of ``prefixes`` (default: all).

        Returns the number of parameters frozen. ``freeze(("visual.",))`` freezes the image tower only.
        """
        count = 0
        for name, param in self.named_parameters():
            if any(name.startswith(p) for p in prefixes):
                param.requires_grad_(False)
                count += param.numel()
        return count


def build_clip(config: str | dict | CLIPConfig = "ViT-B/32", device: str | torch.device | None = None) -> CLIP:
    """A randomly initialised CLIP from an architecture name (see ``list_architectures()``) or a config dict.

    On ``device="meta"`` no memory is allocated and no initialisation runs (for counting parameters).
    """
    cfg = get_config(config)
    with torch.device(device or "cpu"):
        model = CLIP(cfg)
    if model.logit_scale.device.type != "meta":
        model.init_weights()
    return model
