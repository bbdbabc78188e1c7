"""Your own data: CSV (header) or JSON lines with ``video_path, caption[, start, end]``.

Files come from --train_csv / --val_csv / --test_csv, or default to ``train.csv`` / ``val.csv`` /
``test.csv`` (``.jsonl`` for --datatype jsonl) in --data_path. Relative video paths are taken under
--features_path (default: the annotation file's folder). Rows with the same video_path, start and
end form one video with several captions; in JSON lines ``caption`` may also be a list, and
``{"video": ..., "captions": [...]}`` (a captioning set's layout) reads as video_path and caption."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterator

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import ENCODING, AnnotationParser
from dataloaders.datasets.registry import register_dataset


def _seconds(value) -> float | None:
    """Seconds from a start/end cell; None for an empty cell. Raises ValueError for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(value)
    seconds = float(value)  # TypeError for lists and objects, ValueError for text
    if not math.isfinite(seconds):
        raise ValueError(value)
    return seconds


class TableParser(AnnotationParser):
    suffix = ""
    video_extensions = (".mp4", ".webm", ".mkv", ".avi", ".mov")

    def split_file(self, split: str) -> Path:
        flag = {"train": self.args.train_csv, "val": self.args.val_csv, "test": self.args.test_csv}[split]
        return self.file(flag, f"{split}{self.suffix}")

    def has_split(self, split: str) -> bool:
        # train and test are required (a missing file is an error naming it); val is optional.
        return split != "val" or self.split_file(split).is_file()

    def rows(self, path: Path) -> Iterator[tuple[int, dict]]:
        """(line number, row) for every row of the file."""
        raise NotImplementedError

    def window(self, path: Path, line: int, row: dict) -> tuple[float | None, float | None]:
        seconds = {}
        for column in ("start", "end"):
            try:
                seconds[column] = _seconds(row.get(column))
            except (TypeError, ValueError):
                raise self.error(f"{path} line {line}: column {column} is {row.get(column)!r}, "
                                 "not a number of seconds (leave it empty for the whole video)") from None
        start, end = seconds["start"], seconds["end"]
        if start is not None and end is not None and end < start:
            raise self.error(f"{path} line {line}: end {end:g} s is before start {start:g} s")
        return start, end

    def records(self, split: str) -> list[VideoRecord]:
        path = self.require(self.split_file(split), f"{split} split: video_path, caption[, start, end]")
        base = Path(self.args.features_path) if self.args.features_path else path.parent
        grouped: dict[tuple, VideoRecord] = {}
        for line, row in self.rows(path):
            if not row.get("video_path") or row.get("caption") in (None, ""):
                raise self.error(f"{path} line {line} lacks video_path or caption")
            start, end = self.window(path, line, row)
            key = (row["video_path"], start, end)
            if key not in grouped:
                whole = start is None and end is None
                video_id = row["video_path"] if whole else f"{row['video_path']}@{start}-{end}"
                # Where a window was written, for the check of windows against video durations.
                extra = {} if whole else {"annotation": str(path), "line": line}
                grouped[key] = VideoRecord(video_id, str(base / row["video_path"]), [], start, end, extra=extra)
            captions = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
            grouped[key].captions.extend(str(c) for c in captions)
        return list(grouped.values())


@register_dataset("csv")
class CSVParser(TableParser):
    suffix = ".csv"
    expected_files = "train.csv, val.csv, test.csv (header video_path,caption[,start,end]) or --train_csv/--val_csv/--test_csv"

    def rows(self, path: Path) -> Iterator[tuple[int, dict]]:
        with open(path, newline="", encoding=ENCODING) as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if not {"video_path", "caption"} <= set(columns):
                raise self.error(f"{path} has columns {', '.join(columns)}; expected video_path, caption[, start, end]")
            for row in reader:
                if None in row:  # DictReader keeps the fields past the header's under the key None
                    raise self.error(
                        f"{path} line {reader.line_num} has {len(columns) + len(row[None])} fields for the "
                        f"{len(columns)} columns of the header ({', '.join(columns)}): quote a caption that holds "
                        'a comma ("a green circle, moving right")')
                yield reader.line_num, row


KEY_ALIASES = {"video": "video_path", "captions": "caption"}


@register_dataset("jsonl")
class JSONLParser(TableParser):
    suffix = ".jsonl"
    expected_files = ("train.jsonl, val.jsonl, test.jsonl (one object per line with video_path, caption[, start, end], "
                      "or video, captions: a list) or --train_csv/--val_csv/--test_csv")

    def rows(self, path: Path) -> Iterator[tuple[int, dict]]:
        for line, row in self.json_lines(path):  # {video, captions} (captioning sets) reads as {video_path, caption}
            yield line, {KEY_ALIASES.get(key, key): value for key, value in row.items()}
