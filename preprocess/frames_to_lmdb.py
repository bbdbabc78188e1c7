"""Pre-extract JPEG frames of a folder of videos into one LMDB, served by ``--video_backend lmdb``.

    python preprocess/frames_to_lmdb.py --input_root VIDEOS --lmdb_path frames.lmdb [--fps 1 | --num_frames N]
        [--size 224] [--quality 90] [--workers N]

Frame selection:
  --fps R         R frames in every second by CLIP4Clip's rule (the first frame of each second for R = 1).
                  The stored frames are exactly CLIP4Clip's candidate frames, so the lmdb backend in
                  clip4clip mode with --feature_framerate R picks the frames CLIP4Clip picks from the video.
  --num_frames N  N frames per video at the centres of N equal segments (HMMC-style fixed frame pool).
Keys are documented in dataloaders/video/lmdb_format.py and docs/video.md. The run is resumable (videos
already stored are skipped), the map grows when it fills up, and every video that fails is listed at
the end and in LMDB_PATH/failed_videos.tsv; the annotation files are never touched.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dataloaders.video import lmdb_format  # noqa: E402
from dataloaders.video.backends import candidate_backends  # noqa: E402
from dataloaders.video.batch import VIDEO_EXTENSIONS, list_videos, report_failures, run_parallel  # noqa: E402
from dataloaders.video.errors import VideoDecodeError, describe  # noqa: E402
from dataloaders.video.loader import with_reader  # noqa: E402
from dataloaders.video.sampling import sample_indices  # noqa: E402
from preprocess.settings import SettingsMismatch, check_settings  # noqa: E402

CHUNK = 32  # frames decoded at a time, so hour-long videos never sit in memory whole


def select_frames(num_frames: int, fps: float, rate: int | None, count: int | None) -> tuple[list[int], float]:
    """Source frame indices to store, and the frame rate the stored sequence plays at."""
    if rate is not None:
        indices = sample_indices(num_frames, fps, num_frames + 1, "clip4clip", feature_framerate=rate)
        # A video slower than the requested rate yields int(fps) frames per second, not `rate`.
        return indices, float(min(rate, max(1, int(fps))))
    indices = sample_indices(num_frames, fps, count, "uniform")
    seconds = num_frames / fps if fps > 0 else len(indices)
    return indices, len(indices) / seconds


def _resize_short_side(frame: np.ndarray, size: int, cv2) -> np.ndarray:
    h, w = frame.shape[:2]
    if size <= 0 or min(h, w) == size:
        return frame
    scale = size / min(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Area averaging when shrinking avoids aliasing; bicubic when enlarging.
    return cv2.resize(frame, new, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def extract(path: Path, backends: list[str], rate: int | None, count: int | None, size: int, quality: int):
    """(path, video_id, meta, jpeg list, None) on success, (path, video_id, None, None, reason) on failure."""
    import cv2
    video_id = path.stem

    def run(reader):
        indices, stored_fps = select_frames(reader.num_frames, reader.fps, rate, count)
        if not indices:
            raise VideoDecodeError(path, "no frames to extract")
        jpegs, shape = [], None
        for start in range(0, len(indices), CHUNK):
            for frame in reader.get(indices[start:start + CHUNK]):
                frame = _resize_short_side(frame, size, cv2)
                shape = frame.shape
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    raise VideoDecodeError(path, "JPEG encoding failed")
                jpegs.append(buf.tobytes())
        meta = {"num_frames": len(jpegs), "fps": stored_fps, "width": shape[1], "height": shape[0],
                "source_num_frames": reader.num_frames, "source_fps": reader.fps, "source_indices": indices,
                "source": str(path)}
        return meta, jpegs

    try:
        meta, jpegs = with_reader(path, backends, run)
    except VideoDecodeError as exc:
        return str(path), video_id, None, None, exc.reason
    except Exception as exc:  # one bad video must not stop a multi-hour extraction
        return str(path), video_id, None, None, describe(exc)
    return str(path), video_id, meta, jpegs, None


def write_batch(env, batch) -> None:
    """Store finished videos in one transaction, doubling the map size whenever it is full."""
    import lmdb
    while True:
        try:
            with env.begin(write=True) as txn:
                for video_id, meta, jpegs in batch:
                    for i, jpeg in enumerate(jpegs):
                        txn.put(lmdb_format.frame_key(video_id, i), jpeg)
                    txn.put(lmdb_format.meta_key(video_id), lmdb_format.dumps(meta))  # last: marks it complete
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _build_info(args) -> dict:
    selection = ("fps", args.fps) if args.num_frames is None else ("num_frames", args.num_frames)
    return {"version": lmdb_format.FORMAT_VERSION, "selection": selection[0], "value": selection[1],
            "size": args.size, "quality": args.quality}


def _open_env(lmdb_path: Path, build: dict, map_size: int):
    """Open (or create) the LMDB; refuse to mix frames extracted with different settings."""
    import lmdb
    env = lmdb.open(str(lmdb_path), map_size=map_size, readahead=False, meminit=False)
    with env.begin(write=True) as txn:
        raw = txn.get(lmdb_format.BUILD_KEY)
        if raw is None:
            txn.put(lmdb_format.BUILD_KEY, lmdb_format.dumps(build))
        else:
            try:
                check_settings(lmdb_format.loads(raw), build, lmdb_path,
                               "rerun with the same settings or choose a new --lmdb_path")
            except SettingsMismatch:
                env.close()
                raise
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_root", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--lmdb_path", required=True, help="LMDB directory to create or resume")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fps", type=int, default=None, help="frames per second to store (default 1)")
    which.add_argument("--num_frames", type=int, default=None, help="store this many frames per video instead")
    parser.add_argument("--size", type=int, default=224, help="short side of stored frames; 0 keeps it (default 224)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="decoding processes (default: all cores)")
    parser.add_argument("--video_backend", default="auto", choices=["auto", "decord", "cv2", "pyav", "torchcodec"])
    parser.add_argument("--commit_every", type=int, default=64, help="videos per LMDB transaction")
    parser.add_argument("--map_size_mb", type=float, default=1024, help="initial map size; it grows as needed")
    parser.add_argument("--log", default=None, help="failure list (default LMDB_PATH/failed_videos.tsv)")
    parser.add_argument("--extensions", default=",".join(VIDEO_EXTENSIONS), help="comma-separated file endings")
    args = parser.parse_args(argv)
    if args.num_frames is None and args.fps is None:
        args.fps = 1

    lmdb_path = Path(args.lmdb_path)
    try:
        if (args.fps is not None and args.fps < 1) or (args.num_frames is not None and args.num_frames < 1):
            raise ValueError("--fps and --num_frames must be at least 1")
        if not 1 <= args.quality <= 100:
            raise ValueError(f"--quality must be within 1..100, got {args.quality}")
        backends = candidate_backends(args.video_backend)
        videos = list_videos(args.input_root, args.extensions.split(","))
        if not videos:
            raise ValueError(f"no video files ({args.extensions}) under {args.input_root}")
        env = _open_env(lmdb_path, _build_info(args), int(args.map_size_mb * 2**20))
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # Keys are file stems: two files with one stem would share keys, and neither is knowingly the one
    # the annotations mean, so both are refused.
    by_id = {}
    for path in videos:
        by_id.setdefault(path.stem, []).append(path)
    failures, todo, done_before = [], [], 0
    with env.begin() as txn:
        for video_id, paths in by_id.items():
            if len(paths) > 1:
                names = ", ".join(str(p) for p in paths)
                failures += [(str(p), f"duplicate video id {video_id!r} ({names}); rename all but one") for p in paths]
            elif txn.get(lmdb_format.meta_key(video_id)) is not None:
                done_before += 1
            else:
                todo.append(paths[0])

    job = functools.partial(extract, backends=backends, rate=args.fps, count=args.num_frames, size=args.size,
                            quality=args.quality)
    batch, extracted = [], 0
    try:
        for path, video_id, meta, jpegs, reason in run_parallel(job, todo, args.workers, "extracting"):
            if reason is not None:
                failures.append((path, reason))
                continue
            batch.append((video_id, meta, jpegs))
            extracted += 1
            if len(batch) >= args.commit_every:
                write_batch(env, batch)
                batch = []
        write_batch(env, batch)
    finally:
        env.sync()
        env.close()
    print(f"{extracted} videos extracted, {done_before} already in {lmdb_path}")
    report_failures(failures, len(videos), "failed", Path(args.log) if args.log else lmdb_path / "failed_videos.tsv")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
