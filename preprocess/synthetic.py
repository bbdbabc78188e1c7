"""Write real H.264 mp4 files from numpy frames with Debian's ffmpeg.

Used by the toy dataset generator and by the tests, which need real containers decoded by real
decoders rather than mocked readers.
"""
from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np


def ffmpeg_binary() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg was not found on PATH; install it with `apt-get install ffmpeg`.")
    return path


def write_video(path: str | Path, frames: np.ndarray, fps: float | Fraction = 25, crf: int = 18) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) to an H.264 mp4 at ``fps`` (a float or an exact Fraction).

    H and W must be even (yuv420p). The file is written under a temporary name and renamed, so a
    crash never leaves a truncated mp4 behind.
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {w}x{h}")
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.mp4")
    cmd = [
        ffmpeg_binary(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{rate.numerator}/{rate.denominator}",
        "-i", "-", "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", str(crf),
        "-pix_fmt", "yuv420p", "-g", "12", str(tmp),
    ]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace').strip()}")
    tmp.replace(path)
    return path


def gradient_frames(num_frames: int, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """Frames whose content encodes the frame index (a bright bar moving left to right over a
    per-seed colour), so a test can tell which frames a reader returned."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 200, size=3, dtype=np.uint8)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = base
    bar = max(2, width // 16)
    for i in range(num_frames):
        x = int(round((width - bar) * (i / max(1, num_frames - 1))))
        frames[i, :, x:x + bar] = 255
    return frames
