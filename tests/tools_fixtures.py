"""Shared by tests/test_tools_*.py: a tiny toy dataset and self-contained checkpoints of tiny models."""
from __future__ import annotations

from pathlib import Path

import torch


def make_toy(root) -> Path:
    from preprocess.make_toy_dataset import make_toy_dataset

    return make_toy_dataset(root, seed=0, num_train=12, num_test=6, size=32, fps=5, seconds=1.6, workers=1,
                            progress=False)


def model_argv(toy, out, *extra) -> list[str]:
    return ["--do_train", "--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos"),
            "--output_dir", str(out), "--pretrained_clip_name", "tiny", "--clip_init", "random",
            "--sim_header", "meanP", "--freeze_layer_num", "-1", "--batch_size", "4", "--batch_size_val", "8",
            "--max_frames", "4", "--image_resolution", "32", "--num_thread_reader", "0", "--lr", "1e-3",
            "--epochs", "1", "--n_display", "1", "--seed", "7", "--video_backend", "cv2", *extra]


def save_checkpoint(toy, path, *extra, seed: int = 0) -> Path:
    """A self-contained model_final.pt of a randomly initialised tiny model (no training needed)."""
    import main_task_retrieval
    from engine import checkpoint as ckpt
    from modules import build_model

    args = main_task_retrieval.get_args(model_argv(toy, Path(path).parent, *extra))
    torch.manual_seed(seed)
    return ckpt.save_model(path, build_model(args), args, epoch=0)
