import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Tests never touch a GPU or the network.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def make_video(tmp_path):
    """Factory: make_video(name, num_frames=30, fps=25, size=(64, 96), seed=0) -> Path of a real H.264 mp4."""
    from preprocess.synthetic import gradient_frames, write_video

    def _make(name="clip.mp4", num_frames=30, fps=25, size=(64, 96), seed=0, directory=None):
        h, w = size
        out = Path(directory or tmp_path) / name
        return write_video(out, gradient_frames(num_frames, h, w, seed), fps)

    return _make
