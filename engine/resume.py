"""Continuing where a run stopped (after a signal, ``engine.preemption``, or a crash): ``--resume auto``
continues from ``<output_dir>/checkpoint_last.pt`` when it exists and starts fresh otherwise, so a
requeued or restarted job just continues; a checkpoint whose flags differ from the run's in anything that
changes the result stops the run with one line naming them (``--resume_allow_changes`` continues anyway
and says so in the log); and a run fails before any work when its output folder cannot take a checkpoint.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from engine.checkpoint import plain_args

log = logging.getLogger("univtr")

# Flags that do not change what a run computes: where things are, how they are read or reported.
# Every other flag must match for --resume (the method, backbone, batch, data, frames, precision...).
RESUME_NEUTRAL_FLAGS = frozenset({
    "output_dir", "resume", "resume_allow_changes", "config", "device", "num_thread_reader", "decode_threads",
    "n_display", "save_every_steps", "max_nonfinite_steps", "batch_size_val", "eval_tile_elements", "features_path",
    "pretrained_dir", "lmdb_path", "eval_features_path", "do_eval", "dsl", "dsl_temperature", "qb_norm",
    "qb_norm_betas", "qb_norm_topk", "qb_norm_min_hits", "qb_norm_bank_size", "legacy_metrics", "eval_query_subset",
    "verify_videos", "tensorboard", "compile", "video_backend", "init_model",
    # speed settings (engine.perf, the video loader's hand-over): the same computation, faster
    "no_compile", "no_tf32", "no_fused_adamw", "pin_memory", "persistent_workers", "prefetch_factor", "loader_frames",
    "jpeg_decode",
})


def resolve_resume(args, output_dir: Path | None) -> str | None:
    """The checkpoint to resume from: --resume PATH, or for --resume auto the output folder's
    checkpoint_last.pt when present (None: start fresh)."""
    if args.resume != "auto":
        return args.resume
    if output_dir is None:
        raise ValueError("--resume auto continues from <output_dir>/checkpoint_last.pt: give --output_dir")
    path = output_dir / "checkpoint_last.pt"
    if path.is_file():
        log.info("--resume auto: continuing from %s", path)
        return str(path)
    log.info("--resume auto: no %s yet, starting fresh", path)
    return None


def check_resume_flags(saved: dict, args, path: str) -> None:
    """One line naming every result-changing flag that differs from the checkpoint's."""
    now = plain_args(args)
    differ = sorted(k for k in saved.keys() | now.keys()
                    if k not in RESUME_NEUTRAL_FLAGS and saved.get(k) != now.get(k))
    if not differ:
        return
    listed = "; ".join(f"--{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ)
    if getattr(args, "resume_allow_changes", False):
        log.warning("--resume_allow_changes: continuing %s with other flags (%s); the result will not equal an "
                    "uninterrupted run's", path, listed)
        return
    raise ValueError(f"--resume {path}: the checkpoint was made with other flags that change the result: {listed} "
                     "(same flags, or --resume_allow_changes to continue anyway)")


def check_output_writable(output_dir: Path) -> None:
    """An existing --output_dir must take new files (log.txt first): one ValueError line before any
    work, for root on a read-only file system too (os.access sees EROFS)."""
    if os.access(output_dir, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(output_dir).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    why = "on a read-only file system" if read_only else "no write permission"
    raise ValueError(f"--output_dir {output_dir} is not writable ({why}); choose another folder")


def check_output_dir(output_dir: Path, model) -> None:
    """Before any work: the folder is writable and has room for a training checkpoint (the weights
    plus two AdamW moments per trainable parameter, and one spare copy while it is replaced)."""
    probe = output_dir / f".write_test{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--output_dir {output_dir} is not writable ({error.strerror or error}); choose another "
                         "folder") from None
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)
    needed = 2 * (weights + moments)
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise ValueError(f"--output_dir {output_dir} has {free / 2 ** 30:.2f} GiB free; a checkpoint of this model "
                         f"needs about {needed / 2 ** 30:.2f} GiB (written next to the previous one, then renamed): "
                         "free space or choose another folder")
