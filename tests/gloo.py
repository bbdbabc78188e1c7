"""Shared by the 2-rank tests: CPU gloo groups joined through a file rendezvous under tmp_path (no free port needed)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.distributed import DistEnv


def _join(rank, world_size, rendezvous, out_dir, work, args):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        work(DistEnv(rank, world_size, 0, torch.device("cpu")), out_dir, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(work, tmp_path, *args, world_size=2):
    """Spawn world_size processes that each call work(env, str(tmp_path), *args); work must be module-level."""
    mp.spawn(_join, args=(world_size, str(tmp_path / "rendezvous"), str(tmp_path), work, args), nprocs=world_size,
             join=True)
