"""List every video under a folder that cannot be decoded, with the reason.

    python -m dataloaders.verify_videos --features_path DIR [--out bad.tsv] [--workers N] [--full]

Each file is opened and its first, middle and last frames are decoded (``--full``: every frame), with
the same backends and per-file fallback as training. Exit code 0 when every file is readable, 1 when
any is not, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

from dataloaders.video.backends import candidate_backends
from dataloaders.video.batch import VIDEO_EXTENSIONS, list_videos, report_failures, run_parallel
from dataloaders.video.errors import VideoDecodeError, describe
from dataloaders.video.loader import with_reader


def check_video(path, backends: list[str], full: bool = False) -> tuple[str, str | None]:
    """(path, None) when the video decodes, (path, reason) when it does not."""
    def decode(reader):
        n = reader.num_frames
        if full:
            for start in range(0, n, 32):  # in chunks, so a long video never sits in memory whole
                reader.get(range(start, min(n, start + 32)))
        else:
            reader.get(sorted({0, n // 2, n - 1}))

    try:
        with_reader(path, backends, decode)
    except VideoDecodeError as exc:
        return str(path), exc.reason
    except Exception as exc:  # a decoder crash is still an unreadable file, not a crash of the tool
        return str(path), describe(exc)
    return str(path), None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataloaders.verify_videos", description=__doc__.split("\n")[0])
    parser.add_argument("--features_path", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--video_backend", default="auto", choices=["auto", "decord", "cv2", "pyav", "torchcodec"])
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")
    parser.add_argument("--out", default=None, help="also write the unreadable files as 'path<TAB>reason' lines")
    parser.add_argument("--full", action="store_true", help="decode every frame, not just first/middle/last")
    parser.add_argument("--extensions", default=",".join(VIDEO_EXTENSIONS), help="comma-separated file endings")
    args = parser.parse_args(argv)

    try:
        videos = list_videos(args.features_path, args.extensions.split(","))
        backends = candidate_backends(args.video_backend)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not videos:
        print(f"error: no video files ({args.extensions}) under {args.features_path}", file=sys.stderr)
        return 2

    check = functools.partial(check_video, backends=backends, full=args.full)
    failures = [(path, reason) for path, reason in run_parallel(check, videos, args.workers, "verifying")
                if reason is not None]
    report_failures(failures, len(videos), "unreadable", args.out)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
