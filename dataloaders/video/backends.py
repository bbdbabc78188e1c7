"""Decoder backends behind one reader interface.

Every reader exposes ``num_frames`` and ``fps`` right after opening (enough to choose indices), and
``get(indices)`` returns exactly those frames as uint8 RGB ``(len(indices), H, W, 3)``. A reader never
returns a blank frame for one it could not decode: it raises VideoDecodeError. Every file backend also
reads a video held in memory (:class:`VideoBytes`, e.g. from a tar shard) without a temporary file.

Frames come out in display orientation, as ffmpeg and players show them: a file tagged with a display
rotation (a phone video filmed upright) is turned by that rotation, and ``info()`` reports the turned
size. decord, OpenCV (``CAP_PROP_ORIENTATION_AUTO``) and torchcodec turn the frames themselves; the
PyAV reader turns them by each frame's display matrix.
"""
from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from . import lmdb_format
from .errors import EmptyVideoError, UnsupportedCodecError, VideoDecodeError, VideoNotFoundError, describe
from .jpeg_device import check_jpeg

# Fastest first, from benchmarks/bench_video_loading.py (docs/video.md): PyAV leads on B-frame video
# because it skips unwanted non-reference frames; the three are level on all-reference video. PyAV also
# decodes every codec of benchmarks/codec_matrix.py (AV1 too, which decord and OpenCV cannot).
# torchcodec is last because it has not been measured here. lmdb is never picked by auto unless an
# LMDB path is given, because it serves a different (pre-extracted) frame pool.
AUTO_ORDER = ("pyav", "decord", "cv2", "torchcodec")
FILE_BACKENDS = ("decord", "cv2", "pyav", "torchcodec")
ALL_BACKENDS = FILE_BACKENDS + ("lmdb",)


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


class VideoBytes:
    """A whole video file held in memory (a sample of a tar shard), readable by every file backend.
    ``name`` stands for the path in errors, e.g. ``000012.tar/video7.mp4``."""

    def __init__(self, data: bytes, name: str):
        self.data = data
        self.name = str(name)

    def __str__(self) -> str:
        return self.name


class Reader:
    """An open video. Subclasses set num_frames/fps in __init__ and implement _decode and _size."""

    name = "?"

    def __init__(self, path):
        self.source = path  # a path, or VideoBytes
        self.path = str(path)
        self.num_frames = 0
        self.fps = 0.0

    def _input(self, as_bytes: bool = False):
        """What the library opens: the path, or for VideoBytes a stream over them (``as_bytes``: the bytes).
        The stream is kept on the reader, since a library may read from it lazily."""
        if not isinstance(self.source, VideoBytes):
            return self.path
        self._stream = self.source.data if as_bytes else io.BytesIO(self.source.data)
        return self._stream

    def fail(self, reason: str, cls=VideoDecodeError) -> VideoDecodeError:
        return cls(self.path, f"{reason} [{self.name}]")

    def _check_opened(self):
        if self.num_frames <= 0:
            raise self.fail("the container reports no video frames", EmptyVideoError)

    def info(self) -> VideoInfo:
        width, height = self._size()
        return VideoInfo(int(self.num_frames), float(self.fps), int(width), int(height))

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 (T, H, W, 3) RGB."""
        indices = self._checked(indices)
        # Decode each distinct frame once, in file order, which is what decoders are fast at.
        wanted = sorted(set(indices))
        try:
            frames = self._decode(wanted)
        except VideoDecodeError:
            raise
        except Exception as exc:  # library errors (decord, av, cv2) become one typed error
            raise self.fail(f"decoding failed: {describe(exc)}") from exc
        if len(frames) != len(wanted):
            raise self.fail(f"decoder returned {len(frames)} frames for {len(wanted)} requested")
        position = {idx: k for k, idx in enumerate(wanted)}
        return np.stack([frames[position[i]] for i in indices])

    def _checked(self, indices: Sequence[int]) -> list[int]:
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("no frame indices requested")
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise ValueError(f"frame index {bad[0]} outside 0..{self.num_frames - 1} for {self.path}")
        return indices

    def _decode(self, wanted: list[int]):
        raise NotImplementedError

    def _size(self) -> tuple[int, int]:
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def upright(image: np.ndarray, degrees: float) -> np.ndarray:
    """``image`` (H, W, C) turned counter-clockwise by a display rotation of ``degrees`` (the angle of
    FFmpeg's display matrix, as ``av_display_rotation_get`` and PyAV's ``frame.rotation`` give it),
    rounded to a multiple of 90 degrees as ffmpeg's own autorotation does."""
    turns = int(round(float(degrees) / 90)) % 4
    return np.rot90(image, turns) if turns else image


# AVERROR_DECODER_NOT_FOUND, FFERRTAG(0xF8, 'D', 'E', 'C'): decord reports it as a number.
_DECODER_NOT_FOUND = str(-(0xF8 | ord("D") << 8 | ord("E") << 16 | ord("C") << 24))


def _missing_frame(reader: Reader, index: int) -> VideoDecodeError:
    return reader.fail(f"frame {index} of {reader.num_frames} could not be decoded "
                       "(the file is truncated or its frame count is wrong)")


class DecordReader(Reader):
    name = "decord"

    def __init__(self, path, threads: int = 1):
        super().__init__(path)
        import decord
        try:
            self._vr = decord.VideoReader(self._input(), ctx=decord.cpu(0), num_threads=threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
        except Exception as exc:
            if _DECODER_NOT_FOUND in str(exc):
                codec = codec_name(self.source)
                raise UnsupportedCodecError(self.path, f"decord's FFmpeg has no decoder for this file's {codec} "
                                            f"video [{self.name}]", codec=codec, backend=self.name) from exc
            raise self.fail(f"cannot open: {describe(exc)}") from exc
        self._check_opened()

    def _decode(self, wanted):
        return self._vr.get_batch(wanted).asnumpy()

    def _size(self):
        h, w = self._vr[0].shape[:2]
        return w, h

    def close(self):
        self._vr = None


class CV2Reader(Reader):
    name = "cv2"

    def __init__(self, path, threads: int = 1):
        super().__init__(path)
        import cv2
        self._cv2 = cv2
        cap = cv2.VideoCapture(self._input(), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, int(threads)])
        if not cap.isOpened():
            raise self.fail("OpenCV cannot open it (not a video, or a truncated container)")
        self._cap = cap
        # Frames and sizes in display orientation (OpenCV's default for FFmpeg, set here explicitly).
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        self.num_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = float(cap.get(cv2.CAP_PROP_FPS))
        self._check_opened()
        # Reading forward beats seeking for short gaps: a seek decodes from the previous keyframe
        # anyway. Four seconds covers typical keyframe intervals.
        self._seek_gap = max(16, int(4 * self.fps))
        self._next_pos = 0  # index the next read() returns; None when unknown

    def _decode(self, wanted):
        cv2, cap = self._cv2, self._cap
        out = []
        for target in wanted:
            gap = None if self._next_pos is None else target - self._next_pos
            self._next_pos = None
            if gap is None or gap < 0 or gap > self._seek_gap:
                cap.set(cv2.CAP_PROP_POS_FRAMES, target)
            else:
                for skipped in range(target - gap, target):
                    if not cap.grab():
                        raise _missing_frame(self, skipped)
            ok, frame = cap.read()
            if not ok or frame is None:
                raise _missing_frame(self, target)
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            self._next_pos = target + 1
        return out

    def _size(self):
        cv2 = self._cv2
        return int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))

    def close(self):
        if getattr(self, "_cap", None) is not None:
            self._cap.release()
            self._cap = None


class PyAVReader(Reader):
    """PyAV with keyframe-aware seeking: seek only when a keyframe lies between the current position
    and the next wanted frame, otherwise keep decoding forward."""

    name = "pyav"

    def __init__(self, path, threads: int = 1):
        super().__init__(path)
        import av
        try:
            self._container = av.open(self._input(), metadata_errors="ignore")
        except Exception as exc:
            raise self.fail(f"cannot open: {describe(exc)}") from exc
        if not self._container.streams.video:
            self.close()
            raise self.fail("the file has no video stream", EmptyVideoError)
        stream = self._stream = self._container.streams.video[0]
        stream.codec_context.thread_count = int(threads)
        try:
            # Open the decoder now, with skip_frame at its default: some decoders read skip_frame only when
            # they open (libdav1d, for AV1), and opened on a skipped packet they would drop every
            # non-reference frame of the file, wanted or not.
            stream.codec_context.open(strict=False)
        except Exception as exc:
            self.close()
            raise self.fail(f"cannot open the {stream.codec_context.name} decoder: {describe(exc)}") from exc
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self._rate = Fraction(rate) if rate else Fraction(0)
        self.fps = float(self._rate)
        self._time_base = Fraction(stream.time_base) if stream.time_base else None
        self._start = stream.start_time or 0
        self.num_frames = int(stream.frames or 0)
        if self.num_frames <= 0 and self._rate:
            # Containers without a frame count (mkv, webm): estimate from the duration.
            if stream.duration and self._time_base:
                seconds = stream.duration * self._time_base
            else:
                seconds = Fraction(self._container.duration or 0, 1_000_000)
            self.num_frames = int(round(seconds * self._rate))
        if not self._rate or self._time_base is None:
            self.close()
            raise self.fail("the video stream has no frame rate or time base")
        self._check_opened()
        self._keyframes = self._keyframe_indices()
        self._rotation = None  # display rotation of the decoded frames, known after the first one

    def _index_of(self, pts: int) -> int:
        return int(round((pts - self._start) * self._time_base * self._rate))

    def _pts_of(self, index: int) -> int:
        return int(self._start + Fraction(index) / self._rate / self._time_base)

    def _keyframe_indices(self) -> list[int] | None:
        try:
            entries = self._stream.index_entries
            keys = sorted({self._index_of(e.timestamp) for e in entries if e.is_keyframe})
        except Exception:
            return None
        return keys or None

    def _keyframe_before(self, index: int) -> int | None:
        if not self._keyframes:
            return None
        pos = np.searchsorted(self._keyframes, index, side="right") - 1
        return self._keyframes[pos] if pos >= 0 else 0

    def _seek(self, index: int):
        self._container.seek(max(self._start, self._pts_of(index)), stream=self._stream,
                             backward=True, any_frame=False)
        return self._frames()

    def _frames(self):
        """Decoded frames from the current position. A frame nobody asked for is dropped inside the
        decoder when no other frame refers to it (skip_frame NONREF), which halves the decoding work
        on typical B-frame video; frames that others depend on are always decoded."""
        ctx = self._stream.codec_context
        try:
            for packet in self._container.demux(self._stream):
                keep = packet.pts is None or self._index_of(packet.pts) in self._pending
                ctx.skip_frame = "DEFAULT" if keep else "NONREF"
                yield from packet.decode()
        finally:
            ctx.skip_frame = "DEFAULT"

    def _decode(self, wanted):
        out, frames, last = [], None, None
        from_start = False
        self._pending = set(wanted)
        for target in wanted:
            if frames is None:
                frames = self._seek(target)
            elif last is not None:
                key = self._keyframe_before(target)
                far = (key is not None and key > last + 1) or (key is None and target - last > 4 * self.fps)
                if far:
                    frames = self._seek(target)
            while True:
                frame = next(frames, None)
                if frame is None:
                    raise _missing_frame(self, target)
                if frame.pts is None:
                    raise self.fail("a frame has no timestamp; use another backend")
                idx = self._index_of(frame.pts)
                if idx < target:
                    continue
                if idx > target:
                    # The seek landed after the target (bad index); decode from the start once.
                    if from_start:
                        raise _missing_frame(self, target)
                    from_start = True
                    frames = self._seek(0)
                    continue
                # PyAV returns coded frames; turn them as the display matrix says (ffmpeg, players,
                # decord and OpenCV do), frame by frame since the side data travels with each frame.
                self._rotation = getattr(frame, "rotation", 0) or 0
                out.append(upright(frame.to_ndarray(format="rgb24"), self._rotation))
                self._pending.discard(idx)
                last = idx
                break
        return out

    def _size(self):
        if self._rotation is None:
            self.get([0])  # the display matrix comes with the frames
        ctx = self._stream.codec_context
        turned = int(round(self._rotation / 90)) % 2
        return (ctx.height, ctx.width) if turned else (ctx.width, ctx.height)

    def close(self):
        if getattr(self, "_container", None) is not None:
            self._container.close()
            self._container = None


class TorchCodecReader(Reader):
    name = "torchcodec"

    def __init__(self, path, threads: int = 1):
        super().__init__(path)
        from torchcodec.decoders import VideoDecoder
        try:
            self._dec = VideoDecoder(self._input(as_bytes=True), dimension_order="NHWC",
                                     num_ffmpeg_threads=int(threads), seek_mode="exact")
        except Exception as exc:
            raise self.fail(f"cannot open: {describe(exc)}") from exc
        meta = self._dec.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.fps = float(meta.average_fps or 0)
        self._wh = (int(meta.width or 0), int(meta.height or 0))
        self._check_opened()

    def _decode(self, wanted):
        # torchcodec (0.17 measured) applies the display rotation itself, and reports the turned size.
        return self._dec.get_frames_at(indices=list(wanted)).data.numpy()

    def _size(self):
        return self._wh


_LMDB_ENVS: dict = {}
_LMDB_LOCK = threading.Lock()  # an environment must not be opened twice in one process (thread pools probe)


def open_lmdb(lmdb_path) -> "lmdb.Environment":  # noqa: F821
    """One read-only environment per process (LMDB handles must not cross a fork)."""
    import lmdb
    key = (os.path.abspath(str(lmdb_path)), os.getpid())
    with _LMDB_LOCK:
        env = _LMDB_ENVS.get(key)
        if env is None:
            if not Path(lmdb_path).exists():
                raise FileNotFoundError(f"LMDB not found at {lmdb_path}; build it with preprocess/frames_to_lmdb.py")
            # A forked process (a DataLoader worker) inherits its parent's handle, which it must not use, and
            # lmdb refuses to open the same files twice in one process: close the inherited copy first (that
            # unmaps the child's mapping only; the parent's handle is untouched).
            for inherited in [k for k in _LMDB_ENVS if k[0] == key[0] and k[1] != key[1]]:
                _LMDB_ENVS.pop(inherited).close()
            env = lmdb.open(str(lmdb_path), readonly=True, lock=False, readahead=False, meminit=False,
                            max_readers=2048)
            _LMDB_ENVS[key] = env
    return env


def close_lmdb() -> None:
    """Close this process's cached LMDB handles (before rewriting an LMDB from the same process)."""
    with _LMDB_LOCK:
        for key in [k for k in _LMDB_ENVS if k[1] == os.getpid()]:
            _LMDB_ENVS.pop(key).close()


class LMDBReader(Reader):
    """Frames pre-extracted by preprocess/frames_to_lmdb.py, served by video id (the file stem)."""

    name = "lmdb"

    def __init__(self, path, lmdb_path=None):
        super().__init__(path)
        if lmdb_path is None:
            raise ValueError("the lmdb backend needs lmdb_path (--lmdb_path)")
        import cv2
        self._cv2 = cv2
        self.video_id = Path(self.path).stem
        self._env = open_lmdb(lmdb_path)
        with self._env.begin() as txn:
            raw = txn.get(lmdb_format.meta_key(self.video_id))
        if raw is None:
            raise self.fail(f"video id {self.video_id!r} is not in the LMDB at {lmdb_path} (extract it with "
                            "preprocess/frames_to_lmdb.py, or see that run's failed_videos.tsv)",
                            VideoNotFoundError)
        self.meta = lmdb_format.loads(raw)
        self.num_frames = int(self.meta["num_frames"])
        self.fps = float(self.meta["fps"])
        self._check_opened()

    def _decode(self, wanted):
        cv2, out = self._cv2, []
        with self._env.begin(buffers=True) as txn:
            for i in wanted:
                buf = txn.get(lmdb_format.frame_key(self.video_id, i))
                image = None if buf is None else cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
                if image is None:
                    raise self.fail(f"stored frame {i} is missing or not a JPEG; re-extract this video")
                out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return out

    def get_encoded(self, indices: Sequence[int]) -> list[bytes]:
        """The stored JPEG files of frames ``indices`` (any order, repeats allowed), not decoded
        (``--jpeg_decode device``: the GPU decodes them)."""
        out = []
        with self._env.begin(buffers=True) as txn:
            for i in self._checked(indices):
                jpeg = check_jpeg(txn.get(lmdb_format.frame_key(self.video_id, i)))
                if jpeg is None:
                    raise self.fail(f"stored frame {i} is missing or not a JPEG; re-extract this video")
                out.append(jpeg)
        return out

    def _size(self):
        return int(self.meta["width"]), int(self.meta["height"])


_READERS = {"decord": DecordReader, "cv2": CV2Reader, "pyav": PyAVReader, "torchcodec": TorchCodecReader}
_IMPORTS = {"decord": "decord", "cv2": "cv2", "pyav": "av", "torchcodec": "torchcodec.decoders", "lmdb": "lmdb"}
_AVAILABLE: dict[str, bool] = {}


def backend_available(name: str) -> bool:
    if name not in _AVAILABLE:
        try:
            __import__(_IMPORTS[name])
            _AVAILABLE[name] = True
        except Exception:  # a broken install (missing .so) counts as unavailable, like a missing one
            _AVAILABLE[name] = False
    return _AVAILABLE[name]


def available_backends() -> list[str]:
    return [name for name in ALL_BACKENDS if backend_available(name)]


def candidate_backends(backend: str, lmdb_path=None) -> list[str]:
    """Backends to try in order for ``backend`` (auto expands to every installed file backend)."""
    if backend == "auto":
        if lmdb_path is not None:
            return ["lmdb"]
        names = [b for b in AUTO_ORDER if backend_available(b)]
        if not names:
            raise RuntimeError("no video backend is installed; pip install decord opencv-python-headless av")
        return names
    if backend not in ALL_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose auto or one of {', '.join(ALL_BACKENDS)}")
    if not backend_available(backend):
        raise RuntimeError(f"video backend {backend!r} is not installed (module {_IMPORTS[backend]!r} "
                           "does not import); use --video_backend auto")
    return [backend]


def check_file(path) -> None:
    """Fail fast, with a precise reason, on a missing or 0-byte file before any decoder sees it."""
    if isinstance(path, VideoBytes):
        if not len(path.data):
            raise EmptyVideoError(path, "the video is empty (0 bytes)")
        return
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise VideoNotFoundError(path, "file not found (check --features_path and the file name)") from None
    except OSError as exc:
        raise VideoDecodeError(path, f"cannot stat the file: {describe(exc)}") from None
    if size == 0:
        raise EmptyVideoError(path, "the file is empty (0 bytes); re-download or re-encode it")


def open_reader(path, backend: str, threads: int = 1, lmdb_path=None) -> Reader:
    """Open ``path`` with exactly one named backend."""
    if backend == "lmdb":
        return LMDBReader(path, lmdb_path)
    check_file(path)
    return _READERS[backend](path, threads)


def codec_name(path) -> str:
    """The video codec of a file (``h264``, ``hevc``, ``av1``, ...) from its headers, read with PyAV;
    ``"unknown"`` when PyAV is missing or cannot open it. Nothing is decoded."""
    try:
        import av
        source = io.BytesIO(path.data) if isinstance(path, VideoBytes) else str(path)
        with av.open(source, metadata_errors="ignore") as container:
            return container.streams.video[0].codec_context.codec.canonical_name
    except Exception:
        return "unknown"


def first_frame(path, backend: str, threads: int = 1) -> str:
    """``"decodes"`` when ``backend`` opens ``path`` and decodes its first frame, ``"fails"`` when it opens
    the file but cannot decode that frame, ``"cannot open"`` otherwise (also when not installed)."""
    if not backend_available(backend):
        return "cannot open"
    try:
        reader = open_reader(path, backend, threads)
    except Exception:  # VideoDecodeError or a library crash
        return "cannot open"
    try:
        with reader:
            reader.get([0])
        return "decodes"
    except Exception:
        return "fails"


def codec_failure(path, backend: str, error: VideoDecodeError, threads: int = 1) -> UnsupportedCodecError | None:
    """After ``backend`` failed on ``path`` with ``error``: an UnsupportedCodecError naming the codec, the
    backend and the installed backends that decode the file, when the codec is what ``backend`` lacks.
    That is when the backend said so (decord: no decoder), or when it opens the file but cannot decode
    even its first frame while another backend can. A damaged file fails everywhere, at opening, or
    only after its first frame, and keeps its own error (None is returned)."""
    said_so = isinstance(error, UnsupportedCodecError)
    if not said_so and first_frame(path, backend, threads) != "fails":
        return None
    able = [b for b in FILE_BACKENDS if b != backend and first_frame(path, b, threads) == "decodes"]
    if not able and not said_so:
        return None
    codec = error.codec if said_so else codec_name(path)
    others = f"{', '.join(able)} can: use --video_backend auto or {able[0]}" if able else "no installed backend can"
    return UnsupportedCodecError(path, f"{backend} cannot decode this file's {codec} video (unsupported codec); "
                                       f"{others}", codec=codec, backend=backend, decoders=able)
