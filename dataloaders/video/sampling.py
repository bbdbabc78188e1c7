"""Frame-index sampling: a pure function from (frame count, fps, options) to the indices to decode.

Choosing indices before decoding is what makes loading cheap: only the kept frames are decoded and
transformed, instead of CLIP4Clip's "decode and transform one frame per second, then subsample".
"""
from __future__ import annotations

import math

import numpy as np

MODES = ("clip4clip", "uniform", "rand", "stride", "head")
# What fills the slots of a clip with fewer frames than max_frames (see ``padded_slot_sources``).
PADDED_FRAMES = ("masked", "last_frame", "stretch")


def sample_indices(num_frames: int, fps: float, max_frames: int, mode: str = "clip4clip", *,
                   start: float | None = None, end: float | None = None,
                   feature_framerate: int = 1, slice_framepos: int = 2, frame_order: int = 0,
                   stride: int = 4, train: bool = False,
                   rng: np.random.Generator | None = None) -> list[int]:
    """Frame indices (into ``range(num_frames)``) to decode for one clip; at most ``max_frames`` of them.

    Modes:
      clip4clip  CLIP4Clip's rule: int(fps), ``feature_framerate`` frames per second at stride
                 int(fps) // feature_framerate from the start of each second, seconds from ``start``
                 to ``end`` inclusive, stopping at the last frame; then ``slice_framepos``
                 0 = head, 1 = tail, 2 = ``linspace(0, n - 1, max_frames)`` cast to int.
      uniform    the centre of each of ``max_frames`` equal segments (X-Pool's "uniform").
      rand       one random frame in each segment (TSN / X-Pool's "rand"); needs ``rng`` to be reproducible.
      stride     ``max_frames`` frames ``stride`` apart in one contiguous window (SimVTP/VideoMAE):
                 centred, or at a random position when ``train`` is true. Short videos shrink the stride.
      head       the first ``max_frames`` frames.
    ``start``/``end`` are seconds (DiDeMo, ActivityNet windows). ``frame_order`` 0 keeps time order,
    1 reverses it, 2 shuffles it (CLIP4Clip's ``--train_frame_order``). An empty list means the window
    holds no frame. Fewer than ``max_frames`` indices means the clip is short; the caller pads and masks.
    """
    if mode not in MODES:
        raise ValueError(f"unknown sample mode {mode!r}; choose one of {', '.join(MODES)}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if frame_order not in (0, 1, 2):
        raise ValueError(f"frame_order must be 0 (normal), 1 (reverse) or 2 (shuffle), got {frame_order}")
    if start is not None and end is not None and end < start:
        raise ValueError(f"window end {end} is before its start {start}")
    num_frames = int(num_frames)
    if num_frames <= 0:
        return []
    needs_rng = mode == "rand" or frame_order == 2 or (mode == "stride" and train)
    if needs_rng and rng is None:
        rng = np.random.default_rng()

    if mode == "clip4clip":
        indices = _clip4clip(num_frames, fps, max_frames, start, end, feature_framerate, slice_framepos)
    else:
        lo, hi = _window(num_frames, fps, start, end)
        if hi <= lo:
            return []
        if mode == "head":
            indices = list(range(lo, min(hi, lo + max_frames)))
        elif mode == "stride":
            indices = _stride(lo, hi, max_frames, stride, rng if train else None)
        else:
            edges = _segments(lo, hi, min(max_frames, hi - lo))
            if mode == "uniform":
                # Midpoint of each segment's first and last frame, as X-Pool computes it.
                indices = [(a + b - 1) // 2 for a, b in zip(edges[:-1], edges[1:])]
            else:
                indices = [int(rng.integers(a, b)) for a, b in zip(edges[:-1], edges[1:])]

    indices = [int(i) for i in indices]
    if frame_order == 1:
        indices.reverse()
    elif frame_order == 2:
        indices = [indices[i] for i in rng.permutation(len(indices))]
    return indices


def _clip4clip(num_frames, fps, max_frames, start, end, feature_framerate, slice_framepos) -> list[int]:
    # CLIP4Clip works in whole frames per second; a sub-1-fps file would divide by zero there.
    int_fps = max(1, int(fps))
    seconds_total = (num_frames + int_fps - 1) // int_fps
    first_sec, last_sec = 0, seconds_total
    if start is not None or end is not None:
        first_sec = max(0, start) if start is not None else 0
        last_sec = seconds_total if end is None or end > seconds_total else end
    if feature_framerate > 0:
        step = max(1, int_fps // feature_framerate)
        offsets = list(range(0, int_fps, step))[:feature_framerate]
    else:
        offsets = list(range(int_fps))

    candidates: list[int] = []
    # np.arange keeps CLIP4Clip's float-second behaviour for fractional window starts.
    for sec in np.arange(first_sec, last_sec + 1):
        base = int(sec * int_fps)
        for off in offsets:
            if base + off >= num_frames:
                break
            candidates.append(base + off)
        else:
            continue
        break  # CLIP4Clip stops at the first frame that does not exist

    if len(candidates) <= max_frames:
        return candidates
    if slice_framepos == 0:
        return candidates[:max_frames]
    if slice_framepos == 1:
        return candidates[-max_frames:]
    if slice_framepos != 2:
        raise ValueError(f"slice_framepos must be 0 (head), 1 (tail) or 2 (uniform), got {slice_framepos}")
    picks = np.linspace(0, len(candidates) - 1, num=max_frames, dtype=int)
    return [candidates[p] for p in picks]


def _segments(lo: int, hi: int, count: int) -> list[int]:
    """Boundaries of ``count`` near-equal segments of [lo, hi), in integer arithmetic (no float drift)."""
    length = hi - lo
    return [lo + (k * length) // count for k in range(count + 1)]


def _window(num_frames: int, fps: float, start: float | None, end: float | None) -> tuple[int, int]:
    """Frames whose timestamps fall in [start, end) seconds, as a half-open index range."""
    lo = 0 if start is None or fps <= 0 else max(0, int(math.floor(start * fps)))
    hi = num_frames if end is None or fps <= 0 else min(num_frames, int(math.ceil(end * fps)))
    if end is not None and hi <= lo < num_frames:
        hi = lo + 1  # a zero-length window (start == end) still names one frame
    return min(lo, num_frames), hi


def _stride(lo: int, hi: int, max_frames: int, stride: int, rng) -> list[int]:
    length = hi - lo
    if length <= max_frames:
        return list(range(lo, hi))
    # Shrink the stride until max_frames frames fit, rather than padding a short clip.
    step = max(1, min(stride, (length - 1) // (max_frames - 1) if max_frames > 1 else stride))
    span = (max_frames - 1) * step + 1
    slack = length - span
    first = lo + (int(rng.integers(0, slack + 1)) if rng is not None else slack // 2)
    return [first + k * step for k in range(max_frames)]


def padded_slot_sources(count: int, slots: int, fill: str) -> list[int]:
    """Which of a short clip's ``count`` frames each of its ``slots`` holds under ``--padded_frames``.

    masked      the frames once; the caller pads with zeros under video mask 0 (every head hides them).
    last_frame  frames 0..count-1, then copies of the last one: DGL's loader (its indices are
                ``clip(arange(slots), 0, count - 1)``).
    stretch     slot j holds frame floor(j * count / slots): every frame repeated in time order, as HMMC's
                ``linspace(0, N, slots, endpoint=False)`` pick among N stored frames repeats them when N < slots.
    The filled modes give every slot a real frame, so the mask is all ones and a model reads all of them,
    as those authors' models do."""
    if fill not in PADDED_FRAMES:
        raise ValueError(f"unknown --padded_frames {fill!r}; choose one of {', '.join(PADDED_FRAMES)}")
    if fill == "masked" or count >= slots or count == 0:
        return list(range(min(count, slots)))
    if fill == "last_frame":
        return [min(j, count - 1) for j in range(slots)]
    return [j * count // slots for j in range(slots)]
