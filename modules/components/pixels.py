"""Pixels of a video as tubes (MAE reconstruction targets): patchify, unpatchify, normalised targets.

A tube is ``tubelet x patch x patch`` pixels of 3 channels. Tubes are ordered like the trunk's tokens
(t, h, w) and a tube's values are flattened as (p0, p1, p2, c): frame in tubelet, row, column,
then channel (channel last), which is the order of VideoMAE's pixel head.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Per-channel (mean, std) of pixels in [0, 1]: the statistics the video loader normalises with
# (dataloaders/video/transforms.py, --normalize); the targets undo exactly the one used.
PIXEL_STATISTICS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def patchify(video: Tensor, tubelet: int, patch: int) -> Tensor:
    """(B, T, 3, H, W) -> (B, N, tubelet·patch·patch, 3), N = (T/tubelet)(H/patch)(W/patch) in (t, h, w) order."""
    b, t, c, h, w = video.shape
    x = video.reshape(b, t // tubelet, tubelet, c, h // patch, patch, w // patch, patch)
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # b, t', h', w', p0, p1, p2, c
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch, c)


def unpatchify(tubes: Tensor, frames: int, size: int, tubelet: int, patch: int) -> Tensor:
    """Inverse of :func:`patchify`; ``tubes`` (B, N, P, 3) or flattened (B, N, P·3) -> (B, T, 3, H, W)."""
    b = tubes.shape[0]
    g, c = size // patch, 3
    x = tubes.reshape(b, frames // tubelet, g, g, tubelet, patch, patch, c)
    x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)  # b, t', p0, c, h', p1, w', p2
    return x.reshape(b, frames, c, size, size)


def unnormalise(video: Tensor, statistics: str = "imagenet") -> Tensor:
    """Loader-normalised frames (…, 3, H, W) back to [0, 1] pixels."""
    mean, std = (torch.tensor(v, dtype=video.dtype, device=video.device).view(3, 1, 1)
                 for v in PIXEL_STATISTICS[statistics])
    return video * std + mean


def tube_statistics(tubes: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(…, P, 3) -> per tube and channel: mean and (unbiased std + eps), each (…, 1, 3)."""
    return tubes.mean(dim=-2, keepdim=True), tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps


@torch.no_grad()
def pixel_targets(video: Tensor, tubelet: int, patch: int, statistics: str = "imagenet",
                  normalise: bool = True) -> Tensor:
    """VideoMAE's reconstruction target of every tube, (B, N, P·3) in fp32: the frames un-normalised
    to [0, 1], cut into tubes, and (``normalise``) each tube's channel standardised by its own mean and
    unbiased std (+1e-6)."""
    tubes = patchify(unnormalise(video.float(), statistics), tubelet, patch)
    if normalise:
        mean, std = tube_statistics(tubes)
        tubes = (tubes - mean) / std
    return tubes.flatten(2)
