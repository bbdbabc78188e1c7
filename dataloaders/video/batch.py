"""Shared plumbing of the command-line tools that walk a video folder (verify_videos, compress_video,
frames_to_lmdb): finding the files, a worker pool with a progress bar, and the failure report."""
from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

# Containers seen in the retrieval datasets (DiDeMo alone mixes several).
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp",
                    ".wmv", ".ogv", ".ts", ".3g2")
TEMP_MARK = ".part"


def list_videos(root, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Video files below ``root``, sorted, skipping hidden files and our own unfinished temporaries."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or TEMP_MARK + "." in name:
                continue
            if os.path.splitext(name)[1].lower() in exts:
                found.append(Path(dirpath) / name)
    return sorted(found)


def _quiet_worker():
    # Decoders print libav warnings for every broken file; in pool workers they would shred the
    # progress bar. Reasons are returned to the main process instead.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def run_parallel(fn: Callable, items: list, workers: int, desc: str, quiet: bool = True,
                 start_method: str | None = None) -> Iterator:
    """``fn(item)`` for every item, results in completion order, with a tqdm bar on stderr.
    ``start_method="forkserver"`` from a long-lived multi-threaded process (a training run that has
    decoded videos already): a plain fork there can copy a lock another thread holds and hang."""
    workers = max(1, min(int(workers or os.cpu_count() or 1), len(items) or 1))
    bar = tqdm(total=len(items), desc=desc, unit="video", file=sys.stderr, dynamic_ncols=True)
    try:
        if workers == 1:
            for item in items:
                yield fn(item)
                bar.update()
        else:
            context = multiprocessing.get_context(start_method)
            with context.Pool(workers, initializer=_quiet_worker if quiet else None) as pool:
                for result in pool.imap_unordered(fn, items, chunksize=1):
                    yield result
                    bar.update()
    finally:
        bar.close()


def report_failures(failures: list[tuple[str, str]], total: int, what: str, log_path=None) -> None:
    """Print every failure as "path: reason" and, when ``log_path`` is given, write them as TSV."""
    failures = sorted(failures)
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as fh:
            for path, reason in failures:
                fh.write(f"{path}\t{reason}\n")
    for path, reason in failures:
        print(f"FAILED {path}: {reason}")
    summary = f"{len(failures)} of {total} videos {what}"
    if failures and log_path is not None:
        summary += f"; list written to {log_path}"
    print(summary)
