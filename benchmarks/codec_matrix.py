"""Which backend decodes which codec: a measured table for docs/video.md.

    python benchmarks/codec_matrix.py [--frames 20] [--only TEXT] [--keep DIR]

Every row is a small clip generated with the installed ffmpeg from a known pattern (a moving bar that
identifies each frame, a dark block in the top-left corner that shows the orientation): the codecs of
``preprocess.synthetic.SAMPLE_CODECS`` and an H.264 phone clip tagged with a 90-degree display rotation.
A row whose encoder this ffmpeg lacks says "encoder not available". Each installed backend opens the clip
as the loader does with ``--video_backend NAME`` and decodes every frame in one request, then four
frames out of order and not from the start (which makes it seek). A cell is "ok" when the frame count
is right and every frame is the one asked for, in display orientation; Δ is the mean absolute difference
to the source pattern in grey levels (0-255), the codec's own loss included. The ``ffmpeg`` column is
ffmpeg's own decode, the reference player; ``auto`` is the backend ``--video_backend auto`` uses.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dataloaders.video.backends import AUTO_ORDER, backend_available, candidate_backends  # noqa: E402
from dataloaders.video.errors import UnsupportedCodecError, VideoDecodeError  # noqa: E402
from dataloaders.video.loader import with_reader  # noqa: E402
from preprocess.synthetic import (  # noqa: E402
    SAMPLE_CODECS, ffmpeg_binary, oriented_frames, tag_display_rotation, write_sample)

FPS = 10
ROTATED = "H.264, 90° display rotation (mp4)"


def make_clips(root: Path, frames: np.ndarray, only: str = "") -> dict[str, Path | None]:
    names = [name for name in [*SAMPLE_CODECS, ROTATED] if only in name]
    clips = {name: write_sample(root / f"clip{i}", frames, FPS, name) for i, name in enumerate(names)
             if name != ROTATED}
    if ROTATED in names:
        stored = np.ascontiguousarray(np.rot90(frames, -1, axes=(1, 2)))  # turned clockwise, shown turned back
        raw = write_sample(root / "stored", stored, FPS, "H.264 (mp4)")
        clips[ROTATED] = tag_display_rotation(raw, root / "rotated.mp4", 90)
    return clips


def check(decoded: np.ndarray, wanted: list[int], source: np.ndarray) -> tuple[str | None, float]:
    """(problem or None, mean absolute difference) of decoded frames against the source frames ``wanted``."""
    if decoded.shape[1:] != source.shape[1:]:
        return f"size {decoded.shape[2]}x{decoded.shape[1]}, not {source.shape[2]}x{source.shape[1]}", 0.0
    diff = np.abs(decoded[:, None].astype(np.int16) - source[None].astype(np.int16)).reshape(
        len(decoded), len(source), -1).mean(-1)
    found = diff.argmin(1).tolist()
    if found != wanted:
        wrong = [(w, f) for w, f in zip(wanted, found) if w != f]
        return f"wrong frames (asked {wrong[0][0]}, got {wrong[0][1]})", 0.0
    return None, float(diff[np.arange(len(wanted)), wanted].mean())


def try_backend(path: Path, backend: str, source: np.ndarray) -> str:
    if not backend_available(backend):
        return "not installed"
    n = len(source)
    requests = [list(range(n)), [n - 3, 2, n // 2, n - 3]]

    def decode(reader):
        if reader.num_frames != n:
            return f"reports {reader.num_frames} frames, not {n}", 0.0
        worst = 0.0
        for wanted in requests:
            problem, delta = check(reader.get(wanted), wanted, source)
            if problem:
                return problem, 0.0
            worst = max(worst, delta)
        return None, worst

    try:
        problem, delta = with_reader(path, [backend], decode)
    except UnsupportedCodecError:
        return "fails: unsupported codec"
    except VideoDecodeError as exc:
        return f"fails: {exc.reason[:80]}"
    return problem or f"ok (Δ {delta:.1f})"


def ffmpeg_decode(path: Path, source: np.ndarray) -> str:
    proc = subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24",
                           "-"], capture_output=True)
    size = source[0].size
    if proc.returncode != 0 or len(proc.stdout) != size * len(source):
        return "fails"
    decoded = np.frombuffer(proc.stdout, np.uint8).reshape(source.shape)
    problem, delta = check(decoded, list(range(len(source))), source)
    return problem or f"ok (Δ {delta:.1f})"


def auto_backend(path: Path) -> str:
    def name(reader):
        reader.get([0])
        return reader.name

    try:
        return with_reader(path, candidate_backends("auto"), name)
    except VideoDecodeError:
        return "fails"


def versions() -> str:
    ffmpeg = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout.split()[2]
    parts = [f"ffmpeg {ffmpeg}"]
    for dist in ["av", "decord", "opencv-python-headless", "torchcodec"]:
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20, help="frames per clip (default 20, at 10 fps)")
    parser.add_argument("--only", default="", help="only the rows whose name holds this text, e.g. H.264")
    parser.add_argument("--keep", default=None, help="write the clips to this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    source = oriented_frames(args.frames, 96, 128, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        clips = make_clips(root, source, args.only)
        print(f"{datetime.date.today().isoformat()}; {versions()}; {args.frames} frames of 128x96 at {FPS} fps\n")
        print("| codec (container) | ffmpeg | " + " | ".join(AUTO_ORDER) + " | auto |")
        print("|---|---|" + "---|" * len(AUTO_ORDER) + "---|")
        for name, path in clips.items():
            if path is None:
                cells = ["encoder not available"] * (len(AUTO_ORDER) + 2)
            else:
                cells = [ffmpeg_decode(path, source)] + [try_backend(path, b, source) for b in AUTO_ORDER]
                cells.append(auto_backend(path))
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
