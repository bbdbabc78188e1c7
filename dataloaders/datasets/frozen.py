"""T2VLP's WebVid captions: ``frozen_train_labels.json``, one JSON list of {"video_id", "caption"} (a
video may appear in several rows; its captions are grouped). --data_path names the folder or the file
itself (also accepted through --train_csv). Videos are ``<video_id>.mp4`` (or .webm/.mkv) anywhere below
--features_path (default: the folder of the json). Pre-training only: no val or test split.

T2VLP reads WebVid as 12 pre-extracted frames per video in TFRecord shards (``frozen_tfrecord.py``);
those are not read here: decode the videos themselves, or pack them into WebDataset shards with
``preprocess/make_shards.py --datatype frozen``."""
from __future__ import annotations

import os
from pathlib import Path

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import AnnotationParser, group_captions
from dataloaders.datasets.registry import register_dataset

FILE_NAME = "frozen_train_labels.json"


@register_dataset("frozen")
class FrozenParser(AnnotationParser):
    splits = ("train",)
    video_extensions = (".mp4", ".webm", ".mkv")
    search_subdirs = True  # WebVid keeps its videos in page folders
    expected_files = f"{FILE_NAME} (a JSON list of objects with video_id and caption)"

    def annotation_file(self) -> Path:
        given = Path(self.args.data_path)
        if given.suffix.lower() == ".json":
            return given
        return self.file(self.args.train_csv, FILE_NAME)

    def records(self, split: str) -> list[VideoRecord]:
        self.refuse_tfrecords()
        path = self.annotation_file()
        rows = self.read_json(path, "a JSON list of {video_id, caption}")
        if not isinstance(rows, list):
            raise self.error(f"{path} holds a JSON {type(rows).__name__}; expected a list of {{video_id, caption}}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "video_id" not in row or "caption" not in row:
                raise self.error(f"{path} item {i}: expected an object with video_id and caption, got {str(row)[:80]}")
        captions = group_captions(rows, "video_id", "caption")
        return [VideoRecord(video_id, self.video_path(f"{video_id}.mp4"), texts) for video_id, texts in captions.items()]

    def refuse_tfrecords(self) -> None:
        """One line instead of "every video missing" when --features_path is T2VLP's TFRecord folder."""
        folder = self.features_path
        names = os.listdir(folder) if folder.is_dir() else []
        if any(name.endswith(".tfrecord") for name in names):
            raise self.error(f"{folder} holds T2VLP's WebVid TFRecord frames, which are not read: point --features_path "
                             "at the WebVid videos, or pack them into shards with preprocess/make_shards.py --datatype "
                             "frozen and train with --datatype webdataset")
