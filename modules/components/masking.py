"""``BertMasker``: BERT's masked-language-model corruption, with explicit padding and special ids."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: positions without a target


@dataclass
class MaskedText:
    ids: Tensor  # (N, L) the corrupted ids (unchanged at ``masked`` positions when the masker has no mask id)
    labels: Tensor  # (N, L) the original id at selected positions, IGNORE_INDEX elsewhere
    selected: Tensor  # (N, L) bool: positions the loss predicts
    masked: Tensor  # (N, L) bool: selected positions that become [MASK]
    replaced: Tensor  # (N, L) bool: selected positions that become a random id


class BertMasker(nn.Module):
    """Selects each eligible position with probability ``rate``; of the selected, ``mask_fraction``
    become [MASK], ``random_fraction`` a random ordinary id and the rest keep their id (BERT: 0.15,
    0.8, 0.1; SimVTP: 0.75, 1.0, 0.0).

    Never selected: ``pad_id`` (required, since tokenizers differ: CLIP pads with 0), every id in
    ``special_ids`` and, when given, positions whose attention mask is 0. Random ids are drawn
    uniformly from the ids below ``vocab_size`` that are none of these.

    ``mask_id=None`` leaves the ids at [MASK] positions unchanged and only reports them in
    ``MaskedText.masked`` (a vocabulary without a [MASK] token: the caller swaps in a learned embedding).

    Without an explicit generator the draws come from a private generator seeded with ``seed`` and a
    draw counter kept as a buffer, so every rank draws the same masks for the same (gathered) ids and a
    resumed run continues the sequence.
    """

    def __init__(self, vocab_size: int, pad_id: int, special_ids: Iterable[int] = (), mask_id: int | None = None,
                 rate: float = 0.15, mask_fraction: float = 0.8, random_fraction: float = 0.1, seed: int = 0):
        super().__init__()
        if not 0.0 <= rate <= 1.0 or mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
            raise ValueError("masking needs 0 <= rate <= 1 and mask_fraction + random_fraction <= 1")
        self.vocab_size, self.pad_id, self.mask_id = vocab_size, pad_id, mask_id
        self.rate, self.mask_fraction, self.random_fraction, self.seed = rate, mask_fraction, random_fraction, seed
        self.never = sorted({pad_id, *special_ids} | ({mask_id} if mask_id is not None else set()))
        ordinary = torch.ones(vocab_size, dtype=torch.bool, device="cpu")  # draws happen on the CPU
        ordinary[[i for i in self.never if 0 <= i < vocab_size]] = False
        self._random_pool = ordinary.nonzero().squeeze(1)
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def next_generator(self) -> torch.Generator:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.draws))
        self.draws += 1
        return generator

    @torch.no_grad()
    def forward(self, ids: Tensor, attention_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> MaskedText:
        generator = generator if generator is not None else self.next_generator()
        shape, device = ids.shape, ids.device
        select_u = torch.rand(shape, generator=generator).to(device)
        kind_u = torch.rand(shape, generator=generator).to(device)
        random_ids = self._random_pool[torch.randint(len(self._random_pool), shape, generator=generator)].to(device)
        eligible = ~torch.isin(ids, torch.tensor(self.never, device=device))
        if attention_mask is not None:
            eligible &= attention_mask.bool()
        selected = eligible & (select_u < self.rate)
        masked = selected & (kind_u < self.mask_fraction)
        replaced = selected & ~masked & (kind_u < self.mask_fraction + self.random_fraction)
        out = torch.where(replaced, random_ids, ids)
        if self.mask_id is not None:
            out = out.masked_fill(masked, self.mask_id)
        labels = ids.masked_fill(~selected, IGNORE_INDEX)
        return MaskedText(out, labels, selected, masked, replaced)
