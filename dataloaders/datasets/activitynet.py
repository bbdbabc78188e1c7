"""ActivityNet Captions: ``train.json`` and ``val_1.json`` ({"v_<youtube id>": {duration, timestamps,
sentences}}), optionally restricted by ``train_ids.json`` / ``val_ids.json`` (JSON lists of the same
ids). val_1 is the test protocol; there is no validation split (use --val_from_train).

Paragraph-to-video: sentences joined with spaces, whole file used; each sentence keeps its
timestamp in ``caption_windows``. File names drop the ``v_`` prefix."""
from __future__ import annotations

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import AnnotationParser
from dataloaders.datasets.registry import register_dataset

FILES = {"train": ("train.json", "train_ids.json"), "test": ("val_1.json", "val_ids.json")}


@register_dataset("activitynet")
class ActivityNetParser(AnnotationParser):
    splits = ("train", "test")
    paragraph = True
    video_extensions = (".mp4", ".mkv", ".webm")
    search_subdirs = True
    expected_files = ("train.json and val_1.json ({\"v_<id>\": {duration, timestamps, sentences}}), "
                      "optional train_ids.json / val_ids.json")

    def records(self, split: str) -> list[VideoRecord]:
        captions_name, ids_name = FILES[split]
        path = self.data_dir / captions_name
        data = self.read_json(path, '{"v_<id>": {duration, timestamps, sentences}}')
        first = next(iter(data.values()), {}) if isinstance(data, dict) else None
        if not isinstance(first, dict) or not {"timestamps", "sentences"} <= set(first):
            raise self.error(f"{path} should map v_<id> to {{duration, timestamps, sentences}}")
        ids = list(data)
        ids_path = self.data_dir / ids_name
        if ids_path.is_file():
            keep = set(self.read_json(ids_path, "JSON list of v_<id>"))
            ids = [key for key in ids if key in keep]
        records = []
        for key in ids:
            entry = data[key]
            file_id = key[2:] if key.startswith("v_") else key
            windows = [(float(s), float(e)) for s, e in entry["timestamps"]]
            records.append(VideoRecord(file_id, self.video_path(file_id + ".mp4"),
                                       [s.strip() for s in entry["sentences"]], caption_windows=windows,
                                       extra={"duration": float(entry.get("duration", 0.0))}))
        return records
