"""What every annotation parser shares: the base class, file lookup and readers that fail with one
clear line naming the file that was expected and its format."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dataloaders.base import DataError, VideoRecord

SPLITS = ("train", "val", "test")
# Annotation text is UTF-8; "-sig" drops the byte-order mark that Excel and Notepad put in front, which
# would otherwise stick to the first column name ("\ufeffvideo_path") or break the first JSON value.
ENCODING = "utf-8-sig"


class AnnotationParser:
    """Turns one benchmark's annotation files into :class:`VideoRecord` lists.

    Subclasses set the class attributes and implement :meth:`records`.
    """

    name = ""
    # Splits the benchmark's files provide; "val" absent means selection needs --val_from_train.
    splits: tuple[str, ...] = SPLITS
    paragraph = False
    video_extensions: tuple[str, ...] = (".mp4",)
    search_subdirs = False  # look for the file name anywhere below --features_path
    expected_files = ""  # one line: file names and format, quoted in errors

    def __init__(self, args):
        self.args = args
        self.data_dir = data_dir(args)
        self.features_path = Path(args.features_path) if args.features_path else self.data_dir

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def expand_train_captions(self) -> bool:
        """Train on every (caption, video) pair (CLIP4Clip does this for all but un-expanded MSR-VTT)."""
        return True

    def records(self, split: str) -> list[VideoRecord]:
        raise NotImplementedError

    def reference_captions(self, split: str, records: list[VideoRecord]) -> list[list[str]]:
        """Every reference caption of each record's video, for captioning metrics: the split's own captions
        unless a benchmark's retrieval split lists fewer (MSR-VTT 1k-A)."""
        return [list(r.captions) for r in records]

    # helpers -------------------------------------------------------------------------------------
    def error(self, message: str) -> DataError:
        return DataError(f"{self.name}: {message}")

    def require(self, path: str | os.PathLike, what: str) -> Path:
        path = Path(path)
        if not path.is_file():
            raise self.error(f"missing annotation file {path} ({what}); expected in --data_path: {self.expected_files}")
        return path

    def file(self, flag_value: str | None, default_name: str) -> Path:
        """An annotation file from a flag (as given, or relative to --data_path) or its default name."""
        if flag_value:
            given = Path(flag_value)
            if given.is_file() or given.is_absolute():
                return given
            return self.data_dir / given if (self.data_dir / given).is_file() else given
        return self.data_dir / default_name

    def read_json(self, path: Path, what: str):
        self.require(path, what)
        try:
            with open(path, encoding=ENCODING) as f:
                return json.load(f)
        except json.JSONDecodeError as error:
            raise self.error(f"{path} is not valid JSON ({error}); expected {what}") from error

    def json_lines(self, path: Path):
        """(line number, object) for every non-empty line of a JSON-lines file; a line that is not a JSON
        object is an error naming the file and line."""
        with open(path, encoding=ENCODING) as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as error:
                    raise self.error(f"{path} line {line} is not a JSON object ({error})") from error
                if not isinstance(row, dict):
                    raise self.error(f"{path} line {line} holds a JSON {type(row).__name__}, not an object")
                yield line, row

    def read_lines(self, path: Path, what: str) -> list[str]:
        self.require(path, what)
        with open(path, encoding=ENCODING) as f:
            return [line.strip() for line in f if line.strip()]

    def listed_records(self, split: str, captions: dict, source: str, extension: str) -> list[VideoRecord]:
        """Records for the ids of ``<split>_list.txt``, in list order, captions looked up in ``captions``."""
        ids = self.read_lines(self.data_dir / f"{split}_list.txt", "one video id per line")
        unknown = [v for v in ids if v not in captions]
        if unknown:
            raise self.error(f"{len(unknown)} ids of {split}_list.txt have no captions in {source} (first: {unknown[0]})")
        return [VideoRecord(v, self.video_path(v + extension), list(captions[v])) for v in ids]

    def video_path(self, *parts: str) -> str:
        return str(self.features_path.joinpath(*parts))


def data_dir(args) -> Path:
    """--data_path is a folder, or (CLIP4Clip's MSR-VTT usage) the json file inside it."""
    if not args.data_path:
        raise DataError("--data_path is not set: point it at the folder holding the annotation files")
    path = Path(args.data_path)
    return path.parent if path.suffix.lower() in (".json", ".pkl", ".csv") else path


def group_captions(rows, video_key, caption_key) -> dict[str, list[str]]:
    """{video id: captions in file order} from an iterable of mappings."""
    grouped: dict[str, list[str]] = {}
    for row in rows:
        grouped.setdefault(str(row[video_key]), []).append(str(row[caption_key]))
    return grouped
