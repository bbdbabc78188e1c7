"""What the prompt-tuning heads (DGL, UMP) share: a fully frozen CLIP and deep text prompts after SOT.

Prompts enter the text tower through a ``BlockHook``: inserted right after the start token before
block 0 (so every word, and EOT, can see them under the causal mask) and overwritten before every
later prompted block; the sentence feature is read at EOT, which moves right by the number of prefix
prompts.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from modules.clip import CLIP
from modules.clip.transformer import BlockHook

from .base import RetrievalHead

# (block index, tokens without prompts (N, L, W)) -> prompts (N or 1, n, W)
PromptFn = Callable[[int, Tensor], Tensor]


class PromptTuningHead(RetrievalHead):
    """CLIP is frozen completely (LayerNorms and the temperature too); the logit scale is ln 100."""

    frozen_clip = True

    def __init__(self, clip: CLIP, args=None):
        super().__init__(clip, args)
        clip.requires_grad_(False)
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(100.0))


class TextPromptHook(BlockHook):
    """[SOT | prefix (n_pre) | words ... | postfix (n_post)] in blocks 0 .. depth-1.

    Before block 0 the prompts are inserted; before every later block < ``depth`` the prompt rows are
    replaced (deep prompts: the previous block's prompt outputs are discarded). Blocks >= ``depth``
    carry the last prompts on. The prompt functions see the tokens with the prompt rows removed.
    """

    def __init__(self, prefix: PromptFn, num_prefix: int, depth: int,
                 postfix: PromptFn | None = None, num_postfix: int = 0):
        self.prefix, self.num_prefix, self.depth = prefix, num_prefix, depth
        self.postfix, self.num_postfix = postfix, num_postfix if postfix is not None else 0

    def strip(self, x: Tensor) -> Tensor:
        """The word tokens of a prompted sequence (prompt rows removed)."""
        end = x.shape[1] - self.num_postfix
        return torch.cat([x[:, :1], x[:, 1 + self.num_prefix:end]], dim=1)

    def before_block(self, index: int, x: Tensor) -> Tensor:
        if index >= self.depth or (self.num_prefix == 0 and self.num_postfix == 0):
            return x
        words = x if index == 0 else self.strip(x)
        batch = words.shape[0]
        parts = [words[:, :1]]
        if self.num_prefix:
            parts.append(self.prefix(index, words).to(words.dtype).expand(batch, -1, -1))
        parts.append(words[:, 1:])
        if self.num_postfix:
            parts.append(self.postfix(index, words).to(words.dtype).expand(batch, -1, -1))
        return torch.cat(parts, dim=1)

    def pool_index(self, ids: Tensor) -> Tensor:
        """Row of EOT (the largest id) after the prefix prompts were inserted."""
        return ids.argmax(dim=-1) + self.num_prefix
