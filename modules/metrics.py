"""Retrieval metrics, computed in tiles so that no (queries x gallery) matrix is ever held in memory.

Conventions (see docs/datasets.md):

* A query's rank is 1 + the number of candidates whose score is strictly higher than the ground
  truth's. Ties therefore never push a query down, and never add extra entries.
* ``legacy_ties=True`` reproduces CLIP4Clip's square-matrix counting instead: the ground truth is
  looked up by equality in the sorted row, so a row whose ground-truth score is tied with ``e - 1``
  other candidates contributes ``e`` rank entries (one per tied position), and R@K is taken over
  entries rather than queries. On tie-free inputs both conventions give identical numbers.
* R@K is a percentage, MdR / MnR are the median / mean of the 1-based ranks.

Multi-caption sets (several captions per video) give three rank lists:

* ``t2v``: every caption ranks all videos.
* ``v2t_groupmax``: CLIP4Clip's convention. Each video is scored against a *caption group* (the max
  over the group's captions); a video query ranks the V groups.
* ``v2t_allcaps``: a video query ranks all captions of the test set; its rank is the rank of its
  best-ranked own caption, i.e. 1 + the number of captions (of any video) scoring strictly higher
  than its best own caption.

For a square set (one caption per video) both V2T variants coincide and are reported as ``v2t``.

Post-processing (opt-in, always reported beside the raw numbers):

* DSL (dual softmax): ``S * softmax(T * S, over the query axis) * num_queries``. For T2V the query axis
  is the captions (a softmax down each video's column); for V2T it is the videos.
* QB-Norm (dynamic inverted softmax, T2V): with a query bank B (training captions x test videos), a
  test row whose top-1 video is in the activation set (videos in the top-k of at least ``min_hits``
  bank queries) is replaced by ``exp(beta * s) / sum_b exp(beta * B[b, v])``; other rows keep their
  raw scores. Ranks are computed in the log domain (``beta * s - log Z_v``), which is monotone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

# A tile function returns the score block for the given caption (row) and video (column) indices.
TileFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# A transform rewrites a raw tile (scores for rows x cols) into post-processed scores.
TransformFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

RECALL_KS = (1, 5, 10)
DEFAULT_TILE_ELEMENTS = 1 << 24  # 16M scores (64 MiB in fp32) per tile


def metrics_from_ranks(ranks) -> dict:
    """R1/R5/R10 (percent), MdR and MnR from 1-based ranks (one entry per query, or per legacy entry)."""
    ranks = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to summarise")
    out = {f"R{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out


def _legacy_entries(greater: torch.Tensor, equal: torch.Tensor) -> torch.Tensor:
    """Expand (strictly-greater count g, equal count e) into the 1-based positions g+1 .. g+e that an
    equality search in a descending sort finds for each query."""
    equal = equal.clamp(min=1)
    starts = torch.repeat_interleave(greater, equal)
    row_offsets = torch.repeat_interleave(torch.cumsum(equal, 0) - equal, equal)
    within = torch.arange(int(equal.sum()), dtype=greater.dtype) - row_offsets
    return starts + within + 1


def _to_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def matrix_tile_fn(sim) -> TileFn:
    """Tile function over a similarity matrix already in memory (rows = captions, cols = videos)."""
    sim = _to_tensor(sim)

    def tile(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return sim.index_select(0, rows.to(sim.device)).index_select(1, cols.to(sim.device))

    return tile


def video_blocks(num_videos: int, caption_to_video: torch.Tensor, tile_elements: int) -> list[torch.Tensor]:
    """Contiguous blocks of video indices sized so a (block captions x block videos) tile stays near
    ``tile_elements`` scores."""
    captions_per_video = max(1.0, caption_to_video.numel() / max(1, num_videos))
    block = int(max(1, (tile_elements / captions_per_video) ** 0.5))
    return [torch.arange(s, min(s + block, num_videos)) for s in range(0, num_videos, block)]


@dataclass
class RankCounts:
    """Raw counts from a tiled pass; turned into rank lists by :meth:`ranks`."""

    t2v_greater: torch.Tensor
    t2v_equal: torch.Tensor | None
    v2t_cap_greater: torch.Tensor | None
    v2t_group_greater: torch.Tensor | None
    v2t_equal: torch.Tensor | None
    video_has_caption: torch.Tensor
    square: bool

    def ranks(self, legacy_ties: bool = False) -> dict[str, torch.Tensor]:
        # CLIP4Clip's equality search exists only in its square metric; its multi-caption metric
        # breaks ties by sort order, which is not reproducible, so multi-caption sets stay strict.
        legacy_ties = legacy_ties and self.square
        out: dict[str, torch.Tensor] = {}
        if legacy_ties and self.t2v_equal is not None:
            out["t2v"] = _legacy_entries(self.t2v_greater, self.t2v_equal)
        else:
            out["t2v"] = self.t2v_greater + 1
        if self.v2t_cap_greater is None:
            return out
        valid = self.video_has_caption
        if self.square:
            if legacy_ties and self.v2t_equal is not None:
                out["v2t"] = _legacy_entries(self.v2t_cap_greater[valid], self.v2t_equal[valid])
            else:
                out["v2t"] = self.v2t_cap_greater[valid] + 1
        else:
            out["v2t_groupmax"] = self.v2t_group_greater[valid] + 1
            out["v2t_allcaps"] = self.v2t_cap_greater[valid] + 1
        return out

    def t2v_ranks_of(self, queries: torch.Tensor, legacy_ties: bool = False) -> torch.Tensor:
        """T2V ranks of the given caption indices only (each still ranked against the whole gallery),
        under the same tie convention as :meth:`ranks`."""
        queries = _to_tensor(queries).long()
        greater = self.t2v_greater[queries]
        if legacy_ties and self.square and self.t2v_equal is not None:
            return _legacy_entries(greater, self.t2v_equal[queries])
        return greater + 1


def count_ranks(
    tile_fn: TileFn,
    caption_to_video,
    num_videos: int,
    *,
    t2v_transform: TransformFn | None = None,
    v2t_transform: TransformFn | None = None,
    with_v2t: bool = True,
    count_ties: bool = False,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
) -> RankCounts:
    """One pass over the (captions x videos) score matrix in tiles; every score is computed once.

    Videos are cut into blocks; the captions of block i form row block i. Diagonal tiles (i, i) hold
    every ground-truth score of their rows and every own-caption score of their columns, so they are
    visited first, and the off-diagonal tiles are then compared against those values. Comparing only
    values produced by the same tile computation keeps ties exact even when a backend's rounding
    depends on the tile shape.
    """
    caption_to_video = _to_tensor(caption_to_video).long().cpu()
    num_captions = caption_to_video.numel()
    if num_captions == 0 or num_videos == 0:
        raise ValueError("empty evaluation set")
    if int(caption_to_video.max()) >= num_videos or int(caption_to_video.min()) < 0:
        raise ValueError("caption_to_video points outside [0, num_videos)")
    captions_per_video = torch.bincount(caption_to_video, minlength=num_videos)
    square = bool((captions_per_video == 1).all())

    blocks = video_blocks(num_videos, caption_to_video, tile_elements)
    block_of_video = torch.empty(num_videos, dtype=torch.long)
    for b, cols in enumerate(blocks):
        block_of_video[cols] = b
    block_of_caption = block_of_video[caption_to_video]
    row_blocks = [torch.nonzero(block_of_caption == b).flatten() for b in range(len(blocks))]

    # float64 holds any tile dtype exactly, so a value read back equals the tile's own value.
    gt_score = torch.full((num_captions,), float("nan"), dtype=torch.float64)
    own_max = torch.full((num_videos,), float("-inf"), dtype=torch.float64)
    t2v_greater = torch.zeros(num_captions, dtype=torch.long)
    t2v_equal = torch.zeros(num_captions, dtype=torch.long) if count_ties else None
    v2t_cap_greater = torch.zeros(num_videos, dtype=torch.long) if with_v2t else None
    v2t_group_greater = torch.zeros(num_videos, dtype=torch.long) if with_v2t and not square else None
    v2t_equal = torch.zeros(num_videos, dtype=torch.long) if with_v2t and count_ties else None

    def visit(i: int, j: int, diagonal: bool) -> None:
        rows, cols = row_blocks[i], blocks[j]
        if rows.numel() == 0:
            return
        raw = tile_fn(rows, cols)
        device = raw.device
        t2v = t2v_transform(raw, rows, cols) if t2v_transform else raw
        if diagonal:
            local_gt = (caption_to_video[rows] - cols[0]).to(device)
            gt_score[rows] = t2v.gather(1, local_gt[:, None]).squeeze(1).double().cpu()
        gt = gt_score[rows].to(device, t2v.dtype)[:, None]
        t2v_greater[rows] += (t2v > gt).sum(1).cpu()
        if t2v_equal is not None:
            t2v_equal[rows] += (t2v == gt).sum(1).cpu()
        if not with_v2t:
            return
        v2t = v2t_transform(raw, rows, cols) if v2t_transform else raw
        if diagonal:
            local_gt = (caption_to_video[rows] - cols[0]).to(device)
            own = v2t.gather(1, local_gt[:, None]).squeeze(1).double().cpu()
            own_max.scatter_reduce_(0, caption_to_video[rows], own, "amax")
        best_own = own_max[cols].to(device, v2t.dtype)[None, :]
        v2t_cap_greater[cols] += (v2t > best_own).sum(0).cpu()
        if v2t_equal is not None:
            v2t_equal[cols] += (v2t == best_own).sum(0).cpu()
        if v2t_group_greater is not None:
            # Max over each caption group present in this row block, then count groups above.
            group_ids, local_group = torch.unique(caption_to_video[rows], return_inverse=True)
            group_max = torch.full((group_ids.numel(), cols.numel()), float("-inf"), device=device, dtype=v2t.dtype)
            group_max.scatter_reduce_(0, local_group.to(device)[:, None].expand_as(v2t), v2t, "amax")
            v2t_group_greater[cols] += (group_max > best_own).sum(0).cpu()

    for i in range(len(blocks)):
        visit(i, i, diagonal=True)
    for i in range(len(blocks)):
        for j in range(len(blocks)):
            if i != j:
                visit(i, j, diagonal=False)

    if torch.isnan(gt_score).any():
        raise ValueError("non-finite ground-truth scores in the similarity matrix")
    return RankCounts(t2v_greater, t2v_equal, v2t_cap_greater, v2t_group_greater, v2t_equal,
                      captions_per_video > 0, square)


def summarise(ranks: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    """Flatten {direction: ranks} into {"<prefix><direction>/R1": ...}."""
    out = {}
    for direction, values in ranks.items():
        for name, value in metrics_from_ranks(values).items():
            out[f"{prefix}{direction}/{name}"] = value
    return out


def retrieval_metrics(sim, legacy_ties: bool = False, tile_elements: int = DEFAULT_TILE_ELEMENTS) -> dict:
    """Metrics of a square matrix (rows = queries, ground truth on the diagonal): R1, R5, R10, MdR, MnR.

    Use ``retrieval_metrics(sim.T)`` for the other direction.
    """
    sim = _to_tensor(sim)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"retrieval_metrics needs a square matrix, got {tuple(sim.shape)}")
    n = sim.shape[0]
    counts = count_ranks(matrix_tile_fn(sim), torch.arange(n), n, with_v2t=False,
                         count_ties=legacy_ties, tile_elements=tile_elements)
    return metrics_from_ranks(counts.ranks(legacy_ties)["t2v"])


def multi_caption_metrics(sim, caption_to_video, legacy_ties: bool = False,
                          tile_elements: int = DEFAULT_TILE_ELEMENTS) -> dict:
    """All directions for a (captions x videos) matrix: t2v, and v2t (square) or v2t_groupmax and
    v2t_allcaps (multi-caption). Keys look like ``"t2v/R1"``."""
    sim = _to_tensor(sim)
    counts = count_ranks(matrix_tile_fn(sim), caption_to_video, sim.shape[1],
                         count_ties=legacy_ties, tile_elements=tile_elements)
    return summarise(counts.ranks(legacy_ties))


# --------------------------------------------------------------------------------------------------
# Statistics passes for post-processing


def _tiles(num_rows: int, num_cols: int, tile_elements: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    side = max(1, int(tile_elements ** 0.5))
    for r in range(0, num_rows, side):
        rows = torch.arange(r, min(r + side, num_rows))
        for c in range(0, num_cols, side):
            yield rows, torch.arange(c, min(c + side, num_cols))


def _logaddexp_into(acc: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    acc[index] = torch.logaddexp(acc[index], values.float().cpu())


def dsl_transforms(tile_fn: TileFn, num_captions: int, num_videos: int, temperature: float = 1.0,
                   tile_elements: int = DEFAULT_TILE_ELEMENTS) -> tuple[TransformFn, TransformFn]:
    """(t2v_transform, v2t_transform) for dual softmax, after one statistics pass.

    T2V: ``S * softmax_over_captions(T*S) * num_captions``; V2T: ``S * softmax_over_videos(T*S) * num_videos``.
    """
    lse_over_captions = torch.full((num_videos,), float("-inf"))
    lse_over_videos = torch.full((num_captions,), float("-inf"))
    for rows, cols in _tiles(num_captions, num_videos, tile_elements):
        scaled = temperature * tile_fn(rows, cols).float()
        _logaddexp_into(lse_over_captions, cols, torch.logsumexp(scaled, 0))
        _logaddexp_into(lse_over_videos, rows, torch.logsumexp(scaled, 1))

    def t2v(raw, rows, cols):
        lse = lse_over_captions[cols].to(raw.device)[None, :]
        return raw.float() * torch.exp(temperature * raw.float() - lse) * num_captions

    def v2t(raw, rows, cols):
        lse = lse_over_videos[rows].to(raw.device)[:, None]
        return raw.float() * torch.exp(temperature * raw.float() - lse) * num_videos

    return t2v, v2t


@dataclass
class QueryBankStats:
    """What QB-Norm needs from the query bank for one beta and k: log Z per gallery video and the
    activation set."""

    log_normaliser: torch.Tensor  # (num_videos,)
    active: torch.Tensor  # (num_videos,) bool
    beta: float
    k: int
    min_hits: int


def bank_top_hits(bank_tile_fn: TileFn, num_bank: int, num_videos: int, k: int,
                  tile_elements: int = DEFAULT_TILE_ELEMENTS) -> torch.Tensor:
    """For each gallery video, how many bank queries have it among their top-k videos."""
    k = min(k, num_videos)
    side = max(1, int(tile_elements ** 0.5))
    hits = torch.zeros(num_videos, dtype=torch.long)
    for r in range(0, num_bank, side):
        rows = torch.arange(r, min(r + side, num_bank))
        best_vals = torch.full((rows.numel(), 0), float("-inf"))
        best_idx = torch.zeros((rows.numel(), 0), dtype=torch.long)
        for c in range(0, num_videos, side):
            cols = torch.arange(c, min(c + side, num_videos))
            scores = bank_tile_fn(rows, cols).float().cpu()
            vals = torch.cat([best_vals, scores], 1)
            idx = torch.cat([best_idx, cols[None, :].expand(rows.numel(), -1)], 1)
            best_vals, pick = vals.topk(min(k, vals.shape[1]), dim=1)
            best_idx = idx.gather(1, pick)
        hits += torch.bincount(best_idx.flatten(), minlength=num_videos)
    return hits


def bank_log_normaliser(bank_tile_fn: TileFn, num_bank: int, num_videos: int, beta: float,
                        tile_elements: int = DEFAULT_TILE_ELEMENTS) -> torch.Tensor:
    """log sum_b exp(beta * B[b, v]) for every gallery video v."""
    log_z = torch.full((num_videos,), float("-inf"))
    for rows, cols in _tiles(num_bank, num_videos, tile_elements):
        _logaddexp_into(log_z, cols, torch.logsumexp(beta * bank_tile_fn(rows, cols).float(), 0))
    return log_z


def row_argmax(tile_fn: TileFn, num_rows: int, num_cols: int,
               tile_elements: int = DEFAULT_TILE_ELEMENTS) -> torch.Tensor:
    best = torch.full((num_rows,), float("-inf"))
    arg = torch.zeros(num_rows, dtype=torch.long)
    for rows, cols in _tiles(num_rows, num_cols, tile_elements):
        vals, idx = tile_fn(rows, cols).float().cpu().max(1)
        better = vals > best[rows]
        best[rows] = torch.where(better, vals, best[rows])
        arg[rows] = torch.where(better, cols[idx], arg[rows])
    return arg


def qb_norm_transform(stats: QueryBankStats, query_top1: torch.Tensor) -> TransformFn:
    """T2V transform: rows whose raw top-1 video is active get ``beta*s - log Z_v``; others stay raw."""
    normalised_rows = stats.active[query_top1]

    def transform(raw, rows, cols):
        raw = raw.float()
        inverted = stats.beta * raw - stats.log_normaliser[cols].to(raw.device)[None, :]
        return torch.where(normalised_rows[rows].to(raw.device)[:, None], inverted, raw)

    return transform


def qb_norm_t2v_ranks(tile_fn: TileFn, caption_to_video, num_videos: int, bank_tile_fn: TileFn,
                      num_bank: int, beta: float, k: int = 1, min_hits: int = 1,
                      tile_elements: int = DEFAULT_TILE_ELEMENTS, *, hits: torch.Tensor | None = None,
                      query_top1: torch.Tensor | None = None) -> tuple[torch.Tensor, QueryBankStats]:
    """T2V ranks after QB-Norm with the given beta / k / min_hits. ``hits`` and ``query_top1`` can be
    passed in when sweeping beta, since they do not depend on it."""
    caption_to_video = _to_tensor(caption_to_video).long()
    if hits is None:
        hits = bank_top_hits(bank_tile_fn, num_bank, num_videos, k, tile_elements)
    if query_top1 is None:
        query_top1 = row_argmax(tile_fn, caption_to_video.numel(), num_videos, tile_elements)
    stats = QueryBankStats(bank_log_normaliser(bank_tile_fn, num_bank, num_videos, beta, tile_elements),
                           hits >= min_hits, beta, k, min_hits)
    counts = count_ranks(tile_fn, caption_to_video, num_videos, with_v2t=False,
                         t2v_transform=qb_norm_transform(stats, query_top1), tile_elements=tile_elements)
    return counts.ranks()["t2v"], stats


def select_qb_norm(tile_fn: TileFn, caption_to_video, num_videos: int, bank_tile_fn: TileFn, num_bank: int,
                   betas: Sequence[float], ks: Sequence[int], min_hits: int = 1,
                   tile_elements: int = DEFAULT_TILE_ELEMENTS) -> tuple[float, int, list[dict]]:
    """Grid search of (beta, k) on a *validation* set by T2V R1 (then R5, R10; first in grid order on
    a full tie). Returns (beta, k, one row per grid point)."""
    caption_to_video = _to_tensor(caption_to_video).long()
    query_top1 = row_argmax(tile_fn, caption_to_video.numel(), num_videos, tile_elements)
    grid: list[dict] = []
    best_key, best = None, None
    for k in ks:
        hits = bank_top_hits(bank_tile_fn, num_bank, num_videos, k, tile_elements)
        for beta in betas:
            ranks, _ = qb_norm_t2v_ranks(tile_fn, caption_to_video, num_videos, bank_tile_fn, num_bank, beta, k,
                                         min_hits, tile_elements, hits=hits, query_top1=query_top1)
            m = metrics_from_ranks(ranks)
            grid.append({"beta": float(beta), "k": int(k), **m})
            key = (m["R1"], m["R5"], m["R10"])
            if best_key is None or key > best_key:
                best_key, best = key, (float(beta), int(k))
    return best[0], best[1], grid


def format_table(metrics: dict[str, float], title: str | None = None) -> str:
    """Table with one row per "<label>/" prefix and columns R1 R5 R10 MdR MnR."""
    labels: list[str] = []
    for key in metrics:
        if "/" in key:
            label = key.rsplit("/", 1)[0]
            if label not in labels and f"{label}/R1" in metrics:
                labels.append(label)
    width = max([len(x) for x in labels] + [10])
    cols = ["R1", "R5", "R10", "MdR", "MnR"]
    lines = [title] if title else []
    lines.append(f"{'':<{width}}  " + "  ".join(f"{c:>7}" for c in cols))
    for label in labels:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{metrics[f'{label}/{c}']:7.2f}" for c in cols))
    return "\n".join(lines)


# -- feature-collapse diagnostics -----------------------------------------------------------------
def _check(features: Tensor) -> Tensor:
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be a (rows, dim) matrix with at least 2 rows, got shape {tuple(features.shape)}")
    features = features.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values")
    return features


def mean_pairwise_cosine(features: Tensor) -> float:
    """Mean of cos(x_i, x_j) over the N(N-1) ordered pairs i != j (the off-diagonal mean of the cosine
    matrix), from the sum of the unit rows: sum_{i != j} u_i.u_j = |sum_i u_i|^2 - sum_i |u_i|^2. A zero
    row counts as cosine 0 with every other row."""
    units = torch.nn.functional.normalize(_check(features), dim=-1)
    n = units.shape[0]
    total = units.sum(0)
    return float((total @ total - (units * units).sum()) / (n * (n - 1)))


def effective_rank(features: Tensor) -> float:
    """exp(entropy of the singular values of the centred rows, normalised to sum 1) (Roy & Vetterli,
    "The effective rank: a measure of effective dimensionality", EUSIPCO 2007). Centring first: a shared
    offset is no direction the rows vary along. Rows that do not vary at all have effective rank 0."""
    centred = _check(features)
    centred = centred - centred.mean(0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    if float(singular.sum()) == 0.0:
        return 0.0
    p = singular / singular.sum()
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def feature_spread(features: Tensor, max_rows: int = 16384) -> dict[str, float]:
    """Mean pairwise cosine and effective rank of (N, D) features, over the first ``max_rows`` rows (the SVD
    costs N x D^2; a gallery of a million videos is judged on its first 16k)."""
    rows = features[:max_rows]
    return {"cosine": mean_pairwise_cosine(rows), "effective_rank": effective_rank(rows), "dim": float(rows.shape[1])}
