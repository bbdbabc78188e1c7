"""Batched frame transforms: the whole clip goes through each step as one tensor.

Evaluation follows CLIP's preprocessing (bicubic resize of the short side, centre crop, mean/std) but
runs once per clip instead of once per frame through PIL. Training augmentation draws its parameters
once per clip, so every frame of a clip gets the same crop, flip and colour change.

Each transform is a :class:`ClipPlan` (crop, resize, flip, colour factors), drawn from the frame size
and the clip's random generator, then applied; the last step is either CLIP's normalisation to float32
or, with ``output="uint8"``, rounding to uint8. DataLoader workers of the training engine hand over
uint8 frames (a quarter of float32's bytes) and ``handover.finish_on_device`` converts and normalises them
on the device, inside ``engine.evaluate.to_device``; the batch's ``video_pixels`` field says which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from modules.components.pixels import PIXEL_STATISTICS as STATISTICS  # (CLIP's; ImageNet's for SimVTP)

CLIP_MEAN, CLIP_STD = STATISTICS["clip"]
OUTPUTS = ("float32", "uint8")  # what a transform returns: normalised frames, or 0..255 frames to normalise later
PIXELS_KEY = "video_pixels"  # batch field: "uint8/<statistics>" or "jpeg/<statistics>"; absent for float32 frames


def to_uint8_batch(frames) -> torch.Tensor:
    """uint8 (T, H, W, 3) array or tensor -> uint8 (T, 3, H, W) tensor (a view, no copy)."""
    if not isinstance(frames, torch.Tensor):
        frames = np.ascontiguousarray(frames)
        if not frames.flags.writeable:  # torch warns on read-only arrays (e.g. np.asarray(PIL image))
            frames = frames.copy()
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    return x.permute(0, 3, 1, 2)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic, antialiased resize of a uint8 (T, 3, H, W) batch.

    Resizing uint8 directly uses torch's vectorised uint8 kernel (about 20x faster than float on a 720p
    clip) and matches PIL's bicubic filter, which CLIP's preprocessing uses, to within one grey level.
    """
    if tuple(x.shape[-2:]) == (height, width):
        return x
    if x.device.type != "cpu":  # the uint8 antialiased kernel is CPU-only
        return resize_through_float(x, height, width)
    return F.interpolate(x.contiguous(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def resize_through_float(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """:func:`_resize` through float32 and back to uint8 (rounded), for devices without the uint8
    kernel; within one grey level of it."""
    y = F.interpolate(x.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (h, w) of torchvision's Resize(size): short side = size, long side truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def normalize(x: torch.Tensor, statistics: str = "clip") -> torch.Tensor:
    """0..255 (T, 3, H, W), uint8 or float -> float32 normalised with CLIP's (or ImageNet's) mean/std."""
    x = x.float()
    mean, std = STATISTICS[statistics]
    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255
    return x.sub_(mean).div_(std)


def finish(x: torch.Tensor, statistics: str = "clip", output: str = "float32") -> torch.Tensor:
    """The last step of a transform: normalised float32, or 0..255 values rounded to uint8."""
    if output == "uint8":
        return x if x.dtype == torch.uint8 else x.round().clamp_(0, 255).to(torch.uint8)
    if output != "float32":
        raise ValueError(f"unknown frame output {output!r}; choose one of {', '.join(OUTPUTS)}")
    return normalize(x, statistics)


@dataclass(frozen=True)
class ClipPlan:
    """How one clip becomes (T, 3, size, size): the ``box`` (top, left, height, width) of the source
    frames is resized to ``resized`` (h, w), the ``size`` square at ``offset`` (top, left) of that is
    kept, then flipped (``flip``) and colour-jittered (``jitter`` = brightness, contrast, saturation
    factors). It depends on the frame size and the clip's random draws only, so a worker can draw it
    and the device apply it (``--jpeg_decode device``)."""

    box: tuple[int, int, int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    size: int
    flip: bool = False
    jitter: tuple[float, float, float] | None = None

    def to_list(self) -> list[float]:
        return [*self.box, *self.resized, *self.offset, self.size, float(self.flip),
                *(self.jitter if self.jitter is not None else (float("nan"),) * 3)]

    @classmethod
    def from_list(cls, values) -> "ClipPlan":
        v = [float(x) for x in values]
        ints = [int(x) for x in v[:9]]
        jitter = None if math.isnan(v[10]) else (v[10], v[11], v[12])
        return cls(tuple(ints[0:4]), tuple(ints[4:6]), tuple(ints[6:8]), ints[8], bool(v[9]), jitter)


def eval_plan(height: int, width: int, size: int, crop: float = 0.5) -> ClipPlan:
    """CLIP's test preprocessing: short side resized to ``size``, then the square at ``crop`` along the
    long side (0 left/top, 0.5 centre, 1 right/bottom)."""
    h, w = short_side_size(height, width, size)
    return ClipPlan((0, 0, height, width), (h, w), (int(round((h - size) * crop)), int(round((w - size) * crop))), size)


def apply_plan(x: torch.Tensor, plan: ClipPlan, statistics: str = "clip", output: str = "float32") -> torch.Tensor:
    """uint8 (T, 3, H, W), on any device -> the clip ``plan`` describes (see :func:`finish`)."""
    top, left, height, width = plan.box
    x = _resize(x[:, :, top:top + height, left:left + width], *plan.resized)
    top, left = plan.offset
    x = x[:, :, top:top + plan.size, left:left + plan.size]
    if plan.flip:
        x = x.flip(-1)
    if plan.jitter is not None:
        x = _jitter(x.float(), *plan.jitter)
    return finish(x, statistics, output)


def eval_transform(frames, size: int, statistics: str = "clip", crop: float = 0.5,
                   output: str = "float32") -> torch.Tensor:
    """CLIP's test preprocessing on a whole clip: uint8 (T, H, W, 3) -> float32 (T, 3, size, size)
    (uint8 with ``output="uint8"``). ``crop`` places the square along the long side: 0 left/top,
    0.5 centre, 1 right/bottom."""
    x = to_uint8_batch(frames)
    return apply_plan(x, eval_plan(x.shape[-2], x.shape[-1], size, crop), statistics, output)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation strengths. Defaults are mild: retrieval captions describe the whole
    scene, so crops keep at least half the frame area."""
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


def sample_crop(height: int, width: int, rng: np.random.Generator, scale, ratio) -> tuple[int, int, int, int]:
    """A random resized crop box (top, left, h, w): area fraction in ``scale``, aspect in ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # No box fitted (extreme aspect ratio): the largest centred box inside the allowed ratios.
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _grey(x: torch.Tensor) -> torch.Tensor:
    # ITU-R 601 luma, the weights PIL uses for convert("L").
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def train_plan(height: int, width: int, size: int, rng: np.random.Generator,
               config: AugmentConfig = AugmentConfig()) -> ClipPlan:
    """Random resized crop, horizontal flip and colour jitter, drawn once for the whole clip."""
    top, left, h, w = sample_crop(height, width, rng, config.scale, config.ratio)
    flip = bool(rng.uniform() < config.flip_p)
    # Colour jitter in a fixed order; each factor is one draw shared by the clip.
    jitter = tuple(float(rng.uniform(max(0.0, 1 - s), 1 + s))
                   for s in (config.brightness, config.contrast, config.saturation))
    return ClipPlan((top, left, h, w), (size, size), (0, 0), size, flip, jitter)


def _jitter(x: torch.Tensor, b: float, c: float, s: float) -> torch.Tensor:
    x = (x * b).clamp_(0, 255)
    # One contrast pivot for the whole clip, so every frame gets the same affine colour map.
    mean = _grey(x).mean()
    x = (mean + c * (x - mean)).clamp_(0, 255)
    grey = _grey(x)
    return (grey + s * (x - grey)).clamp_(0, 255)


def train_transform(frames, size: int, rng: np.random.Generator, config: AugmentConfig = AugmentConfig(),
                    statistics: str = "clip", output: str = "float32") -> torch.Tensor:
    """Random resized crop, horizontal flip and colour jitter, drawn once and applied to every frame.
    With ``output="uint8"`` the jittered values are rounded (at most half a grey level)."""
    x = to_uint8_batch(frames)
    return apply_plan(x, train_plan(x.shape[-2], x.shape[-1], size, rng, config), statistics, output)


# ----------------------------------------------------------------------------------------------------
# On the device: what the workers handed over -> the model's input


def normalize_frames(video: torch.Tensor, video_mask: torch.Tensor, statistics: str = "clip") -> torch.Tensor:
    """uint8 frames (..., T, 3, H, W) as workers hand them over -> float32 normalised, on their device;
    padded frames (``video_mask`` 0) are exactly 0, as in frames normalised by the worker."""
    return normalize(video, statistics).masked_fill_(video_mask[..., None, None, None] == 0, 0)
