"""Datasets for text-video retrieval: ``build_dataset(args, split)`` and the model-selection rule."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from dataloaders.base import (DataError, LMDBVideoLocator, RetrievalDataset, VideoLocator, VideoRecord,
                              carve_validation, check_windows, decode_failure_limit, exclude_missing_videos)
from dataloaders.datasets import get_parser, list_datasets, register_dataset
from dataloaders.verify_videos import check_video
from dataloaders.video import VideoClipLoader
from dataloaders.video.backends import candidate_backends
from dataloaders.video.batch import run_parallel
from dataloaders.video.loader import probe_duration

__all__ = ["DataError", "RetrievalDataset", "VideoRecord", "build_dataset", "build_parser_for", "list_datasets",
           "load_records", "register_dataset", "selection_rule", "SelectionRule"]

SPLITS = ("train", "val", "test")


def build_parser_for(args):
    try:
        return get_parser(args.datatype)(args)
    except KeyError as error:
        raise DataError(error.args[0]) from None


def load_records(args, split: str, parser=None) -> list[VideoRecord]:
    """The records of a split before any check on disk, with --val_from_train applied."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    parser = parser or build_parser_for(args)
    carve = getattr(args, "val_from_train", None)
    if carve:
        if parser.has_split("val"):
            raise DataError(f"{parser.name} has its own validation split; --val_from_train is only for "
                            "benchmarks without one (msrvtt 1k-A, activitynet)")
        if split in ("train", "val"):
            train, val = carve_validation(parser.records("train"), int(carve))
            return train if split == "train" else val
    if not parser.has_split(split):
        hint = " (use --val_from_train N to hold out N training videos)" if split == "val" else ""
        raise DataError(f"{parser.name} has no {split} split{hint}")
    return parser.records(split)


def video_locator(args, parser):
    """Where the existence check looks: the frame LMDB's keys when the lmdb backend reads the videos
    (the files themselves are then not needed), the file system otherwise."""
    backend, lmdb_path = getattr(args, "video_backend", "auto"), getattr(args, "lmdb_path", None)
    if backend == "lmdb" or (backend == "auto" and lmdb_path):  # auto with --lmdb_path reads the LMDB too
        if not lmdb_path:
            raise DataError("--video_backend lmdb needs --lmdb_path (build it with preprocess/frames_to_lmdb.py)")
        return LMDBVideoLocator(lmdb_path)
    return VideoLocator(parser.features_path, parser.video_extensions, parser.search_subdirs)


def _present_records(args, split: str, parser):
    """(present records, missing records, locator) of a split: annotation files read, videos located."""
    records = load_records(args, split, parser)
    locator = video_locator(args, parser)
    present, missing, _ = exclude_missing_videos(records, locator, f"{parser.name}_{split}",
                                                 getattr(args, "output_dir", None))
    return present, missing, locator


def verify_split(args, split: str) -> dict[str, str]:
    """``--verify_videos``: {path: reason} for every video of the split that cannot be decoded, probed
    on all cores (first, middle and last frames, every backend as training would); the cost is logged.
    Under torchrun one rank runs it and shares the result (engine)."""
    import logging
    import time

    parser = build_parser_for(args)
    present, _, _ = _present_records(args, split, parser)
    paths = sorted({r.video_path for r in present})
    backends = candidate_backends(getattr(args, "video_backend", "auto"), getattr(args, "lmdb_path", None))
    started = time.perf_counter()
    check = functools.partial(check_video, backends=backends)
    # forkserver: this runs inside a training process whose threads (decoders, torch) make fork unsafe
    bad = {path: reason for path, reason in run_parallel(check, paths, 0, f"verifying {parser.name} {split}",
                                                         start_method="forkserver") if reason is not None}
    seconds = time.perf_counter() - started
    logging.getLogger("univtr").info("--verify_videos %s %s: %d videos probed in %.1f s (%.0f videos/s, all cores); "
                                     "%d unreadable", parser.name, split, len(paths), seconds,
                                     len(paths) / max(seconds, 1e-9), len(bad))
    return bad


def exclude_unreadable(present, unreadable: dict[str, str], label: str, limit: int, report_dir):
    """Drop the records whose video is in ``unreadable``, list them in
    ``<report_dir>/unreadable_videos_<label>.txt``; more than ``limit`` is one DataError line."""
    import logging
    import tempfile
    from pathlib import Path

    bad = [r for r in present if r.video_path in unreadable]
    if not bad:
        return present, []
    report = Path(report_dir or tempfile.gettempdir()) / f"unreadable_videos_{label}.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("".join(f"{r.video_path}\t{unreadable[r.video_path]}\n" for r in bad))
    if len(bad) > limit:
        raise DataError(f"{label}: {len(bad)} of {len(present)} videos cannot be decoded, more than the limit of {limit} "
                        f"(--max_decode_failures / --max_decode_failure_fraction); every one is listed with its "
                        f"reason in {report}")
    logging.getLogger("univtr").warning("%s: %d unreadable videos excluded (listed with their reasons in %s)", label,
                                        len(bad), report)
    return [r for r in present if r.video_path not in unreadable], bad


def build_dataset(args, split: str, video_loader=None, tokenizer=None, unreadable: dict[str, str] | None = None
                  ) -> RetrievalDataset:
    """The dataset for "train", "val" or "test".

    Annotation files are read and checked, videos missing (on disk, or in the frame LMDB with the lmdb
    backend) are counted, reported (first 20 on screen, all in
    ``<output_dir>/missing_videos_<datatype>_<split>.txt``) and excluded, and start/end windows are
    checked against the videos' durations, all before anything is decoded. With ``--verify_videos``
    (or ``unreadable`` = :func:`verify_split`'s result) the videos that cannot be decoded are excluded
    too, listed in ``<output_dir>/unreadable_videos_<datatype>_<split>.txt``, and count as missing (a
    test set is then marked incomplete). ``video_loader`` defaults to the video layer's loader.
    """
    parser = build_parser_for(args)
    present, missing, locator = _present_records(args, split, parser)
    if unreadable is None and getattr(args, "verify_videos", False):
        unreadable = verify_split(args, split)
    if unreadable:
        present, bad = exclude_unreadable(present, unreadable, f"{parser.name}_{split}",
                                          decode_failure_limit(getattr(args, "max_decode_failures", None),
                                                               getattr(args, "max_decode_failure_fraction", 0.01),
                                                               len(present)), getattr(args, "output_dir", None))
        missing = list(missing) + bad
    backend, lmdb_path = getattr(args, "video_backend", "auto"), getattr(args, "lmdb_path", None)
    check_windows(present, f"{parser.name} {split}",
                  functools.partial(probe_duration, backend=backend, lmdb_path=lmdb_path))
    if video_loader is None:
        video_loader = VideoClipLoader.from_args(args, train=split == "train", device_side=True)  # engine.to_device
    dataset_class = getattr(parser, "dataset_class", RetrievalDataset)  # QA parsers: the items carry answers
    return dataset_class(
        present, split=split, video_loader=video_loader, max_words=args.max_words, paragraph=parser.paragraph,
        expand_captions=parser.expand_train_captions() if split == "train" else True, seed=args.seed,
        tokenizer=tokenizer, max_decode_failures=args.max_decode_failures,
        max_decode_failure_fraction=args.max_decode_failure_fraction, name=parser.name, missing_videos=missing,
        video_source=f"{locator.source} (--video_backend {backend})")


@dataclass(frozen=True)
class SelectionRule:
    """Which split picks the kept epoch (None: none is picked, the final epoch is reported)."""

    split: str | None
    description: str


def selection_rule(args, parser=None) -> SelectionRule:
    """The rule the engine follows and writes into the metrics file."""
    if getattr(args, "select_on_test", False):
        return SelectionRule("test", "select_on_test: the kept epoch is the best on the TEST split "
                                     "(--select_on_test, for parity with published numbers only)")
    parser = parser or build_parser_for(args)
    carve = getattr(args, "val_from_train", None)
    if carve:
        return SelectionRule("val", f"select_on_val: the kept epoch is the best on {carve} videos held out of the "
                                    "training list (--val_from_train, smallest SHA-1 of the video id); test reported for it")
    if parser.has_split("val"):
        return SelectionRule("val", f"select_on_val: the kept epoch is the best on {parser.name}'s validation "
                                    "split; test reported for it")
    return SelectionRule(None, "final_epoch: no selection; the final epoch's test numbers are reported")
