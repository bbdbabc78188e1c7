"""Your own data: CSV (header) or JSON lines with ``video_path, caption[, start, end]``.

Files come from --train_csv / --val_csv / --test_csv, or default to ``train.csv`` / ``val.csv`` /
``test.csv`` (``.jsonl`` for --datatype jsonl) in --data_path. Relative video paths are taken under
--features_path (default: the annotation file's folder). Rows with the same video_path, start and
end form one video with several captions; in JSON lines ``caption`` may also be a list."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import AnnotationParser
from dataloaders.datasets.registry import register_dataset


def _seconds(value) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return float(value)


class TableParser(AnnotationParser):
    suffix = ""
    video_extensions = (".mp4", ".webm", ".mkv", ".avi", ".mov")

    def split_file(self, split: str) -> Path:
        flag = {"train": self.args.train_csv, "val": self.args.val_csv, "test": self.args.test_csv}[split]
        return self.file(flag, f"{split}{self.suffix}")

    def has_split(self, split: str) -> bool:
        # train and test are required (a missing file is an error naming it); val is optional.
        return split != "val" or self.split_file(split).is_file()

    def rows(self, path: Path) -> list[dict]:
        raise NotImplementedError

    def records(self, split: str) -> list[VideoRecord]:
        path = self.require(self.split_file(split), f"{split} split: video_path, caption[, start, end]")
        base = Path(self.args.features_path) if self.args.features_path else path.parent
        grouped: dict[tuple, VideoRecord] = {}
        for number, row in enumerate(self.rows(path), 1):
            if not row.get("video_path") or row.get("caption") in (None, ""):
                raise self.error(f"{path} row {number} lacks video_path or caption")
            start, end = _seconds(row.get("start")), _seconds(row.get("end"))
            key = (row["video_path"], start, end)
            if key not in grouped:
                video_id = row["video_path"] if start is None and end is None else f"{row['video_path']}@{start}-{end}"
                grouped[key] = VideoRecord(video_id, str(base / row["video_path"]), [], start, end)
            captions = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
            grouped[key].captions.extend(str(c) for c in captions)
        return list(grouped.values())


@register_dataset("csv")
class CSVParser(TableParser):
    suffix = ".csv"
    expected_files = "train.csv, val.csv, test.csv (header video_path,caption[,start,end]) or --train_csv/--val_csv/--test_csv"

    def rows(self, path: Path) -> list[dict]:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"video_path", "caption"} <= set(reader.fieldnames or []):
                raise self.error(f"{path} has columns {', '.join(reader.fieldnames or [])}; expected video_path, caption[, start, end]")
            return list(reader)


@register_dataset("jsonl")
class JSONLParser(TableParser):
    suffix = ".jsonl"
    expected_files = ("train.jsonl, val.jsonl, test.jsonl (one object per line with video_path, caption[, start, end]) "
                      "or --train_csv/--val_csv/--test_csv")

    def rows(self, path: Path) -> list[dict]:
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise self.error(f"{path}:{number} is not a JSON object ({error})") from error
        return rows
