"""MSVD: ``raw-captions.pkl`` ({video id: [caption as a list of tokens, ...]}) and
``train_list.txt`` / ``val_list.txt`` / ``test_list.txt`` (one id per line). Tokens are joined with
spaces. Videos are ``<id>.avi`` in the original release (any common extension is accepted)."""
from __future__ import annotations

import pickle

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import AnnotationParser
from dataloaders.datasets.registry import register_dataset


@register_dataset("msvd")
class MSVDParser(AnnotationParser):
    video_extensions = (".avi", ".mp4", ".webm", ".mkv")
    search_subdirs = True
    expected_files = ("raw-captions.pkl (pickled dict video id -> list of token lists), "
                      "train_list.txt, val_list.txt, test_list.txt (one video id per line)")

    def captions(self) -> dict:
        path = self.require(self.data_dir / "raw-captions.pkl", "pickled dict video id -> list of token lists")
        with open(path, "rb") as f:
            data = pickle.load(f)
        if not isinstance(data, dict):
            raise self.error(f"{path} holds a {type(data).__name__}, expected a dict video id -> captions")
        return data

    def records(self, split: str) -> list[VideoRecord]:
        joined = {v: [c if isinstance(c, str) else " ".join(c) for c in caps] for v, caps in self.captions().items()}
        return self.listed_records(split, joined, "raw-captions.pkl", ".avi")
