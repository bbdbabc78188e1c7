"""Key layout of the frame LMDB written by preprocess/frames_to_lmdb.py and read by the lmdb backend.

Keys (UTF-8):
  ``<video_id>_<i>``    JPEG bytes of stored frame i (i = 0 .. num_frames - 1, decimal, no padding;
                        the same naming as HMMC's frame2lmdb, so HMMC-style readers find the frames)
  ``<video_id>_meta``   JSON: num_frames, fps, width, height of the stored frames, plus the source
                        video's num_frames / fps and the source frame index of every stored frame
  ``__univtr_frames__`` JSON: how the LMDB was built (format version, selection rule, size, quality)
The meta key is written in the same transaction as the frames and after them, so a video with a meta
key is complete; that is what makes extraction resumable.
"""
from __future__ import annotations

import json

FORMAT_VERSION = 1
BUILD_KEY = b"__univtr_frames__"


def frame_key(video_id: str, index: int) -> bytes:
    return f"{video_id}_{index}".encode()


def meta_key(video_id: str) -> bytes:
    return f"{video_id}_meta".encode()


def dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def loads(raw: bytes):
    return json.loads(bytes(raw).decode())
