"""JPEG frames of the frame LMDB decoded on the GPU, a batch at a time (``--jpeg_decode device``).

A DataLoader worker reads a clip's stored JPEG frames and draws its :class:`ClipPlan` (crop, resize,
flip, colours) from the frame size in the LMDB's metadata, but decodes nothing: it hands over one
``bytes`` blob per clip (:func:`pack`). ``engine.evaluate.to_device`` then decodes every frame of the
batch in one ``torchvision.io.decode_jpeg`` call on the device (nvJPEG on CUDA), applies each clip's
plan there and normalises (:func:`decode_clips`). On a CPU device the same code decodes on the CPU,
which is what the tests run. Where decoding on the GPU is not possible (no CUDA, a torchvision without
its CUDA decoder, a backend other than the LMDB), ``resolve_jpeg_decode`` falls back to decoding in
the workers, as without the flag.
"""
from __future__ import annotations

import functools
import logging
import struct

import numpy as np
import torch

from .transforms import ClipPlan, apply_plan

MAGIC = b"UVJ1"
JPEG_START = b"\xff\xd8"
log = logging.getLogger("univtr")


def pack(jpegs: list[bytes], plan: ClipPlan) -> bytes:
    """One clip as bytes: magic, the plan, the frame lengths, then the JPEG files one after another."""
    values = np.asarray(plan.to_list(), dtype="<f8")
    lengths = np.asarray([len(j) for j in jpegs], dtype="<i8")
    return b"".join([MAGIC, struct.pack("<ii", len(values), len(jpegs)), values.tobytes(), lengths.tobytes(), *jpegs])


def unpack(blob: bytes) -> tuple[list[torch.Tensor], ClipPlan]:
    """(the JPEG files as uint8 tensors, the plan) of a :func:`pack`ed clip."""
    if blob[:4] != MAGIC:
        raise ValueError("not a packed clip of JPEG frames (was the batch made with --jpeg_decode device?)")
    num_values, count = struct.unpack_from("<ii", blob, 4)
    at = 12
    plan = ClipPlan.from_list(np.frombuffer(blob, "<f8", num_values, at))
    at += 8 * num_values
    lengths = np.frombuffer(blob, "<i8", count, at)
    at += 8 * count
    data = torch.frombuffer(bytearray(blob[at:]), dtype=torch.uint8)
    ends = np.cumsum(lengths).tolist()
    return [data[end - n:end] for n, end in zip(lengths.tolist(), ends)], plan


def decode_clips(blobs: list[bytes], video_mask: torch.Tensor, device, statistics: str = "clip") -> torch.Tensor:
    """Packed clips -> float32 (B, T, 3, S, S) normalised frames on ``device``; padded frames
    (``video_mask`` 0) are 0, exactly as the loader pads. All frames are decoded in one call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    clips = [unpack(blob) for blob in blobs]
    counts = [len(files) for files, _ in clips]
    given = video_mask.sum(-1).tolist()
    if counts != given:
        raise ValueError(f"packed clips hold {counts} frames, their masks mark {given}")
    files = [f for clip_files, _ in clips for f in clip_files]
    device = torch.device(device)
    decoded = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    size = clips[0][1].size
    # Zeros only pad short clips up to the mask's length (mask 0 there); a bad JPEG raised in decode_jpeg.
    out = torch.zeros(len(clips), video_mask.shape[-1], 3, size, size, device=device)
    start = 0
    for i, ((_, plan), count) in enumerate(zip(clips, counts)):
        out[i, :count] = apply_plan(torch.stack(decoded[start:start + count]), plan, statistics)
        start += count
    return out


def check_jpeg(buf) -> bytes | None:
    """The bytes of a stored frame, or None when it is missing or does not start like a JPEG file."""
    if buf is None or bytes(buf[:2]) != JPEG_START:
        return None
    return bytes(buf)


@functools.lru_cache(maxsize=None)
def cuda_decoder_works() -> bool:
    """True when torchvision decodes a JPEG on the current CUDA device (nvJPEG)."""
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg, encode_jpeg

        probe = encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8))
        return decode_jpeg([probe], device="cuda")[0].shape == (3, 16, 16)
    except Exception:  # a build without the CUDA decoder, a driver problem
        return False


def resolve_jpeg_decode(requested: str, device: str, lmdb: bool, views: tuple[int, int] = (1, 1)) -> str:
    """"device" when the batch's JPEG frames will be decoded on the GPU, else "cpu" (the workers decode),
    with one log line saying why when "device" was asked for and cannot be."""
    if requested != "device":
        return "cpu"
    why = None
    if not lmdb:
        why = "only frames of a frame LMDB (--video_backend lmdb) are JPEG files"
    elif tuple(views) != (1, 1):
        why = "multi-view testing (--test_num_segment / --test_num_crop) decodes in the workers"
    elif str(device) == "cpu" or not cuda_decoder_works():
        why = "no CUDA device with torchvision's JPEG decoder"
    if why is None:
        return "device"
    log.info("--jpeg_decode device: decoding in the DataLoader workers instead (%s)", why)
    return "cpu"
