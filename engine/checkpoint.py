"""Training checkpoints: written atomically, loaded with ``weights_only=True``, resumable exactly.

A checkpoint holds the model, optimiser, scheduler and grad-scaler states, every RNG state, the epoch,
the global step and the step inside the epoch, the flags and the code version. Together with the
deterministic data order (``engine.trainer.EpochSampler``) this makes a resumed run reproduce the
uninterrupted one.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from modules.clip.loading import CheckpointError  # one error type for every unreadable checkpoint

FORMAT = "univtr-train-v1"


def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((3, tuple(py[:-1]), None if py[-1] == -1 else py[-1]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``: a crash
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def plain_args(args) -> dict:
    """Flags as plain types (safe for weights_only loading)."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = [v if isinstance(v, (str, int, float, bool)) else str(v) for v in value]
        else:
            out[key] = str(value)
    return out


def save_training_state(path, *, model, optimizer, scheduler, scaler, epoch: int, step: int, step_in_epoch: int,
                        args, extra: dict | None = None) -> Path:
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "step_in_epoch": step_in_epoch,
        "rng": rng_state(),
        "args": plain_args(args),
        "code_version": code_version(),
        "extra": extra or {},
    }
    return atomic_save(state, path)


def load_training_state(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); "
                              "it may be truncated — resume from an earlier one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a UniVTR training checkpoint (use --init_model for model weights)")
    return state
