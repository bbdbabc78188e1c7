"""The device side of the workers' hand-over: frames that left the DataLoader workers as uint8 or as a
clip's JPEG bytes become normalised float32 frames on the training device (``engine.evaluate.to_device``
calls :func:`finish_on_device` for training and evaluation alike)."""
from __future__ import annotations

from .jpeg_device import decode_clips
from .transforms import PIXELS_KEY, normalize_frames


def finish_on_device(batch: dict, device) -> dict:
    """A collated batch already on ``device``: frames handed over as uint8 or as JPEG (its
    ``video_pixels`` field) become float32 normalised frames there; other batches are returned as they
    are. Called by ``engine.evaluate.to_device`` for training and evaluation alike."""
    tags = batch.pop(PIXELS_KEY, None)
    if tags is None:
        return batch
    tags = {tags} if isinstance(tags, str) else set(tags)
    if len(tags) != 1:
        raise ValueError(f"one batch mixes frame formats {sorted(tags)}")
    kind, _, statistics = next(iter(tags)).partition("/")
    if kind == "uint8":
        batch["video"] = normalize_frames(batch["video"], batch["video_mask"], statistics)
    elif kind == "jpeg":
        batch["video"] = decode_clips(batch["video"], batch["video_mask"], device, statistics)
    else:
        raise ValueError(f"unknown frame format {kind!r} in the batch's {PIXELS_KEY}")
    return batch
