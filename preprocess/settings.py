"""The settings an output of a preprocessing tool was made with, checked when a run resumes it, so
outputs of two configurations never mix (compress_video.py's folder, frames_to_lmdb.py's LMDB,
make_toy_dataset.py's folder). Light on purpose: the toy generator imports it without torch."""
from __future__ import annotations

import json
from pathlib import Path


def write_text_atomically(path, text: str) -> None:
    """Write under a temporary name (``NAME.part``) and rename: a file that exists is complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8", newline="")
    tmp.replace(path)


class SettingsMismatch(FileExistsError):
    """An output (folder, LMDB) exists that was made with other settings than this run's."""

    def __init__(self, where, stored: dict, wanted: dict, hint: str):
        self.where, self.hint = str(where), hint
        self.difference = ", ".join(f"{key} {stored.get(key)} there, {wanted.get(key)} now"
                                    for key in {**stored, **wanted} if stored.get(key) != wanted.get(key))
        super().__init__(f"{where} was made with other settings ({self.difference}); {hint}")


def check_settings(stored: dict, wanted: dict, where, hint: str) -> None:
    """SettingsMismatch unless the settings an output was made with are this run's."""
    if stored != wanted:
        raise SettingsMismatch(where, stored, wanted, hint)


def record_settings(path, wanted: dict, where, hint: str) -> None:
    """Keep an output folder's settings in the JSON file ``path``: written when absent (before any
    output, so an interrupted run is checked when it resumes), otherwise checked against ``wanted``."""
    path = Path(path)
    if path.is_file():
        check_settings(json.loads(path.read_text(encoding="utf-8")), wanted, where, hint)
    else:
        write_text_atomically(path, json.dumps(wanted, indent=1) + "\n")
