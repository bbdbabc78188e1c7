"""Re-encode a folder of videos to a fixed frame rate and short side, keeping folders and file names.

    python preprocess/compress_video.py --input_root IN --output_root OUT [--fps 3] [--size 224] [--workers N]

Each video becomes H.264 (video stream only) at exactly --fps frames per second (ffmpeg's fps filter,
which drops/duplicates frames to the new rate; `-r` alone only relabels timestamps) with its short side
scaled down to --size and both sides even, for landscape and portrait alike. A video whose short side is
already --size or less keeps its size (rounded down to even sides): upscaling adds pixels, not detail, and
--allow_upscale is needed to scale it up to --size. Outputs are written under a
temporary name and renamed when complete and readable, so an interrupted run resumes where it stopped:
finished files are skipped. --fps, --size and --crf are recorded in OUTPUT_ROOT/compress_settings.json;
a rerun with other values is refused in one line (--overwrite redoes every video instead), so outputs of
two settings never mix. A file ffmpeg cannot convert is listed at the end and in the log; it is never
copied over unconverted (CLIP4Clip's script does that, leaving full-size originals among the outputs).
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders.video.batch import (  # noqa: E402
    TEMP_MARK, VIDEO_EXTENSIONS, list_videos, report_failures, run_parallel)
from dataloaders.video.errors import VideoDecodeError  # noqa: E402
from dataloaders.video.loader import probe  # noqa: E402
from preprocess.settings import SettingsMismatch, record_settings  # noqa: E402
from preprocess.synthetic import ffmpeg_binary  # noqa: E402

SETTINGS_FILE = "compress_settings.json"
OTHER_SETTINGS_HINT = "rerun with --overwrite to redo every video, or choose another --output_root"

# H.264 in the container the name promises where one exists; Matroska otherwise (.webm cannot hold
# H.264, and decoders identify the content, not the extension), so loaders still find the same names.
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska", ".3gp": "mp4"}


def ffmpeg_command(src, dst, fps: float, size: int, muxer: str, crf: int, preset: str, threads: int,
                   allow_upscale: bool = False) -> list[str]:
    # Short side to `size` (or, without allow_upscale, to the source's own short side when that is smaller,
    # rounded down to even for 4:2:0); -2 keeps the aspect ratio and rounds the other side to an even number.
    width, height = (str(size), str(size)) if allow_upscale else (f"min({size},trunc(iw/2)*2)",
                                                                    f"min({size},trunc(ih/2)*2)")
    scale = f"scale=w='if(gt(iw,ih),-2,{width})':h='if(gt(iw,ih),{height},-2)':flags=bicubic"
    return [
        ffmpeg_binary(), "-nostdin", "-y", "-loglevel", "error", "-i", str(src),
        "-map", "0:v:0", "-an", "-sn", "-dn", "-map_chapters", "-1",
        "-vf", f"fps={fps},{scale}",
        "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-threads", str(threads), "-f", muxer, str(dst),
    ]


def compress_one(src: Path, input_root: Path, output_root: Path, fps: float, size: int, crf: int, preset: str,
                 threads: int, overwrite: bool, timeout: float | None,
                 allow_upscale: bool = False) -> tuple[str, str, str]:
    """(source path, "done" | "skipped" | "failed", reason)."""
    dst = output_root / src.relative_to(input_root)
    if not overwrite and dst.exists() and dst.stat().st_size > 0:
        return str(src), "skipped", ""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + TEMP_MARK)
    muxer = _MUXERS.get(src.suffix.lower(), "matroska")
    cmd = ffmpeg_command(src, tmp, fps, size, muxer, crf, preset, threads, allow_upscale)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            return str(src), "failed", f"ffmpeg exit {proc.returncode}: {lines[-1] if lines else 'no message'}"
        info = probe(tmp)  # an empty or unreadable output is a failure too, not a finished file
        if info.num_frames <= 0:
            return str(src), "failed", "ffmpeg wrote no frames"
        os.replace(tmp, dst)
    except subprocess.TimeoutExpired:
        return str(src), "failed", f"ffmpeg did not finish within {timeout} s"
    except VideoDecodeError as exc:
        return str(src), "failed", f"ffmpeg's output is unreadable: {exc.reason}"
    finally:
        tmp.unlink(missing_ok=True)
    return str(src), "done", ""


def _check_args(args, input_root: Path, output_root: Path) -> str | None:
    ffmpeg_binary()  # raises with the install hint when ffmpeg is missing
    if args.size <= 0 or args.size % 2:
        return f"--size must be a positive even number (H.264 4:2:0 needs even sides), got {args.size}"
    if args.fps <= 0:
        return f"--fps must be positive, got {args.fps}"
    if output_root == input_root or input_root in output_root.parents:
        return "--output_root must be outside --input_root, or a rerun would compress the outputs again"
    return None


def _check_output_settings(output_root: Path, settings: dict, overwrite: bool) -> str | None:
    """Refuse to add outputs of other settings to a folder; with --overwrite forget the old ones (the
    file is written again once every video has been redone, so an interrupted overwrite is not mistaken
    for a finished one)."""
    path = output_root / SETTINGS_FILE
    if overwrite:
        path.unlink(missing_ok=True)
        return None
    if not path.is_file() and output_root.is_dir() and list_videos(output_root):
        return (f"{output_root} holds videos but no {SETTINGS_FILE} (written by an older version?), so their "
                f"--fps/--size are unknown; {OTHER_SETTINGS_HINT}")
    output_root.mkdir(parents=True, exist_ok=True)
    try:
        record_settings(path, settings, output_root, OTHER_SETTINGS_HINT)
    except SettingsMismatch as exc:
        return str(exc)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_root", required=True, help="folder of source videos (searched recursively)")
    parser.add_argument("--output_root", required=True, help="where the same tree of compressed videos goes")
    parser.add_argument("--fps", type=float, default=3, help="output frames per second (default 3)")
    parser.add_argument("--size", type=int, default=224,
                        help="output short side in pixels, even (default 224); smaller videos keep their size")
    parser.add_argument("--allow_upscale", action="store_true",
                        help="also scale videos whose short side is below --size up to --size")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel ffmpeg jobs (default: all cores)")
    parser.add_argument("--crf", type=int, default=23, help="x264 quality, lower is better (default 23)")
    parser.add_argument("--preset", default="medium", help="x264 speed preset (default medium)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per video (default: no limit)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every video, also those already done (needed to change --fps/--size/--crf)")
    parser.add_argument("--log", default=None, help="failure list (default OUTPUT_ROOT/compress_failures.tsv)")
    parser.add_argument("--extensions", default=",".join(VIDEO_EXTENSIONS), help="comma-separated file endings")
    args = parser.parse_args(argv)

    input_root, output_root = Path(args.input_root).resolve(), Path(args.output_root).resolve()
    settings = {"fps": args.fps, "size": args.size, "crf": args.crf, "allow_upscale": args.allow_upscale}
    try:
        problem = _check_args(args, input_root, output_root)
        videos = [] if problem else list_videos(input_root, args.extensions.split(","))
    except (RuntimeError, FileNotFoundError) as exc:
        problem = str(exc)
    if not problem and not videos:
        problem = f"no video files ({args.extensions}) under {input_root}"
    if not problem:
        problem = _check_output_settings(output_root, settings, args.overwrite)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    workers = max(1, min(args.workers or 1, len(videos)))
    job = functools.partial(compress_one, input_root=input_root, output_root=output_root, fps=args.fps,
                            size=args.size, crf=args.crf, preset=args.preset,
                            threads=max(1, (os.cpu_count() or 1) // workers), overwrite=args.overwrite,
                            timeout=args.timeout, allow_upscale=args.allow_upscale)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    failures = []
    for src, status, reason in run_parallel(job, videos, workers, "compressing"):
        counts[status] += 1
        if status == "failed":
            failures.append((src, reason))
    if args.overwrite:
        record_settings(output_root / SETTINGS_FILE, settings, output_root, OTHER_SETTINGS_HINT)
    print(f"{counts['done']} compressed, {counts['skipped']} already done")
    log = Path(args.log) if args.log else output_root / "compress_failures.tsv"
    report_failures(failures, len(videos), "failed", log)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
