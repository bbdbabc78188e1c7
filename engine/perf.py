"""Speed settings applied once per run: backend switches (TF32 on CUDA) and torch.compile of the towers.

The trainer calls ``configure_backends`` after the process group is up and ``compile_model`` after the
model is built; neither changes what is computed on CPU.
"""
from __future__ import annotations

from engine.distributed import DistEnv


def configure_backends(args, env: DistEnv) -> None:
    """Process-wide backend switches for this run (nothing yet)."""


def compile_model(model, args, env: DistEnv) -> None:
    """torch.compile the two CLIP towers when ``--compile`` is given."""
    if getattr(args, "compile", False):
        model.clip.visual.compile()
        model.clip.text.compile()
