"""Datasets for text-video retrieval: ``build_dataset(args, split)`` and the model-selection rule."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from dataloaders.base import DataError, RetrievalDataset, VideoRecord, carve_validation
from dataloaders.datasets import get_parser, list_datasets, register_dataset

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
    from dataloaders.base import LMDBVideoLocator, VideoLocator

    backend, lmdb_path = getattr(args, "video_backend", "auto"), getattr(args, "lmdb_path", None)
    if backend == "lmdb" or (backend == "auto" and lmdb_path):  # auto with --lmdb_path reads the LMDB too
        if not lmdb_path:
            raise DataError("--video_backend lmdb needs --lmdb_path (build it with preprocess/frames_to_lmdb.py)")
        return LMDBVideoLocator(lmdb_path)
    return VideoLocator(parser.features_path, parser.video_extensions, parser.search_subdirs)


def build_dataset(args, split: str, video_loader=None, tokenizer=None) -> RetrievalDataset:
    """The dataset for "train", "val" or "test".

    Annotation files are read and checked, videos missing (on disk, or in the frame LMDB with the lmdb
    backend) are counted, reported (first 20 on screen, all in
    ``<output_dir>/missing_videos_<datatype>_<split>.txt``) and excluded, and start/end windows are
    checked against the videos' durations, all before anything is decoded. ``video_loader`` defaults
    to the video layer's loader for these flags.
    """
    from dataloaders.base import check_windows, exclude_missing_videos
    from dataloaders.video.loader import probe_duration

    parser = build_parser_for(args)
    records = load_records(args, split, parser)
    locator = video_locator(args, parser)
    present, missing, _ = exclude_missing_videos(records, locator, f"{parser.name}_{split}",
                                                 getattr(args, "output_dir", None))
    backend, lmdb_path = getattr(args, "video_backend", "auto"), getattr(args, "lmdb_path", None)
    check_windows(present, f"{parser.name} {split}",
                  functools.partial(probe_duration, backend=backend, lmdb_path=lmdb_path))
    if video_loader is None:
        from dataloaders.video import VideoClipLoader

        video_loader = VideoClipLoader.from_args(args, train=split == "train")
    return RetrievalDataset(
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
