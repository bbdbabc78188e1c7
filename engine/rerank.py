"""Two-stage retrieval: the dual-encoder scores choose the top-K candidates of every query in both
directions, and the head's cross-encoder re-scores them (T2VLP's retrieval evaluation). For a candidate c of
query q

    score(q, c) = softmax over q's K candidates of (s · S[q, ·])[c] · 1000 · p_match(q, c) + 1000,

with s the head's logit scale (``score_scale``) and p_match the cross-encoder's matching probability;
every other entry keeps its raw score S. Raw scores are cosines (at most 1), so every candidate
outranks every non-candidate, and candidates are ordered by softmax(s·S) · p_match.

A head re-ranks when it has ``can_rerank()`` true and ``match_probability(text_features,
video_features, text_index, video_index)`` taking (G, K) indices, one query's K candidates per row;
``--rerank_topk 0`` turns it off. Each query's candidates are scored as one group, T2V and V2T
separately, as T2VLP does: its matching head normalises across the candidates scored together, so a
pair's p_match may differ between the two directions. The cost is one cross-encoder pass per
(query, candidate) pair: Nt·K T2V pairs and Nv·K V2T pairs. Whole groups are batched (about
``--rerank_batch`` pairs a batch), sharded over the ranks like encoding, gathered and put back in
order; the pass count is logged and written to the metrics.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.distributed import DistEnv, gather_rows, shard_indices
from engine.features import put_in_order, similarity_tiles
from engine.step import autocast_context
from modules import metrics as M

log = logging.getLogger("univtr")
OFFSET = 1000.0  # T2VLP's: lifts every candidate above every raw score


def wants_rerank(model, args) -> bool:
    can = getattr(model, "can_rerank", None)
    return getattr(args, "rerank_topk", 0) > 0 and can is not None and bool(can())


@dataclass
class Reranked:
    """Per query the candidates (indices into the other side) and their re-ranked scores."""

    topk: int
    t2v_candidates: Tensor  # (Nt, Kv) video indices
    t2v_scores: Tensor  # (Nt, Kv)
    v2t_candidates: Tensor  # (Nv, Kt) caption indices
    v2t_scores: Tensor  # (Nv, Kt)
    passes: int  # cross-encoder passes (T2V pairs + V2T pairs)

    def transforms(self) -> tuple[M.TransformFn, M.TransformFn]:
        """(t2v, v2t) tile transforms for ``metrics.count_ranks``: candidates get their re-ranked score,
        every other entry stays raw."""
        num_captions, num_videos = self.t2v_candidates.shape[0], self.v2t_candidates.shape[0]

        def t2v(raw, rows, cols):
            return _override(raw, rows, cols, num_videos, self.t2v_candidates, self.t2v_scores)

        def v2t(raw, rows, cols):
            return _override(raw.t(), cols, rows, num_captions, self.v2t_candidates, self.v2t_scores).t()

        return t2v, v2t

    def summary(self) -> dict[str, float]:
        return {"rerank/topk": float(self.topk), "rerank/fusion_passes": float(self.passes)}

    def note(self) -> str:
        return (f"rerank: the top {self.topk} candidates of every query (both directions) re-scored by the "
                f"cross-encoder, softmax(s*S)*{OFFSET:g}*p_match + {OFFSET:g}; {self.passes} fusion passes")


def _override(raw: Tensor, rows: Tensor, cols: Tensor, num_cols: int, candidates: Tensor, scores: Tensor) -> Tensor:
    """``raw`` (rows x cols) with the candidates of each row replaced by their scores."""
    out = raw.float().clone()
    position = torch.full((num_cols,), -1, dtype=torch.long)
    position[cols.cpu()] = torch.arange(cols.numel())
    local = position[candidates[rows.cpu()]]  # (R, K): column inside the tile, -1 outside it
    inside = local >= 0
    row = torch.arange(rows.numel())[:, None].expand_as(local)
    out[row[inside].to(out.device), local[inside].to(out.device)] = scores[rows.cpu()][inside].to(out)
    return out


def topk_per_row(tile_fn: M.TileFn, num_rows: int, num_cols: int, k: int,
                 tile_elements: int = M.DEFAULT_TILE_ELEMENTS) -> tuple[Tensor, Tensor]:
    """(values, column indices) of the k best columns of every row, streaming over tiles (on the CPU)."""
    side = max(1, int(tile_elements ** 0.5))
    values = torch.empty(num_rows, k)
    indices = torch.empty(num_rows, k, dtype=torch.long)
    for r in range(0, num_rows, side):
        rows = torch.arange(r, min(r + side, num_rows))
        best_vals, best_idx = torch.empty(rows.numel(), 0), torch.empty(rows.numel(), 0, dtype=torch.long)
        for c in range(0, num_cols, side):
            cols = torch.arange(c, min(c + side, num_cols))
            vals = torch.cat([best_vals, tile_fn(rows, cols).float().cpu()], 1)
            idx = torch.cat([best_idx, cols[None].expand(rows.numel(), -1)], 1)
            best_vals, pick = vals.topk(min(k, vals.shape[1]), dim=1)
            best_idx = idx.gather(1, pick)
        values[rows], indices[rows] = best_vals, best_idx
    return values, indices


@torch.no_grad()
def rerank_candidates(model, encoded, args, env=None, precision: str = "fp32") -> Reranked:
    """Top-K candidates per query in both directions, re-scored by ``model``'s cross-encoder; every
    rank calls it (the passes are sharded), every rank gets the result."""
    env = env or DistEnv()
    num_captions, num_videos = encoded.num_captions, encoded.num_videos
    tiles = similarity_tiles(model, encoded.text, encoded.video)
    k = args.rerank_topk
    t2v_vals, t2v_idx = topk_per_row(tiles, num_captions, num_videos, min(k, num_videos), args.eval_tile_elements)
    v2t_vals, v2t_idx = topk_per_row(lambda rows, cols: tiles(cols, rows).t(), num_videos, num_captions,
                                     min(k, num_captions), args.eval_tile_elements)
    passes = t2v_idx.numel() + v2t_idx.numel()
    log.info("re-ranking: top %d of %d videos per caption and of %d captions per video: %d + %d fusion passes, "
             "%d per rank", k, num_videos, num_captions, t2v_idx.numel(), v2t_idx.numel(),
             -(-num_captions // env.world_size) * t2v_idx.shape[1] + -(-num_videos // env.world_size) * v2t_idx.shape[1])
    p_t2v = _match_sharded(model, encoded, torch.arange(num_captions)[:, None].expand_as(t2v_idx), t2v_idx, args, env,
                           precision)
    p_v2t = _match_sharded(model, encoded, v2t_idx, torch.arange(num_videos)[:, None].expand_as(v2t_idx), args, env,
                           precision)
    scale = float(model.score_scale())
    return Reranked(k, t2v_idx, rerank_scores(t2v_vals, p_t2v, scale), v2t_idx, rerank_scores(v2t_vals, p_v2t, scale),
                    passes)


def rerank_scores(raw: Tensor, p_match: Tensor, scale: float) -> Tensor:
    """(Q, K) raw candidate scores and matching probabilities -> softmax_K(scale · raw) · 1000 · p + 1000."""
    return (scale * raw.double()).softmax(-1).float() * OFFSET * p_match.float() + OFFSET


def _match_sharded(model, encoded, text_index: Tensor, video_index: Tensor, args, env, precision: str) -> Tensor:
    """(G, K) p_match of the pairs (text_index[g, k], video_index[g, k]), each row one query's candidates
    scored together; this rank evaluates its contiguous share of the rows in batches of whole rows, the
    shares are gathered in order."""
    from tqdm import tqdm

    total, group = text_index.shape
    share = torch.tensor(shard_indices(total, env))
    device = (encoded.text[0] if isinstance(encoded.text, (tuple, list)) else encoded.text).device
    batches = share.split(max(1, args.rerank_batch // max(1, group)))
    was_training = getattr(model, "training", False)
    model.eval()
    parts = []
    try:
        with autocast_context(precision, device):
            for batch in tqdm(batches, desc="re-ranking", disable=not env.is_main, leave=False,
                              mininterval=1.0 if sys.stderr.isatty() else 30.0):
                parts.append(model.match_probability(encoded.text, encoded.video, text_index[batch].to(device),
                                                     video_index[batch].to(device)).float())
    finally:
        model.train(was_training)
    probs, indices = torch.cat(parts), share
    if env.distributed:
        probs, indices = gather_rows(probs, env), gather_rows(share.to(device), env).cpu()
    return put_in_order(probs, indices, total).cpu()
