"""LSMDC: tab-separated files with six fields and no header
(clip id, start aligned, end aligned, start extracted, end extracted, sentence):
``LSMDC16_annos_training.csv``, ``LSMDC16_annos_val.csv`` and the test file
``LSMDC16_challenge_1000_publictect.csv`` (sic). A clip with several lines gets all their sentences.
Videos are ``<movie>/<clip id>.avi``; they are found anywhere below --features_path."""
from __future__ import annotations

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import ENCODING, AnnotationParser
from dataloaders.datasets.registry import register_dataset

FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
         "test": "LSMDC16_challenge_1000_publictect.csv"}
FIELDS = 6


@register_dataset("lsmdc")
class LSMDCParser(AnnotationParser):
    video_extensions = (".avi", ".mp4", ".mkv", ".webm")
    search_subdirs = True
    expected_files = f"{', '.join(FILES.values())} (tab-separated, 6 fields, no header)"

    def records(self, split: str) -> list[VideoRecord]:
        path = self.require(self.data_dir / FILES[split], "tab-separated, 6 fields, no header")
        captions: dict[str, list[str]] = {}
        with open(path, encoding=ENCODING) as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) != FIELDS:
                    raise self.error(f"{path}:{number} has {len(fields)} tab-separated fields, expected {FIELDS}")
                captions.setdefault(fields[0], []).append(fields[5])
        return [VideoRecord(clip, self.video_path(clip.rsplit("_", 1)[0], clip + ".avi"), texts)
                for clip, texts in captions.items()]
