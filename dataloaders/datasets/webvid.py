"""WebVid (pre-training): ``results_2M_train.csv`` / ``results_2M_val.csv`` (or --train_csv /
--val_csv, e.g. the 10M file) with columns videoid, contentUrl, duration, page_dir, name; ``name`` is
the caption. Videos are ``<page_dir>/<videoid>.mp4`` under --features_path (or under its ``videos/``
sub-folder when there is one). No test split."""
from __future__ import annotations

import pandas as pd

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import ENCODING, AnnotationParser
from dataloaders.datasets.registry import register_dataset

COLUMNS = ["videoid", "page_dir", "name"]


@register_dataset("webvid")
class WebVidParser(AnnotationParser):
    splits = ("train", "val")
    expected_files = "results_2M_train.csv, results_2M_val.csv (columns videoid, contentUrl, duration, page_dir, name)"

    def split_file(self, split: str):
        if split == "train":
            return self.file(self.args.train_csv, "results_2M_train.csv")
        return self.file(self.args.val_csv, "results_2M_val.csv")

    def has_split(self, split: str) -> bool:
        # the val file is optional; a missing train file is an error naming it
        return split == "train" or (split == "val" and self.split_file(split).is_file())

    def records(self, split: str) -> list[VideoRecord]:
        path = self.require(self.split_file(split), "columns videoid, contentUrl, duration, page_dir, name")
        header = pd.read_csv(path, nrows=0, encoding=ENCODING).columns
        if not set(COLUMNS) <= set(header):
            raise self.error(f"{path} has columns {', '.join(header)}; expected videoid, contentUrl, duration, page_dir, name")
        table = pd.read_csv(path, encoding=ENCODING, usecols=COLUMNS, dtype=str, keep_default_na=False)
        root = self.features_path / "videos" if (self.features_path / "videos").is_dir() else self.features_path
        return [VideoRecord(vid, str(root / page / f"{vid}.mp4"), [caption])
                for vid, page, caption in zip(table["videoid"], table["page_dir"], table["name"])]
