"""DiDeMo: ``{train,val,test}_data.json``, each a JSON list of moments
{"video": file name, "description": sentence, "times": [[start, end] segment indices, ...]}.
If ``{split}_list.txt`` is present it restricts (and orders) the videos.

Paragraph-to-video: a video's descriptions, in file order, are joined into one paragraph and the
whole file is used. Each description keeps its moment in ``caption_windows``: annotators' segment
indices averaged, segments being 5 s long and the end index inclusive, i.e.
(mean start * 5, (mean end + 1) * 5) seconds."""
from __future__ import annotations

from dataloaders.base import VideoRecord
from dataloaders.datasets.common import AnnotationParser
from dataloaders.datasets.registry import register_dataset

SEGMENT_SECONDS = 5.0


def moment_window(times) -> tuple[float, float]:
    starts = [t[0] for t in times]
    ends = [t[1] for t in times]
    return (SEGMENT_SECONDS * sum(starts) / len(starts), SEGMENT_SECONDS * (sum(ends) / len(ends) + 1))


@register_dataset("didemo")
class DiDeMoParser(AnnotationParser):
    paragraph = True
    video_extensions = (".mp4", ".mov", ".m4v", ".mpg", ".avi", ".3gp", ".wmv", ".mkv", ".webm")
    search_subdirs = True
    expected_files = ("train_data.json, val_data.json, test_data.json (JSON list of {video, description, times}), "
                      "optional {train,val,test}_list.txt")

    def records(self, split: str) -> list[VideoRecord]:
        path = self.data_dir / f"{split}_data.json"
        moments = self.read_json(path, "JSON list of {video, description, times}")
        if not isinstance(moments, list) or (moments and not {"video", "description", "times"} <= set(moments[0])):
            found = sorted(moments[0]) if isinstance(moments, list) and moments else type(moments).__name__
            raise self.error(f"{path} should be a JSON list of {{video, description, times}}; found {found}")
        by_video: dict[str, VideoRecord] = {}
        for moment in moments:
            name = moment["video"]
            record = by_video.setdefault(name, VideoRecord(name, self.video_path(name), [], caption_windows=[]))
            record.captions.append(moment["description"].strip())
            record.caption_windows.append(moment_window(moment["times"]))
        listed = self.data_dir / f"{split}_list.txt"
        if listed.is_file():
            return [by_video[name] for name in self.read_lines(listed, "one video name per line") if name in by_video]
        return list(by_video.values())
