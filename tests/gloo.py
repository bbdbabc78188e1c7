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


def local_rows(batch: dict, env) -> dict:
    """This rank's equal share of a global batch: rows rank * B/W .. (rank + 1) * B/W of every tensor."""
    share = len(next(iter(batch.values()))) // env.world_size
    return {k: v[env.rank * share:(env.rank + 1) * share] for k, v in batch.items()}


def step_record(model, losses: dict) -> dict:
    """Back-propagates ``losses["loss"]``; the losses as floats and every gradient of ``model`` (DDP unwrapped)."""
    losses["loss"].backward()
    module = getattr(model, "module", model)
    return {"losses": {k: v.item() for k, v in losses.items()},
            "grads": {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}}


def assert_same_step(result: dict, single: dict, tolerance: float, *label) -> None:
    """A rank's ``step_record`` equals the single process's: each loss within ``tolerance`` x max(1, |loss|),
    the same gradients, each within ``tolerance`` x max(1, its largest entry) (fp32 sums taken in another
    order: per-rank parts, all-reduced, differ by a few ulps of the largest entry)."""
    for name, value in single["losses"].items():
        assert abs(result["losses"][name] - value) < tolerance * max(1.0, abs(value)), (*label, name,
                                                                                         result["losses"], value)
    assert result["grads"].keys() == single["grads"].keys()
    for name, grad in single["grads"].items():
        scale = max(1.0, grad.abs().max().item())
        assert (result["grads"][name] - grad).abs().max().item() <= tolerance * scale, (*label, name)
