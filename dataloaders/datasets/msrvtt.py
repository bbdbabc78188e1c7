"""MSR-VTT: CLIP4Clip's msrvtt_data.zip files.

* 1k-A protocol (default): train = ``MSRVTT_train.9k.csv`` (or ``7k``; header ``video_id``) with
  captions from ``MSRVTT_data.json``; test = ``MSRVTT_JSFUSION_test.csv`` (header
  ``key,vid_key,video_id,sentence``, 1,000 videos x 1 caption). No validation split.
* full protocol (``--msrvtt_protocol full``): train/val/test = the ``split`` field of
  ``MSRVTT_data.json`` (train 6,513 / validate 497 / test 2,990 videos x 20 captions).
"""
from __future__ import annotations

import csv
from pathlib import Path

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import ENCODING, AnnotationParser, group_captions
from dataloaders.datasets.registry import register_dataset

JSON_NAME = "MSRVTT_data.json"
JSON_SPLIT = {"train": "train", "val": "validate", "test": "test"}


@register_dataset("msrvtt")
class MSRVTTParser(AnnotationParser):
    video_extensions = (".mp4", ".webm")
    expected_files = ("MSRVTT_train.9k.csv or MSRVTT_train.7k.csv (header video_id), MSRVTT_JSFUSION_test.csv "
                      "(header key,vid_key,video_id,sentence), MSRVTT_data.json (keys info, videos, sentences), "
                      "from CLIP4Clip's msrvtt_data.zip")

    def __init__(self, args):
        super().__init__(args)
        self.protocol = args.msrvtt_protocol
        self.splits = ("train", "val", "test") if self.protocol == "full" else ("train", "test")
        given = Path(args.data_path)
        self.json_path = given if given.suffix.lower() == ".json" else self.data_dir / JSON_NAME
        self._json = None

    def expand_train_captions(self) -> bool:
        return bool(self.args.expand_msrvtt_sentences)

    def annotations(self) -> dict:
        if self._json is None:
            data = self.read_json(self.json_path, "CLIP4Clip's MSRVTT_data.json with keys info, videos, sentences")
            self._json = self.check_shape(data)
        return self._json

    def check_shape(self, data) -> dict:
        where = f"{self.json_path} is not CLIP4Clip's MSRVTT_data.json (keys info, videos, sentences)"
        if isinstance(data, dict) and "annotations" in data and "sentences" not in data:
            raise self.error(f"{where}: it is COCO-style (keys {', '.join(sorted(data))}), like frozen-in-time's "
                             "MSR_VTT.json; get MSRVTT_data.json from CLIP4Clip's msrvtt_data.zip instead")
        if not isinstance(data, dict):
            raise self.error(f"{where}: it holds a JSON {type(data).__name__}, not an object")
        if not isinstance(data.get("sentences"), list):
            raise self.error(f"{where}: top-level keys are {', '.join(sorted(data)) or 'none'}")
        sample = data["sentences"][0] if data["sentences"] else {}
        if not {"video_id", "caption"} <= set(sample):
            raise self.error(f"{where}: sentences[0] has keys {', '.join(sorted(sample))}, expected video_id, caption")
        return data

    def read_csv(self, path: Path, columns: set[str], what: str) -> list[dict]:
        self.require(path, what)
        with open(path, newline="", encoding=ENCODING) as f:
            reader = csv.DictReader(f)
            header = set(reader.fieldnames or [])
            if not columns <= header:
                raise self.error(f"{path} has columns {', '.join(reader.fieldnames or [])}; expected {what}")
            return list(reader)

    def record(self, video_id: str, captions: list[str]) -> VideoRecord:
        return VideoRecord(video_id, self.video_path(video_id + ".mp4"), captions)

    def records(self, split: str) -> list[VideoRecord]:
        if self.protocol == "full":
            return self.full_split(split)
        if split == "test":
            rows = self.read_csv(self.file(self.args.val_csv, "MSRVTT_JSFUSION_test.csv"),
                                 {"video_id", "sentence"}, "MSRVTT_JSFUSION_test.csv with header key,vid_key,video_id,sentence")
            return [self.record(row["video_id"], [row["sentence"]]) for row in rows]
        rows = self.read_csv(self.file(self.args.train_csv, "MSRVTT_train.9k.csv"), {"video_id"},
                             "MSRVTT_train.9k.csv with one column video_id")
        captions = group_captions(self.annotations()["sentences"], "video_id", "caption")
        without = [row["video_id"] for row in rows if row["video_id"] not in captions]
        if without:
            raise self.error(f"{len(without)} training videos have no sentence in {self.json_path} "
                             f"(first: {', '.join(without[:5])}); are the csv and the json from the same release?")
        return [self.record(row["video_id"], captions[row["video_id"]]) for row in rows]

    def reference_captions(self, split: str, records: list[VideoRecord]) -> list[list[str]]:
        """1k-A test lists one caption per video (MSRVTT_JSFUSION_test.csv); captioning is scored on all 20 of
        MSRVTT_data.json."""
        if self.protocol == "full" or split != "test":
            return super().reference_captions(split, records)
        captions = group_captions(self.annotations()["sentences"], "video_id", "caption")
        without = [r.video_id for r in records if r.video_id not in captions]
        if without:
            raise self.error(f"{len(without)} test videos have no sentence in {self.json_path} (first: "
                             f"{', '.join(without[:5])}); captioning needs every reference caption from it")
        return [captions[r.video_id] for r in records]

    def full_split(self, split: str) -> list[VideoRecord]:
        data = self.annotations()
        if not data.get("videos") or "split" not in data["videos"][0]:
            raise self.error(f"{self.json_path} has no videos[*].split field, needed by --msrvtt_protocol full")
        captions = group_captions(data["sentences"], "video_id", "caption")
        wanted = JSON_SPLIT[split]
        return [self.record(v["video_id"], captions[v["video_id"]]) for v in data["videos"]
                if v["split"] == wanted and v["video_id"] in captions]
