"""Records, data errors, missing-video checks and the one retrieval dataset every benchmark uses.

Each benchmark's parser (``dataloaders/datasets/``) only turns its annotation files into a list of
:class:`VideoRecord`; everything else (pairs, paragraphs, tokenisation, decoding, the separate text and
video sides for evaluation, decode-failure handling) lives here once.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dataloaders.video import VideoDecodeError
from dataloaders.video.backends import open_lmdb
from dataloaders.video.lmdb_format import meta_key
from modules.clip import tokenize

logger = logging.getLogger(__name__)

SHOWN_MISSING = 20  # how many missing videos are listed on screen; the file lists all
SHOWN_BAD_WINDOWS = 5  # how many windows past the end of their video the error names


class DataError(RuntimeError):
    """Bad or missing data, reported before any work starts. The message is one line."""


@dataclass
class VideoRecord:
    """One video of a split: where it is, its captions, and the window of it that is used.

    ``start``/``end`` (seconds) restrict decoding to a clip of the file; ``None`` means the whole file.
    ``caption_windows`` keeps, for datasets that annotate moments (DiDeMo, ActivityNet), the
    (start, end) seconds of each caption, aligned with ``captions``.
    """

    video_id: str
    video_path: str
    captions: list[str]
    start: float | None = None
    end: float | None = None
    caption_windows: list[tuple[float, float]] | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Locating videos on disk


class VideoLocator:
    """Finds a record's file: the expected path, the same name with another extension, and for
    datasets whose files live in sub-folders (LSMDC movies, ...), the name anywhere below the root.

    Directory listings are cached so checking 100k records costs one listing per folder.
    """

    hint = "check --features_path"

    def __init__(self, root: str | os.PathLike | None, extensions: Sequence[str], search_subdirs: bool):
        self.root = Path(root) if root else None
        self.source = f"files under {self.root}" if self.root else "files"
        self.extensions = tuple(extensions)
        self.search_subdirs = search_subdirs
        self._listings: dict[Path, set[str]] = {}
        self._by_stem: dict[str, Path] | None = None

    def _listing(self, folder: Path) -> set[str]:
        if folder not in self._listings:
            try:
                self._listings[folder] = set(os.listdir(folder))
            except OSError:
                self._listings[folder] = set()
        return self._listings[folder]

    def _stem_index(self) -> dict[str, Path]:
        if self._by_stem is None:
            self._by_stem = {}
            if self.root is not None and self.root.is_dir():
                for folder, dirs, files in os.walk(self.root):
                    dirs.sort()
                    for name in sorted(files):
                        self._by_stem.setdefault(name, Path(folder) / name)
                        self._by_stem.setdefault(os.path.splitext(name)[0], Path(folder) / name)
        return self._by_stem

    def locate(self, expected: str) -> str | None:
        path = Path(expected)
        names = self._listing(path.parent)
        if path.name in names:
            return str(path)
        stem = path.stem  # parsers always give a file name with its extension
        for ext in self.extensions:
            if stem + ext in names:
                return str(path.with_name(stem + ext))
        if self.search_subdirs:
            index = self._stem_index()
            for key in (path.name, stem):
                if key in index:
                    return str(index[key])
        return None


class LMDBVideoLocator:
    """For the lmdb backend: a video is present when the frame LMDB holds its metadata key (written
    last by preprocess/frames_to_lmdb.py, so its frames are complete); the files are not needed."""

    hint = "check --lmdb_path, or extract them with preprocess/frames_to_lmdb.py"

    def __init__(self, lmdb_path: str | os.PathLike):
        self.source = f"frames in the LMDB {lmdb_path}"
        try:
            self._env = open_lmdb(lmdb_path)
        except FileNotFoundError as error:
            raise DataError(str(error)) from None

    def locate(self, expected: str) -> str | None:
        with self._env.begin() as txn:  # the reader looks a video up by its file stem
            return expected if txn.get(meta_key(Path(expected).stem)) is not None else None


def exclude_missing_videos(records: list[VideoRecord], locator: VideoLocator, label: str,
                           report_dir: str | os.PathLike | None) -> tuple[list[VideoRecord], list[VideoRecord], Path | None]:
    """Resolve every record's path; drop the ones not on disk, list the first 20 on screen and all of
    them in ``<report_dir>/missing_videos_<label>.txt``. Returns (present, missing, report file)."""
    present, missing = [], []
    for record in records:
        found = locator.locate(record.video_path)
        if found is None:
            missing.append(record)
        else:
            record.video_path = found
            present.append(record)
    if not missing:
        return present, missing, None
    report_dir = Path(report_dir) if report_dir else Path(tempfile.gettempdir())
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / f"missing_videos_{label}.txt"
    report.write_text("".join(f"{r.video_id}\t{r.video_path}\n" for r in missing))
    shown = "\n".join(f"  {r.video_id}: {r.video_path}" for r in missing[:SHOWN_MISSING])
    more = f"\n  ... and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else ""
    logger.warning("%s: %d of %d videos are missing (looked for %s) and are excluded (full list: %s):\n%s%s",
                   label, len(missing), len(records), locator.source, report, shown, more)
    if not present:
        raise DataError(f"{label}: none of the {len(records)} videos was found among {locator.source} (looked for "
                        f"e.g. {missing[0].video_path}); {locator.hint}. Missing list: {report}")
    return present, missing, report


def check_windows(records: Sequence[VideoRecord], label: str, duration_of: Callable[[str], float | None]) -> None:
    """Stop with one line when a start/end window starts at or after the end of its video.

    Only records whose window starts after 0 s are looked at; each of their videos is probed once with
    ``duration_of(path)`` (seconds from the container header, None when unknown: such a video is left
    to the decode-failure handling), on a thread pool as wide as the machine. A split without windows
    costs nothing.
    """
    late = [r for r in records if r.start is not None and r.start > 0]
    if not late:
        return
    paths = sorted({r.video_path for r in late})
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        durations = dict(zip(paths, pool.map(duration_of, paths)))
    bad = [(r, durations[r.video_path]) for r in late
           if durations[r.video_path] is not None and r.start >= durations[r.video_path]]
    if not bad:
        return

    def seconds(value):
        return "-" if value is None else f"{value:g}"

    # Parsers that know where a window was written put "annotation" (file) and "line" in record.extra.
    files = sorted({str(r.extra["annotation"]) for r, _ in bad if "annotation" in r.extra})
    shown = "; ".join(f"{'line %s: ' % r.extra['line'] if 'line' in r.extra else ''}{Path(r.video_path).name} "
                      f"start {seconds(r.start)} end {seconds(r.end)}, video {duration:.2f} s"
                      for r, duration in bad[:SHOWN_BAD_WINDOWS])
    more = f"; ... and {len(bad) - SHOWN_BAD_WINDOWS} more" if len(bad) > SHOWN_BAD_WINDOWS else ""
    where = f" of {', '.join(files)}" if files else ""
    windows = sum(r.start is not None or r.end is not None for r in records)
    raise DataError(f"{label}: {len(bad)} of {windows} start/end windows{where} start at or after the end of "
                    f"their video ({shown}{more}); correct or drop those rows")


def decode_failure_limit(max_failures: int | None, fraction: float, num_videos: int) -> int:
    """How many videos of a split may fail to decode: --max_decode_failures, else the fraction."""
    return int(max_failures) if max_failures is not None else int(math.floor(fraction * num_videos))


def carve_validation(records: list[VideoRecord], count: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Split ``count`` videos off a training list: the videos whose SHA-1 of the video id is smallest.

    Hash order is independent of the file's order, of --seed and of library versions, so the same
    ids are held out on every machine. Returns (remaining train, validation), each in file order.
    """
    if not 0 < count < len(records):
        raise DataError(f"--val_from_train {count} must be between 1 and {len(records) - 1} (training videos: {len(records)})")
    ranked = sorted(records, key=lambda r: hashlib.sha1(r.video_id.encode("utf-8")).hexdigest())
    held = {id(r) for r in ranked[:count]}
    return [r for r in records if id(r) not in held], [r for r in records if id(r) in held]


# --------------------------------------------------------------------------------------------------
# The dataset


def _video_decode_error():
    return VideoDecodeError


def _default_tokenizer():
    return tokenize


class RetrievalDataset(Dataset):
    """Captions and videos of one split.

    Training items (``__getitem__``) are (caption, video) pairs: every caption of every video when
    ``expand_captions`` (and always in paragraph mode, where each video has one paragraph), otherwise
    one item per video with a caption drawn from (seed, epoch, index); call :meth:`set_epoch`.

    Evaluation uses :meth:`text_dataset` and :meth:`video_dataset`, so each caption and each video is
    encoded once; :attr:`caption_to_video` maps caption index -> video index.
    """

    def __init__(self, records: list[VideoRecord], *, split: str, video_loader: Callable,
                 max_words: int = 32, paragraph: bool = False, expand_captions: bool = True, seed: int = 0,
                 tokenizer: Callable | None = None, max_decode_failures: int | None = None,
                 max_decode_failure_fraction: float = 0.01, name: str = "dataset",
                 missing_videos: Sequence[VideoRecord] = (), video_source: str | None = None):
        if not records:
            raise DataError(f"{name} {split}: no videos")
        self.records = list(records)
        self.split = split
        self.name = name
        self.video_loader = video_loader
        self.max_words = max_words
        self.paragraph = paragraph
        self.expand_captions = expand_captions or paragraph
        self.seed = seed
        self.epoch = 0
        self._tokenize = tokenizer
        self.missing_videos = list(missing_videos)
        self.video_source = video_source  # where the videos are read from, for describe()

        captions, owners = [], []
        for video_index, record in enumerate(self.records):
            if not record.captions:
                raise DataError(f"{name} {split}: video {record.video_id} has no caption")
            texts = [" ".join(record.captions)] if paragraph else record.captions
            captions.extend(texts)
            owners.extend([video_index] * len(texts))
        self.captions: list[str] = captions
        self.caption_to_video = torch.tensor(owners, dtype=torch.long)
        counts = torch.bincount(self.caption_to_video, minlength=len(self.records))
        self.multi_caption = bool((counts > 1).any())
        # CLIP4Clip's name: index of each video's last caption in the flat caption list.
        self.cut_off_points = (torch.cumsum(counts, 0) - 1).tolist()
        self._first_caption = (torch.cumsum(counts, 0) - counts).tolist()
        self._caption_counts = counts.tolist()

        self.decode_failure_limit = decode_failure_limit(max_decode_failures, max_decode_failure_fraction,
                                                         len(self.records))
        self.failed_videos: dict[int, str] = {}

    # sizes -----------------------------------------------------------------------------------------
    @property
    def num_videos(self) -> int:
        return len(self.records)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def __len__(self) -> int:
        return self.num_captions if self.expand_captions else self.num_videos

    def set_epoch(self, epoch: int) -> None:
        """Choose which caption each video gets this epoch (only matters without caption expansion)."""
        self.epoch = int(epoch)

    # text ------------------------------------------------------------------------------------------
    def tokenize(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokenize is None:
            self._tokenize = _default_tokenizer()
        ids, mask = self._tokenize([caption], max_words=self.max_words)
        return ids[0], mask[0]

    # video -----------------------------------------------------------------------------------------
    def load_video(self, video_index: int, rng: np.random.Generator | None = None):
        record = self.records[video_index]
        return self.video_loader(record.video_path, start=record.start, end=record.end, rng=rng)

    def video_fields(self) -> dict:
        """What an item carries beside its frames about how they were handed over (uint8 frames to
        normalise on the device: ``VideoClipLoader.batch_fields``); nothing for float32 frames."""
        fields = getattr(self.video_loader, "batch_fields", None)
        return fields() if fields is not None else {}

    def _item_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _caption_of_item(self, index: int) -> int:
        if self.expand_captions:
            return index
        first, count = self._first_caption[index], self._caption_counts[index]
        return first + int(self._item_rng(index).integers(count))

    def _note_failure(self, video_index: int, error: Exception) -> None:
        record = self.records[video_index]
        reason = getattr(error, "reason", str(error))
        self.failed_videos[video_index] = reason
        logger.warning("%s %s: cannot decode %s (%s); using another sample instead",
                       self.name, self.split, getattr(error, "path", record.video_path), reason)

    def __getitem__(self, index: int) -> dict:
        """A training pair. ``decode_failures`` ("3,17" or "") names the videos that failed to decode
        while producing it: a DataLoader worker only reports them, and the training loop counts them
        once each over every worker and rank (:class:`DecodeFailureBudget`), so the limit is global and
        crossing it is one line from the main process, not a worker's traceback."""
        decode_error = _video_decode_error()
        failures = []
        # A broken video is replaced by the next item whose video is not known to be broken, so the
        # replacement is the same on every run; never by a zero tensor.
        for step in range(len(self)):
            item = (index + step) % len(self)
            caption_index = self._caption_of_item(item)
            video_index = int(self.caption_to_video[caption_index])
            if video_index in self.failed_videos:
                continue
            try:
                video, video_mask = self.load_video(video_index, self._item_rng(item))
            except decode_error as error:
                self._note_failure(video_index, error)
                failures.append(video_index)
                continue
            text_ids, text_mask = self.tokenize(self.captions[caption_index])
            return {"text_ids": text_ids, "text_mask": text_mask, "video": video, "video_mask": video_mask,
                    "video_index": video_index, "caption_index": caption_index,
                    "decode_failures": ",".join(map(str, failures)), **self.video_fields()}
        raise DataError(f"{self.name} {self.split}: no video of the split could be decoded")

    # evaluation views ------------------------------------------------------------------------------
    def text_dataset(self) -> "CaptionView":
        return CaptionView(self)

    def video_dataset(self) -> "VideoView":
        return VideoView(self)

    def describe(self) -> str:
        kind = "paragraph" if self.paragraph else ("multi-caption" if self.multi_caption else "one caption per video")
        text = (f"{self.name} {self.split}: {self.num_videos} videos, {self.num_captions} captions ({kind}), "
                f"{len(self)} items")
        return f"{text}; videos from {self.video_source}" if self.video_source else text


class DecodeFailureBudget:
    """Training videos that failed to decode, each counted once over every DataLoader worker and rank;
    more than the dataset's limit ends the run with one line (what failed, how many, the limit, the
    command that lists every unreadable file)."""

    def __init__(self, dataset: RetrievalDataset, features_path: str | None = None):
        self.dataset, self.features_path = dataset, features_path
        self.failed: set[int] = set()

    def add(self, reports) -> None:
        """``reports``: the batch's ``decode_failures`` strings (or video indices)."""
        for report in reports:
            self.failed.update(int(i) for i in str(report).split(",") if i != "")

    def check(self) -> None:
        ds = self.dataset
        if len(self.failed) <= ds.decode_failure_limit:
            return
        paths = ", ".join(ds.records[i].video_path for i in sorted(self.failed)[:3])
        where = self.features_path or "VIDEO_FOLDER"
        raise DataError(f"{ds.name} {ds.split}: {len(self.failed)} of {ds.num_videos} videos failed to decode (all workers "
                        f"and ranks), more than the limit of {ds.decode_failure_limit} (--max_decode_failures / "
                        f"--max_decode_failure_fraction); first: {paths}; list every unreadable video with: python -m "
                        f"dataloaders.verify_videos --features_path {where} --out unreadable.tsv (or train with "
                        "--verify_videos to exclude them up front)")


class CaptionView(Dataset):
    """Every caption of a split once: dict(text_ids, text_mask, caption_index)."""

    def __init__(self, parent: RetrievalDataset):
        self.parent = parent

    def __len__(self) -> int:
        return self.parent.num_captions

    def __getitem__(self, index: int) -> dict:
        text_ids, text_mask = self.parent.tokenize(self.parent.captions[index])
        return {"text_ids": text_ids, "text_mask": text_mask, "caption_index": index}


class VideoView(Dataset):
    """Every video of a split once: dict(video, video_mask, video_index). A video that cannot be
    decoded stops evaluation with a DataError: dropping or zeroing it would change the test set."""

    def __init__(self, parent: RetrievalDataset):
        self.parent = parent

    def __len__(self) -> int:
        return self.parent.num_videos

    def __getitem__(self, index: int) -> dict:
        try:
            video, video_mask = self.parent.load_video(index)
        except _video_decode_error() as error:
            record = self.parent.records[index]
            raise DataError(f"{self.parent.name} {self.parent.split}: cannot decode {record.video_path} "
                            f"({getattr(error, 'reason', error)})") from error
        return {"video": video, "video_mask": video_mask, "video_index": index, **self.parent.video_fields()}
