"""Typed errors for video reading.

A loader that cannot read a video raises one of these instead of handing zeros to the model: CLIP4Clip
returns an all-zero clip for an unreadable file, and the zero vector later becomes NaN after L2
normalisation and poisons every rank's loss.
"""
from __future__ import annotations

import re

# decord prefixes messages with "[hh:mm:ss] /path/to/source.cc:123: "
_SOURCE_PREFIX = re.compile(r"^\[[0-9:]+\]\s+\S+:\d+:\s*")


class VideoDecodeError(Exception):
    """A video could not be read. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(self.path, self.reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):
        # Keep (path, reason) through pickling, so errors raised in DataLoader workers and
        # multiprocessing pools arrive intact in the main process.
        return (type(self), (self.path, self.reason))


class VideoNotFoundError(VideoDecodeError):
    """The file (or, for the lmdb backend, the video id) does not exist."""


class EmptyVideoError(VideoDecodeError):
    """The file exists but is 0 bytes or has no video frames."""


class EmptyWindowError(VideoDecodeError):
    """The requested start/end window holds no frame of the video (an annotation problem)."""


class UnsupportedCodecError(VideoDecodeError):
    """The file is readable, but this backend cannot decode its video codec (e.g. AV1 with OpenCV or
    decord). ``codec`` is the codec's name, ``backend`` the backend that failed and ``decoders`` the
    installed backends that do decode the file; ``auto`` moves on to those."""

    def __init__(self, path, reason: str, codec: str = "unknown", backend: str = "?", decoders=()):
        super().__init__(path, reason)
        self.codec = str(codec)
        self.backend = str(backend)
        self.decoders = tuple(decoders)

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.codec, self.backend, self.decoders))


def describe(exc: BaseException) -> str:
    """One short line for a library exception (decord's messages carry a C++ backtrace)."""
    text = str(exc).strip().splitlines()
    first = _SOURCE_PREFIX.sub("", text[0] if text else "")[:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
