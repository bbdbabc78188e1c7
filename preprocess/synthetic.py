"""Write real video files from numpy frames with Debian's ffmpeg (H.264 mp4 by default, any encoder
on request), and tag a file with a display rotation as phones do.

Used by the toy dataset generator, the benchmarks (codec table, loading, end to end) and the tests,
which need real containers decoded by real decoders rather than mocked readers.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np


def ffmpeg_binary() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg was not found on PATH; install it with `apt-get install ffmpeg`.")
    return path


def encode_video(path: str | Path, frames: np.ndarray, fps: float | Fraction, codec_args: Sequence[str],
                 muxer: str | None = None) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) at ``fps`` with ffmpeg output options ``codec_args`` (e.g.
    ``["-c:v", "libx265", "-pix_fmt", "yuv420p10le"]``) into ``muxer`` (default: from the file name).

    The file is written under a temporary name and renamed, so a crash never leaves a truncated file.
    """
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape}")
    _, h, w, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part" + path.suffix)
    cmd = [
        ffmpeg_binary(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{rate.numerator}/{rate.denominator}",
        "-i", "-", "-an", *codec_args, *(["-f", muxer] if muxer else []), str(tmp),
    ]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace').strip()}")
    tmp.replace(path)
    return path


def write_video(path: str | Path, frames: np.ndarray, fps: float | Fraction = 25, crf: int = 18) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) to an H.264 mp4 at ``fps`` (a float or an exact Fraction).

    H and W must be even (yuv420p). The file is written under a temporary name and renamed, so a
    crash never leaves a truncated mp4 behind.
    """
    shape = np.shape(frames)
    if len(shape) == 4 and (shape[1] % 2 or shape[2] % 2):
        raise ValueError(f"H.264 yuv420p needs even sizes, got {shape[2]}x{shape[1]}")
    return encode_video(path, frames, fps, ["-c:v", "libx264", "-preset", "ultrafast", "-crf", str(crf),
                                            "-pix_fmt", "yuv420p", "-g", "12"], muxer="mp4")


def make_clips(folder: Path, count: int, seconds: int, gop: int) -> list[Path]:
    """``count`` clips like raw MSR-VTT (320x240, 30 fps, H.264 with a keyframe every ``gop`` frames) of
    ``seconds`` each: ffmpeg's testsrc2 with temporal noise, so the encoder and decoders have real work,
    and a different hue per clip. Existing files are kept (the benchmarks' cache)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        path = folder / f"clip{i:03d}_{seconds}s_gop{gop}.mp4"
        if not path.exists():
            source = (f"testsrc2=size=320x240:rate=30:duration={seconds},"
                      f"noise=alls=12:allf=t+u:all_seed={i + 1},hue=h={37 * i}")
            tmp = path.with_name(path.name + ".part.mp4")
            subprocess.run([ffmpeg_binary(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", source,
                            "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-pix_fmt", "yuv420p",
                            str(tmp)], check=True)
            tmp.replace(path)
        clips.append(path)
    return clips


@functools.lru_cache(maxsize=None)
def _encoders() -> frozenset[str]:
    out = subprocess.run([ffmpeg_binary(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return frozenset(line.split()[1] for line in out.splitlines() if len(line.split()) > 1)


def has_encoder(name: str) -> bool:
    """Whether the installed ffmpeg has the encoder ``name`` (e.g. ``libaom-av1``)."""
    return name in _encoders()


def tag_display_rotation(src: str | Path, dst: str | Path, degrees: int) -> Path:
    """Copy ``src`` to ``dst`` (mp4/mov) without re-encoding, tagged with a display rotation of ``degrees``
    counter-clockwise, as a phone tags a video filmed upright: players, ffmpeg and the loader show the
    frames turned by that angle. ffmpeg 6 and later take ``-display_rotation``; older ones (Debian 12's
    5.1) write the same display matrix from the ``rotate`` stream tag, whose angle this ffmpeg reads as
    counter-clockwise too. Callers should check the result (e.g. ``av`` frame ``.rotation``)."""
    dst = Path(dst)
    base = [ffmpeg_binary(), "-y", "-loglevel", "error"]
    attempts = [
        base + ["-display_rotation:v:0", str(degrees), "-i", str(src), "-c", "copy", str(dst)],
        base + ["-i", str(src), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(dst)],
    ]
    errors = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return dst
        errors.append(proc.stderr.strip().splitlines()[-1:] or ["no message"])
    raise RuntimeError(f"ffmpeg could not tag {dst} with a display rotation: {errors}")


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


def oriented_frames(num_frames: int, height: int = 96, width: int = 64, seed: int = 0) -> np.ndarray:
    """:func:`gradient_frames` plus a dark block in the top-left corner, so every 90-degree rotation
    and every mirror of a frame differs from the frame itself and from the other frames (the moving
    bar alone turned by 180 degrees looks like another frame of the clip)."""
    frames = gradient_frames(num_frames, height, width, seed)
    block = max(4, min(height, width) // 4)
    frames[:, :block, :block] = (10, 10, 10)
    frames[:, :max(2, block // 3), block:] = (240, 40, 40)  # a red line along the top edge
    return frames


# Sample files of the codecs met in real datasets, for the codec table (benchmarks/codec_matrix.py) and
# the tests: name -> (file suffix, encoder choices in order of preference, each ffmpeg output options).
SAMPLE_CODECS: dict[str, tuple[str, list[list[str]]]] = {
    "H.264 (mp4)": (".mp4", [["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]]),
    "H.264 yuv444 (mp4)": (".mp4", [["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"]]),
    "HEVC 8-bit (mp4)": (".mp4", [["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-tag:v",
                                   "hvc1", "-x265-params", "log-level=error"]]),
    "HEVC 10-bit (mp4)": (".mp4", [["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                                    "-tag:v", "hvc1", "-x265-params", "log-level=error"]]),
    "VP9 (webm)": (".webm", [["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k",
                              "-pix_fmt", "yuv420p"]]),
    "AV1 (mp4)": (".mp4", [["-c:v", "libaom-av1", "-cpu-used", "8", "-crf", "30", "-pix_fmt", "yuv420p"],
                           ["-c:v", "libsvtav1", "-preset", "12", "-pix_fmt", "yuv420p"],
                           ["-c:v", "librav1e", "-speed", "10", "-pix_fmt", "yuv420p"]]),
    "MPEG-4 Part 2 (avi)": (".avi", [["-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p"]]),
}


def write_sample(path_stem: str | Path, frames: np.ndarray, fps: float, codec: str) -> Path | None:
    """``frames`` encoded as the SAMPLE_CODECS entry ``codec`` at ``path_stem`` + its suffix, with the first
    encoder the installed ffmpeg has; None when it has none of them."""
    suffix, choices = SAMPLE_CODECS[codec]
    for args in choices:
        if has_encoder(args[args.index("-c:v") + 1]):
            return encode_video(Path(path_stem).with_suffix(suffix), frames, fps, args)
    return None
