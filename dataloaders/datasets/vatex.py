"""VATEX with the HGR split lists ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt``
(25,991 / 1,500 / 1,500 videoIDs) and captions from, in order of preference:

* ``vatex_data.json``: {videoID: {"enCap": [...], "chCap": [...]}} (CLIP2Video's caption file);
* ``vatex_training_v1.0.json`` + ``vatex_validation_v1.0.json``: the official release, a JSON list (or
  JSON lines) of {"videoID", "enCap", "chCap"};
* ``ref_captions.json``: {videoID: [English captions]} (TS2-Net's file).

``--language english`` reads enCap, ``--language chinese`` reads chCap (an earlier loader swapped
them). Videos are ``<videoID>.mp4``."""
from __future__ import annotations

import json

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import ENCODING, AnnotationParser
from dataloaders.datasets.registry import register_dataset

LANGUAGE_FIELD = {"english": "enCap", "chinese": "chCap"}
OFFICIAL = ("vatex_training_v1.0.json", "vatex_validation_v1.0.json")


@register_dataset("vatex")
class VATEXParser(AnnotationParser):
    video_extensions = (".mp4", ".webm", ".mkv")
    search_subdirs = True
    expected_files = ("train_list.txt, val_list.txt, test_list.txt (HGR split, one videoID per line) and captions in "
                      "vatex_data.json, or vatex_training_v1.0.json + vatex_validation_v1.0.json, or ref_captions.json")

    def __init__(self, args):
        super().__init__(args)
        self.field = LANGUAGE_FIELD[args.language]
        self._captions = None

    def load_official(self, name: str) -> list[dict]:
        path = self.require(self.data_dir / name, "official VATEX json: list of {videoID, enCap, chCap}")
        text = path.read_text(encoding=ENCODING)
        try:
            items = json.loads(text)
        except json.JSONDecodeError:  # some copies are JSON lines
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        items = [items] if isinstance(items, dict) else items  # JSON lines holding a single video
        if not all(isinstance(x, dict) and "videoID" in x for x in items):
            raise self.error(f"{path}: expected a list of {{videoID, enCap, chCap}} objects")
        return items

    def caption_table(self) -> dict[str, list[str]]:
        if self._captions is not None:
            return self._captions
        d = self.data_dir
        if (d / "vatex_data.json").is_file():
            table = self.read_json(d / "vatex_data.json", "{videoID: {enCap, chCap}}")
            self._captions = {vid: self.pick(entry, d / "vatex_data.json") for vid, entry in table.items()}
        elif all((d / name).is_file() for name in OFFICIAL):
            self._captions = {item["videoID"]: self.pick(item, d / name)
                              for name in OFFICIAL for item in self.load_official(name)}
        elif (d / "ref_captions.json").is_file():
            if self.field != "enCap":
                raise self.error("ref_captions.json holds English captions only; --language chinese needs "
                                 "vatex_data.json or the official vatex_*_v1.0.json files")
            self._captions = self.read_json(d / "ref_captions.json", "{videoID: [captions]}")
        else:
            raise self.error(f"no caption file in {d}; expected {self.expected_files}")
        return self._captions

    def pick(self, entry: dict, source) -> list[str]:
        if self.field not in entry:
            raise self.error(f"{source}: an entry has no {self.field} field (needed by --language {self.args.language})")
        return list(entry[self.field])

    def records(self, split: str) -> list[VideoRecord]:
        return self.listed_records(split, self.caption_table(), "the caption file", ".mp4")
