"""Frame strips: a few frames of a video side by side, for result pages and figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def strip_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over the video (the middle of each of ``count`` parts)."""
    count = max(1, min(count, num_frames))
    return sorted({min(num_frames - 1, int((i + 0.5) * num_frames / count)) for i in range(count)})


def read_strip(path, count: int = 5, height: int = 72, backend: str = "auto"):
    """A PIL image of ``count`` evenly spaced frames of ``path``, each ``height`` pixels high.
    Raises VideoDecodeError when the video cannot be read."""
    from PIL import Image

    from dataloaders.video.backends import candidate_backends  # start-up
    from dataloaders.video.loader import with_reader  # start-up

    frames = with_reader(path, candidate_backends(backend), lambda r: r.get(strip_indices(r.num_frames, count)))
    return hstack([Image.fromarray(np.asarray(f)) for f in frames], height)


def hstack(images, height: int):
    from PIL import Image

    resized = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    out = Image.new("RGB", (sum(im.width for im in resized) + 2 * (len(resized) - 1), height), "white")
    x = 0
    for im in resized:
        out.paste(im, (x, 0))
        x += im.width + 2
    return out


def save_jpeg(image, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="JPEG", quality=85)
    tmp.replace(path)
    return path
