"""CHVTT (HMMC's Chinese video-text corpus; not released): JSON lines with ``docid``, ``title``,
``title_eng``, ``tag``, ``tag_eng`` and ``duration``, one video per line, in ``chvtt_train.json`` (or
--train_csv). The caption is the title, Chinese (``--language chinese``) or its English translation;
videos are ``<docid>.mp4`` under --features_path (or their frames in an LMDB, ``--video_backend lmdb``).
Pre-training only: no test split (HMMC evaluates on MSR-VTT or VATEX, ``--eval_datatype``)."""
from __future__ import annotations

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import AnnotationParser
from dataloaders.datasets.registry import register_dataset


@register_dataset("chvtt")
class CHVTTParser(AnnotationParser):
    splits = ("train",)
    expected_files = "chvtt_train.json (JSON lines with docid, title, title_eng)"

    def records(self, split: str) -> list[VideoRecord]:
        path = self.require(self.file(self.args.train_csv, "chvtt_train.json"), "JSON lines with docid, title, title_eng")
        field = "title" if getattr(self.args, "language", "english") == "chinese" else "title_eng"
        out = []
        for line, row in self.json_lines(path):
            if "docid" not in row or field not in row:
                raise self.error(f"{path} line {line}: expected docid and {field}, got {', '.join(row) or 'nothing'}")
            out.append(VideoRecord(str(row["docid"]), self.video_path(f"{row['docid']}.mp4"), [str(row[field])]))
        return out
