"""Retrieval evaluation against the head interface:

* ``model.encode_text(text_ids, text_mask) -> features``
* ``model.encode_video(video, video_mask) -> features``
* ``model.similarity(text_features, video_features) -> (Nt, Nv) scores``

Features are a tensor or a tuple of tensors, batch in dim 0. Captions and videos are encoded by two
separate loaders, each item once; scores are then produced tile by tile (``modules.metrics``), so
memory stays bounded for any gallery size. Raw numbers are always computed; DSL and QB-Norm are
added beside them when asked for.

For sharded evaluation later: ``encode_split`` accepts samplers and ``encode`` returns each feature
row with its dataset index, so gathered shards can be put back in order (duplicates dropped).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from dataloaders import build_dataset
from dataloaders.video.handover import finish_on_device
from engine.distributed import gather_rows, shard_indices
from engine.features import Features, concat_features, feature_count, put_in_order, similarity_tiles
from engine.perf import pin_memory
from engine.preemption import StopAtSignal, ignore_stop_signals
from engine.rerank import rerank_candidates, wants_rerank
from engine.step import as_float, autocast_context
from modules import metrics as M

log = logging.getLogger("univtr")


def to_device(batch: dict, device) -> dict:
    """``batch`` on ``device``, for training and evaluation alike: tensors are copied without blocking
    (asynchronously from pinned memory), then frames the workers handed over as uint8 or as JPEG files
    are converted, normalised and zero-padded there (``dataloaders.video.handover.finish_on_device``)."""
    moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return finish_on_device(moved, device)


@torch.no_grad()
def encode(model, loader: DataLoader, side: str, device) -> tuple[Features, torch.Tensor]:
    """Encode every item of a caption or video loader; returns (features, dataset indices)."""
    parts, indices = [], []
    for batch in loader:
        batch = to_device(batch, device)
        if side == "text":
            parts.append(model.encode_text(batch["text_ids"], batch["text_mask"]))
            indices.append(batch["caption_index"].cpu())
        else:
            parts.append(model.encode_video(batch["video"], batch["video_mask"]))
            indices.append(batch["video_index"].cpu())
    return concat_features(parts), torch.cat(indices)


def eval_loader(dataset, args, device, sampler: Sampler | None = None) -> DataLoader:
    """An evaluation DataLoader: ``--batch_size_val`` items in order, ``--pin_memory`` for ``device``."""
    return DataLoader(dataset, batch_size=args.batch_size_val, shuffle=False, sampler=sampler,
                      num_workers=args.num_thread_reader, pin_memory=pin_memory(args, torch.device(device)),
                      worker_init_fn=ignore_stop_signals)


def shard_loader(dataset, args, env):
    """This rank's share of ``dataset`` (``shard_indices``: equal counts, the last index repeated) in
    batches; during training, a signal stops it on every rank at once (``engine.preemption``)."""
    return StopAtSignal(eval_loader(Subset(dataset, shard_indices(len(dataset), env)), args, env.device), env)


@dataclass
class EncodedSplit:
    text: Features
    video: Features
    caption_to_video: torch.Tensor
    num_videos: int

    @property
    def num_captions(self) -> int:
        return self.caption_to_video.numel()


def encode_captions(model, dataset, args, device=None, sampler: Sampler | None = None) -> Features:
    """Features of every caption of ``dataset`` (e.g. the training captions, as QB-Norm's bank)."""
    device = device or _model_device(model)
    feats, idx = encode(model, eval_loader(dataset.text_dataset(), args, device, sampler), "text", device)
    return put_in_order(feats, idx, dataset.num_captions)


def encode_split(model, dataset, args, device=None, text_sampler: Sampler | None = None,
                 video_sampler: Sampler | None = None) -> EncodedSplit:
    device = device or _model_device(model)
    text = encode_captions(model, dataset, args, device, text_sampler)
    video, video_idx = encode(model, eval_loader(dataset.video_dataset(), args, device, video_sampler), "video", device)
    return EncodedSplit(text, put_in_order(video, video_idx, dataset.num_videos),
                        dataset.caption_to_video.clone(), dataset.num_videos)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


# ----------------------------------------------------------------------------------------------------
# Query subsets (--eval_query_subset NAME=FILE.json): T2V over some captions, against the whole gallery


def find_subset_file(path: str, args) -> Path:
    """``path`` as given, else relative to the evaluated benchmark's folder (--eval_data_path when
    pre-training evaluates another benchmark, else --data_path; its folder when it names a file)."""
    given = Path(path)
    if given.is_file():
        return given
    folders = [f for f in (getattr(args, "eval_data_path", None), getattr(args, "data_path", None)) if f]
    for folder in folders if not given.is_absolute() else []:
        base = Path(folder)
        base = base.parent if base.is_file() else base
        if (base / given).is_file():
            return base / given
    raise ValueError(f"--eval_query_subset: no such file {path}" + (f" (nor in {' or '.join(folders)})" if folders else ""))


def read_subset_entries(path: Path) -> list[str]:
    """The strings of a subset file: a JSON list, or an object with a "video_ids" and/or a "captions"
    list (video ids first). Each string is a video id or a caption."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--eval_query_subset: cannot read {path} as JSON ({error})") from error
    if isinstance(data, dict):
        lists = [data[key] for key in ("video_ids", "captions") if key in data]
        if not lists:
            raise ValueError(f"--eval_query_subset: {path} is an object without a 'video_ids' or 'captions' list "
                             f"(keys: {', '.join(sorted(data)) or 'none'})")
        entries = [x for part in lists for x in (part if isinstance(part, list) else [None])]
    elif isinstance(data, list):
        entries = data
    else:
        raise ValueError(f"--eval_query_subset: {path} holds a JSON {type(data).__name__}; expected a list or an object")
    if not all(isinstance(x, str) for x in entries):
        raise ValueError(f"--eval_query_subset: {path}: every entry must be a string (a video id or a caption)")
    return entries


def subset_query_indices(entries: Sequence[str], video_ids: Sequence[str], captions: Sequence[str],
                         caption_to_video: torch.Tensor, *, skip: Sequence[str] = (), source: str = "subset") -> torch.Tensor:
    """Sorted caption indices selected by ``entries``: a video id selects all captions of that video,
    otherwise an entry must equal a caption. Entries in ``skip`` (e.g. videos missing on disk, so
    not in the split) are ignored; any other unmatched entry is an error."""
    video_index = {vid: i for i, vid in enumerate(video_ids)}
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(captions):
        by_text.setdefault(text, []).append(i)
    owner = caption_to_video.long()
    chosen = torch.zeros(len(captions), dtype=torch.bool)
    skipped, unmatched = set(skip), []
    for entry in entries:
        if entry in video_index:
            chosen |= owner == video_index[entry]
        elif entry in by_text:
            chosen[by_text[entry]] = True
        elif entry not in skipped:
            unmatched.append(entry)
    if unmatched:
        raise ValueError(f"--eval_query_subset {source}: {len(unmatched)} entries are neither a video id nor a caption "
                         f"of the split (first: {', '.join(repr(x) for x in unmatched[:3])})")
    if not chosen.any():
        raise ValueError(f"--eval_query_subset {source}: selects no caption of the split")
    return torch.nonzero(chosen).flatten()


def resolve_query_subsets(dataset, args) -> tuple[dict[str, tuple[torch.Tensor, str]], dict[str, str]]:
    """Every --eval_query_subset against ``dataset``: ({name: (caption indices, file)} for the subsets
    whose entries all belong to this split, {name: why not} for the others). A subset applies to the
    splits that contain it (e.g. test pairs do not apply to a validation split carved from training);
    files that cannot be read are errors."""
    applying, skipped = {}, {}
    for name, path in getattr(args, "eval_query_subset", None) or []:
        if name in applying or name in skipped:
            raise ValueError(f"--eval_query_subset: the name {name!r} is given twice")
        file = find_subset_file(path, args)
        skip = [record.video_id for record in getattr(dataset, "missing_videos", [])]
        try:
            applying[name] = (subset_query_indices(read_subset_entries(file), [r.video_id for r in dataset.records],
                                                   dataset.captions, dataset.caption_to_video, skip=skip,
                                                   source=f"{name}={path}"), str(file))
        except ValueError as error:
            skipped[name] = str(error)
    return applying, skipped


def query_subsets(dataset, args) -> dict[str, tuple[torch.Tensor, str]]:
    """{name: (caption indices, file)} for the --eval_query_subset files that apply to ``dataset``."""
    return resolve_query_subsets(dataset, args)[0]


def check_query_subsets(datasets, args) -> None:
    """Before any work: say which split each --eval_query_subset applies to; one that applies to none of
    the evaluated splits is an error (a typo in the file would otherwise go unnoticed)."""
    names = [name for name, _ in getattr(args, "eval_query_subset", None) or []]
    if not names:
        return
    applies: dict[str, list[str]] = {name: [] for name in names}
    reasons: dict[str, str] = {}
    for dataset in datasets:
        applying, skipped = resolve_query_subsets(dataset, args)
        for name in applying:
            applies[name].append(dataset.split)
        for name, why in skipped.items():
            reasons[name] = why
            log.info("--eval_query_subset %s: not reported on the %s split (%s)", name, dataset.split,
                     why.split(": ", 1)[-1])
    for name, splits in applies.items():
        if not splits:
            raise ValueError(f"{reasons[name]} (it applies to none of the evaluated splits: "
                             f"{', '.join(d.split for d in datasets)})")
        log.info("--eval_query_subset %s: reported on the %s split%s", name, " and ".join(splits),
                 "s" if len(splits) > 1 else "")


def incomplete_note(dataset) -> str | None:
    """"incomplete standard test set: N of M videos" when videos of the split are missing on disk: a
    "1k-A" number over 999 videos is not comparable with published ones."""
    missing = len(getattr(dataset, "missing_videos", None) or [])
    if not missing:
        return None
    total = dataset.num_videos + missing
    kind = "test set" if dataset.split == "test" else f"{dataset.split} split"
    return f"incomplete standard {kind}: {dataset.num_videos} of {total} videos ({missing} missing on disk)"


def _subset_metrics(subsets, ranks_of, prefix: str = "") -> dict[str, float]:
    out = {}
    for name, (queries, _) in subsets.items():
        out.update(M.summarise({"t2v": ranks_of(queries)}, prefix=f"{prefix}{name}/"))
    return out


def dsl_temperature(model, args) -> float:
    """--dsl_temperature, else the scale the model's loss puts on its scores: DSL works on logits, and
    on cosines in [-1, 1] at T = 1 its softmax is nearly flat (a no-op)."""
    if getattr(args, "dsl_temperature", None) is not None:
        return float(args.dsl_temperature)
    scale = getattr(model, "score_scale", None)
    return float(scale()) if scale is not None else 1.0


@dataclass
class EvalResult:
    metrics: dict[str, float]
    table: str
    qb_norm_grid: list[dict] = field(default_factory=list)
    incomplete: str | None = None  # "incomplete standard test set: N of M videos" when videos are missing
    qb_norm: Any = None  # (bank, (beta, k)) used, for reuse


def choose_qb_norm_params(model, val: EncodedSplit, bank: Features, args) -> tuple[float, int, list[dict]]:
    """QB-Norm's beta and k, chosen by T2V R1 on the validation split (never on test)."""
    return M.select_qb_norm(similarity_tiles(model, val.text, val.video), val.caption_to_video, val.num_videos,
                            similarity_tiles(model, bank, val.video), feature_count(bank), args.qb_norm_betas,
                            args.qb_norm_topk, args.qb_norm_min_hits, args.eval_tile_elements)


def feature_spread_metrics(encoded: EncodedSplit) -> tuple[dict[str, float], str | None]:
    """Feature-collapse check of every evaluation: mean pairwise cosine and effective rank of the video and
    the text embeddings (a head's first feature tensor, when it holds one vector per item). Near-1 cosine or
    an effective rank near 1 says the encoder ranks by noise (docs/pretraining.md)."""
    results, parts = {}, []
    for side, features in (("video", encoded.video), ("text", encoded.text)):
        matrix = features[0] if isinstance(features, (tuple, list)) else features
        if matrix.ndim != 2 or matrix.shape[0] < 2 or not bool(torch.isfinite(matrix).all()):
            continue
        spread = M.feature_spread(matrix)
        results[f"features/{side}_cosine"] = spread["cosine"]
        results[f"features/{side}_effective_rank"] = spread["effective_rank"]
        parts.append(f"{side} mean pairwise cosine {spread['cosine']:.3f}, effective rank "
                     f"{spread['effective_rank']:.1f} of {int(spread['dim'])}")
    return results, ("features: " + "; ".join(parts)) if parts else None


@torch.no_grad()
def evaluate_encoded(model, encoded: EncodedSplit, args, *, bank: Features | None = None,
                     qb_norm_params: tuple[float, int] | None = None, split: str = "test",
                     dataset=None, rerank=None) -> EvalResult:
    """Metrics from already encoded features: raw, then DSL / QB-Norm / re-ranked ("rerank/", heads
    with a cross-encoder, ``engine.rerank``; ``rerank`` when already computed) when enabled. Query
    subsets (--eval_query_subset) are resolved against ``dataset``, built here for ``split`` when not
    given."""
    subsets = {}
    if getattr(args, "eval_query_subset", None):
        if dataset is None:
            dataset = build_dataset(args, split)
        if dataset.num_captions != encoded.num_captions or dataset.num_videos != encoded.num_videos:
            raise ValueError(f"--eval_query_subset: the {split} split has {dataset.num_captions} captions x "
                             f"{dataset.num_videos} videos, the encoded features {encoded.num_captions} x {encoded.num_videos}")
        subsets = query_subsets(dataset, args)
    incomplete = incomplete_note(dataset) if dataset is not None else None
    tiles = similarity_tiles(model, encoded.text, encoded.video)
    tile_elements = args.eval_tile_elements
    counts = M.count_ranks(tiles, encoded.caption_to_video, encoded.num_videos,
                           count_ties=args.legacy_metrics, tile_elements=tile_elements)
    results = M.summarise(counts.ranks(args.legacy_metrics))
    results.update(_subset_metrics(subsets, lambda q: counts.t2v_ranks_of(q, args.legacy_metrics)))
    results.update({"num_captions": float(encoded.num_captions), "num_videos": float(encoded.num_videos)})
    results.update({f"{name}/num_captions": float(q.numel()) for name, (q, _) in subsets.items()})
    notes = [f"{split}: {encoded.num_captions} captions x {encoded.num_videos} videos; rank = 1 + #strictly higher"
             if not args.legacy_metrics else f"{split}: ties counted by CLIP4Clip's equality search (--legacy_metrics)"]
    notes += [f"{name}/t2v: the {q.numel()} captions selected by {file}, each ranked against all "
              f"{encoded.num_videos} videos" for name, (q, file) in subsets.items()]
    if incomplete:
        notes.insert(0, f"WARNING: {incomplete}; not comparable with published numbers")
    spread, spread_note = feature_spread_metrics(encoded)
    results.update(spread)
    notes += [spread_note] if spread_note else []

    if args.dsl:
        temperature = dsl_temperature(model, args)
        t2v, v2t = M.dsl_transforms(tiles, encoded.num_captions, encoded.num_videos, temperature, tile_elements)
        dsl_counts = M.count_ranks(tiles, encoded.caption_to_video, encoded.num_videos, t2v_transform=t2v,
                                   v2t_transform=v2t, tile_elements=tile_elements)
        results.update(M.summarise(dsl_counts.ranks(), prefix="dsl/"))
        results.update(_subset_metrics(subsets, dsl_counts.t2v_ranks_of, prefix="dsl/"))
        notes.append(f"dsl: S * softmax({temperature:g} * S over queries) * N (post-processing over all test queries; "
                     + ("--dsl_temperature" if args.dsl_temperature is not None else "the model's logit scale") + ")")
        results["dsl/temperature"] = float(temperature)

    if args.qb_norm:
        if bank is None or qb_norm_params is None:
            raise ValueError("QB-Norm needs the bank features and (beta, k) chosen on the validation split")
        beta, k = qb_norm_params
        ranks, _ = M.qb_norm_t2v_ranks(tiles, encoded.caption_to_video, encoded.num_videos,
                                       similarity_tiles(model, bank, encoded.video), feature_count(bank), beta, k,
                                       args.qb_norm_min_hits, tile_elements)
        results.update(M.summarise({"t2v": ranks}, prefix="qbnorm/"))
        results.update(_subset_metrics(subsets, lambda q: ranks[q], prefix="qbnorm/"))
        results.update({"qbnorm/beta": float(beta), "qbnorm/k": float(k), "qbnorm/bank_size": float(feature_count(bank))})
        notes.append(f"qbnorm: beta={beta:g} k={k} min_hits={args.qb_norm_min_hits}, bank = {feature_count(bank)} "
                     "training captions, beta/k chosen on the validation split")

    if rerank is None and wants_rerank(model, args):
        rerank = rerank_candidates(model, encoded, args)
    if rerank is not None:
        t2v, v2t = rerank.transforms()
        reranked = M.count_ranks(tiles, encoded.caption_to_video, encoded.num_videos, t2v_transform=t2v,
                                 v2t_transform=v2t, count_ties=args.legacy_metrics, tile_elements=tile_elements)
        results.update(M.summarise(reranked.ranks(args.legacy_metrics), prefix="rerank/"))
        results.update(_subset_metrics(subsets, lambda q: reranked.t2v_ranks_of(q, args.legacy_metrics), prefix="rerank/"))
        results.update(rerank.summary())
        notes.append(rerank.note())
    return EvalResult(results, M.format_table(results, title="\n".join(notes)), incomplete=incomplete)


@torch.no_grad()
def evaluate_retrieval(model, dataset, args, *, device=None, bank: Features | None = None,
                       qb_norm_params: tuple[float, int] | None = None, text_sampler: Sampler | None = None,
                       video_sampler: Sampler | None = None) -> EvalResult:
    """Encode ``dataset`` (each caption and each video once) and compute its metrics."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        encoded = encode_split(model, dataset, args, device, text_sampler, video_sampler)
        return evaluate_encoded(model, encoded, args, bank=bank, qb_norm_params=qb_norm_params, split=dataset.split,
                                dataset=dataset)
    finally:
        if was_training:
            model.train()


def encode_bank(model, train_dataset, args, device=None) -> Features:
    """QB-Norm's query bank: the training captions (the first --qb_norm_bank_size of them if set)."""
    device = device or _model_device(model)
    captions = train_dataset.text_dataset()
    size = min(args.qb_norm_bank_size or len(captions), len(captions))
    feats, idx = encode(model, eval_loader(Subset(captions, range(size)), args, device), "text", device)
    return put_in_order(feats, idx, size)


def prepare_qb_norm(model, train_dataset, val_dataset, args, device=None) -> tuple[Features, tuple[float, int], list[dict]]:
    """Encode the query bank and choose (beta, k) on the validation split. Returns (bank, (beta, k),
    grid rows)."""
    if val_dataset is None or val_dataset.split == "test":
        raise ValueError("QB-Norm's beta and k are chosen on a validation split, never on test: "
                         "use a benchmark with a val split or --val_from_train")
    device = device or _model_device(model)
    bank = encode_bank(model, train_dataset, args, device)
    val = encode_split(model, val_dataset, args, device)
    beta, k, grid = choose_qb_norm_params(model, val, bank, args)
    return bank, (beta, k), grid


# ----------------------------------------------------------------------------------------------------
# Sharded over ranks (the engine's evaluation)


@torch.no_grad()
def encode_sharded(head, dataset, side: str, args, env) -> Features:
    """Every item of a caption or video view, each rank encoding its share; gathered in order."""
    total = len(dataset)
    features, indices = encode(head, shard_loader(dataset, args, env), side, env.device)
    if env.distributed:
        parts = features if isinstance(features, tuple) else (features,)
        parts = tuple(gather_rows(p, env) for p in parts)
        features = parts if isinstance(features, tuple) else parts[0]
        indices = gather_rows(indices.to(env.device), env).cpu()
    return put_in_order(features, indices, total)


@torch.no_grad()
def evaluate_split(head, dataset, args, env, precision: str = "fp32", qb_norm=None, qb_norm_bank_set=None):
    """Metrics of ``dataset`` (every caption and video encoded once, sharded); rank 0 gets the result,
    the others None. QB-Norm (with --qb_norm): ``qb_norm`` = (bank features, (beta, k)) prepared
    before, or ``qb_norm_bank_set`` = the training split, whose captions become the bank while
    (beta, k) are chosen on ``dataset`` itself (a validation split); ``result.qb_norm`` keeps them."""
    was_training = head.training
    head.eval()
    try:
        with autocast_context(precision, env.device):
            text = encode_sharded(head, dataset.text_dataset(), "text", args, env)
            video = encode_sharded(head, dataset.video_dataset(), "video", args, env)
        encoded = EncodedSplit(as_float(text), as_float(video), dataset.caption_to_video.clone(), dataset.num_videos)
        # Every rank takes part in re-ranking: its cross-encoder passes are sharded like the encoding.
        rerank = rerank_candidates(head, encoded, args, env, precision) if wants_rerank(head, args) else None
        if not env.is_main:
            return None
        if args.qb_norm and qb_norm is None and qb_norm_bank_set is not None:
            bank = encode_bank(head, qb_norm_bank_set, args, env.device)
            beta, k, grid = choose_qb_norm_params(head, encoded, bank, args)
            log.info("QB-Norm: beta %g, k %d chosen on %s %s (%d grid points)", beta, k, dataset.name, dataset.split,
                     len(grid))
            qb_norm = (bank, (beta, k))
        bank, params = qb_norm if qb_norm is not None else (None, None)
        result = evaluate_encoded(head, encoded, args, bank=bank, qb_norm_params=params, split=dataset.split,
                                  dataset=dataset, rerank=rerank)
        result.qb_norm = qb_norm
        return result
    finally:
        head.train(was_training)


def qb_norm_inputs(head, args, env, train_set, val_set):
    """QB-Norm's bank (training captions) and its (beta, k), chosen on the validation split with the
    current weights; None when --qb_norm is off (and on ranks other than 0)."""
    if not args.qb_norm:
        return None
    result = evaluate_split(head, val_set, args, env, qb_norm_bank_set=train_set)
    return result.qb_norm if result is not None else None
