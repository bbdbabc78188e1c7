"""Decoding with a prefix-LM transformer (a ``FusionEncoder`` under ``prefix_lm_mask``): the visual
prefix is read by every text position, the text is causal, and the prefix never reads the text.

Because the prefix never reads the text, its keys and values in every block are fixed once the prefix is
encoded, and a text position only reads the positions before it: generation can keep every block's keys
and values (a KV cache) and feed only the new token at each step. Two steppers give the next-token
hidden state behind one interface, so greedy and beam search run on either:

* ``CachedStepper``: the prefix encoded once, then one token per step against the cache;
* ``FullStepper``: the whole [prefix; text so far] re-encoded at every step (T2VLP's decoding), kept
  for the equality test and the speed comparison (``--no_kv_cache``).

A decoder that reads the text tower's token features (T2VLP's) gets them one token per step from
``TextTowerTokens``: the tower is causal, so a token's features depend only on the tokens before it and
the tower's blocks keep a KV cache too; ``with_text_state`` makes beam search reorder that cache with
the decoder's.

``greedy_search`` and ``beam_search`` (batched, length penalty) return token ids without SOT and EOT.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from modules.clip.transformer import KVCache
from modules.components.fusion import FusionEncoder, prefix_lm_mask

# (hidden (N, 1, W)) -> log-probabilities (N, V)
LogProbs = Callable[[Tensor], Tensor]


class CachedStepper:
    """Every block's keys and values (``KVCache``) for the prefix and the tokens fed so far."""

    def __init__(self, fusion: FusionEncoder, prefix: Tensor, prefix_valid: Tensor):
        self.fusion = fusion
        self.caches = [KVCache() for _ in fusion.transformer.resblocks]
        self.length = 0
        # additive key mask of the prefix (N, P); text keys are always valid
        self.key_mask = torch.zeros(prefix_valid.shape, device=prefix.device).masked_fill(~prefix_valid.bool(),
                                                                                         float("-inf"))
        self._run(prefix, self.key_mask[:, None, :])

    def _run(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (N, S, W) at positions length..length+S-1 through every block; ``mask`` (N, S, keys)."""
        x = x + self.fusion.positional_embedding[self.length: self.length + x.shape[1]].to(x.dtype)
        for block, cache in zip(self.fusion.transformer.resblocks, self.caches):
            x = block(x, attn_mask=mask, cache=cache)
        self.length += x.shape[1]
        return x

    def step(self, tokens: Tensor) -> Tensor:
        """Embedded new tokens (N, 1, W) -> their hidden states (N, 1, W)."""
        text_keys = self.length - self.key_mask.shape[1] + 1
        mask = torch.cat([self.key_mask, self.key_mask.new_zeros(self.key_mask.shape[0], text_keys)], dim=1)
        return self._run(tokens, mask[:, None, :])

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (beam search: the surviving beams' parents, or the expansion to beams)."""
        for cache in self.caches:
            cache.reorder(index)
        self.key_mask = self.key_mask.index_select(0, index)


class FullStepper:
    """Re-encodes [prefix; every token fed so far] at each step and reads the last position."""

    def __init__(self, fusion: FusionEncoder, prefix: Tensor, prefix_valid: Tensor):
        self.fusion, self.prefix, self.prefix_valid = fusion, prefix, prefix_valid
        self.text = prefix.new_zeros(prefix.shape[0], 0, prefix.shape[2])

    def step(self, tokens: Tensor) -> Tensor:
        self.text = torch.cat([self.text, tokens], dim=1)
        text_valid = self.prefix_valid.new_ones(self.text.shape[:2])
        mask = prefix_lm_mask(self.prefix_valid, text_valid)
        return self.fusion(torch.cat([self.prefix, self.text], dim=1), attn_mask=mask)[:, -1:]

    def reorder(self, index: Tensor) -> None:
        self.prefix, self.prefix_valid = self.prefix.index_select(0, index), self.prefix_valid.index_select(0, index)
        self.text = self.text.index_select(0, index)


def make_stepper(fusion: FusionEncoder, prefix: Tensor, prefix_valid: Tensor, use_cache: bool = True):
    return (CachedStepper if use_cache else FullStepper)(fusion, prefix, prefix_valid)


class TextTowerTokens:
    """CLIP's text tower (``TextTransformer``) fed one new token per call: ids (N, 1) -> the tower's token
    features (N, 1, D) at that position given every token fed before. Cached: each block keeps its keys
    and values; otherwise the whole caption so far is re-encoded and its last position read."""

    def __init__(self, text: nn.Module, dtype: torch.dtype, use_cache: bool = True):
        self.text, self.dtype, self.use_cache = text, dtype, use_cache
        self.caches = [KVCache() for _ in text.transformer.resblocks]
        self.ids: Tensor | None = None  # the tokens fed so far (N, length)

    def __call__(self, ids: Tensor) -> Tensor:
        self.ids = ids if self.ids is None else torch.cat([self.ids, ids], dim=1)
        if not self.use_cache:
            return self.text(self.ids, return_tokens=True)[1][:, -1:].to(self.dtype)
        position = self.ids.shape[1] - 1
        if position >= self.text.cfg.context_length:
            raise ValueError(f"{position + 1} tokens exceed the text tower's context length {self.text.cfg.context_length}")
        x = self.text.token_embedding(ids) + self.text.positional_embedding[position: position + 1]
        x = x.to(self.text.transformer.resblocks[0].attn.in_proj_weight.dtype)
        for block, cache in zip(self.text.transformer.resblocks, self.caches):
            x = block(x, cache=cache)  # the cache holds only earlier tokens: causal without a mask
        return (self.text.ln_final(x) @ self.text.proj).to(self.dtype)

    def reorder(self, index: Tensor) -> None:
        for cache in self.caches:
            cache.reorder(index)
        if self.ids is not None:
            self.ids = self.ids.index_select(0, index)


class _ReorderedTogether:
    """A stepper whose ``reorder`` also reorders another holder of per-row decoding state."""

    def __init__(self, stepper, other):
        self.stepper, self.other = stepper, other

    def step(self, tokens: Tensor) -> Tensor:
        return self.stepper.step(tokens)

    def reorder(self, index: Tensor) -> None:
        self.stepper.reorder(index)
        self.other.reorder(index)


def with_text_state(stepper, embed):
    """``stepper``, reordering ``embed``'s state with its own when ``embed`` keeps any (``TextTowerTokens``)."""
    return _ReorderedTogether(stepper, embed) if hasattr(embed, "reorder") else stepper


def _strip(rows: list[list[int]], eot: int) -> list[list[int]]:
    return [row[: row.index(eot)] if eot in row else row for row in rows]


@torch.no_grad()
def greedy_search(stepper, embed: Callable[[Tensor], Tensor], log_probs: LogProbs, batch: int, sot: int, eot: int,
                  max_len: int, device) -> list[list[int]]:
    """Argmax at every step from SOT until EOT (or ``max_len`` tokens, EOT included)."""
    token = torch.full((batch, 1), sot, dtype=torch.long, device=device)
    out = torch.zeros(batch, 0, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_len):
        token = log_probs(stepper.step(embed(token))).argmax(-1, keepdim=True)
        token = token.masked_fill(done[:, None], eot)
        out = torch.cat([out, token], dim=1)
        done |= token[:, 0] == eot
        if bool(done.all()):
            break
    return _strip(out.tolist(), eot)


@torch.no_grad()
def beam_search(stepper, embed: Callable[[Tensor], Tensor], log_probs: LogProbs, batch: int, sot: int, eot: int,
                max_len: int, device, beams: int, length_penalty: float = 1.0) -> list[list[int]]:
    """Batched beam search: ``beams`` hypotheses per video, the stepper's rows expanded to batch x beams.

    At each step the 2 x beams best continuations of a video are ranked; one ending in EOT among the
    first ``beams`` ranks becomes a finished hypothesis scored sum(log p) / length ** length_penalty
    (length = tokens after SOT, EOT included), the best ``beams`` others continue. A video is done once
    it has ``beams`` finished hypotheses (so beams = 1 is greedy search exactly); at ``max_len`` the
    live beams are finished as they are. The best-scored finished hypothesis is returned."""
    stepper.reorder(torch.arange(batch, device=device).repeat_interleave(beams))
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start as the same SOT: expand only the first one
    tokens = torch.full((batch * beams, 1), sot, dtype=torch.long, device=device)
    history = torch.zeros(batch * beams, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for length in range(1, max_len + 1):
        logp = log_probs(stepper.step(embed(tokens))).float()  # (batch*beams, V)
        vocab = logp.shape[-1]
        total = (scores.view(-1, 1) + logp).view(batch, beams * vocab)
        top, index = total.topk(2 * beams, dim=1)
        parent, word = index // vocab, index % vocab
        keep_parent = torch.zeros(batch, beams, dtype=torch.long, device=device)
        keep_word = torch.full((batch, beams), eot, dtype=torch.long, device=device)
        keep_score = torch.full((batch, beams), float("-inf"), device=device)
        rows_top, rows_parent, rows_word = top.tolist(), parent.tolist(), word.tolist()
        for b in range(batch):
            if done[b]:
                continue
            kept = 0
            for rank in range(2 * beams):
                score, p, w = rows_top[b][rank], rows_parent[b][rank], rows_word[b][rank]
                if score == float("-inf"):
                    break
                if w == eot:
                    if rank < beams:
                        finished[b].append((score / length ** length_penalty, history[b * beams + p].tolist()))
                    continue
                keep_parent[b, kept], keep_word[b, kept], keep_score[b, kept] = p, w, score
                kept += 1
                if kept == beams:
                    break
            if len(finished[b]) >= beams:
                done[b] = True
        if all(done):
            break
        rows = (torch.arange(batch, device=device)[:, None] * beams + keep_parent).view(-1)
        stepper.reorder(rows)
        history = torch.cat([history.index_select(0, rows), keep_word.view(-1, 1)], dim=1)
        scores = keep_score.masked_fill(torch.tensor(done, device=device)[:, None], float("-inf"))
        tokens = keep_word.view(-1, 1)
    else:
        for b in range(batch):  # max_len reached: the live beams are finished as they are
            if not done[b]:
                for k in range(beams):
                    if scores[b, k] > float("-inf"):
                        finished[b].append((float(scores[b, k]) / max_len ** length_penalty,
                                            history[b * beams + k].tolist()))
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
