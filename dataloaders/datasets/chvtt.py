"""CHVTT (HMMC's Chinese video-text corpus; not released): JSON lines with ``docid``, ``title``,
``title_eng``, ``tag``, ``tag_eng`` and ``duration``, one video per line, in ``chvtt_train.json`` (or
--train_csv). The caption is the title, Chinese (``--language chinese``) or its English translation;
videos are ``<docid>.mp4`` under --features_path (or their frames in an LMDB, ``--video_backend lmdb``).
Pre-training only: no test split (HMMC evaluates on MSR-VTT or VATEX, ``--eval_datatype``)."""
from __future__ import annotations

import json

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import ENCODING, AnnotationParser
from dataloaders.datasets.registry import register_dataset


@register_dataset("chvtt")
class CHVTTParser(AnnotationParser):
    splits = ("train",)
    expected_files = "chvtt_train.json (JSON lines with docid, title, title_eng)"

    def records(self, split: str) -> list[VideoRecord]:
        path = self.require(self.file(self.args.train_csv, "chvtt_train.json"), "JSON lines with docid, title, title_eng")
        field = "title" if getattr(self.args, "language", "english") == "chinese" else "title_eng"
        out = []
        with open(path, encoding=ENCODING) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    docid, caption = str(row["docid"]), str(row[field])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise self.error(f"{path}:{number}: expected a JSON object with docid and {field} ({error})") from None
                out.append(VideoRecord(docid, self.video_path(f"{docid}.mp4"), [caption]))
        return out
