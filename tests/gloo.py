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


# fp32 results of the same step taken in another order (per-rank halves then an all-reduce, another BLAS
# blocking for another batch size, another thread count) differ by rounding alone. A dot product of n fp32
# terms is off by at most about n * eps * (sum of |terms|); the tiny test models reduce over at most 64
# terms per op, so one op differs by <= 64 * 1.2e-7 ~ 8e-6 of the scale of its operands, and the few ops
# stacked in a step keep the observed gap well under this (1.4e-6 of the largest entry is the most seen,
# on the token embedding's gradient). A real bug (a gradient off by the world size, a dropped row) is
# orders of magnitude larger.
FP32_REORDER_TOLERANCE = 1e-5


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = FP32_REORDER_TOLERANCE,
                          *label) -> None:
    """Every entry within ``tolerance`` x max(1, largest |entry| of expected): rounding is relative to the
    tensor's scale, not to each entry (a near-zero entry is a sum of large terms that cancel)."""
    assert actual.shape == expected.shape, (*label, actual.shape, expected.shape)
    scale = max(1.0, expected.abs().max().item())
    gap = (actual.double() - expected.double()).abs().max().item()
    assert gap <= tolerance * scale, (*label, f"max difference {gap:.3g} > {tolerance:g} x {scale:.3g}")


def assert_same_step(result: dict, single: dict, tolerance: float = FP32_REORDER_TOLERANCE, *label) -> None:
    """A rank's ``step_record`` equals the single process's: each loss within ``tolerance`` x max(1, |loss|),
    the same gradients, each by ``assert_close_to_scale``."""
    for name, value in single["losses"].items():
        assert abs(result["losses"][name] - value) <= tolerance * max(1.0, abs(value)), (*label, name,
                                                                                          result["losses"], value)
    assert result["grads"].keys() == single["grads"].keys()
    for name, grad in single["grads"].items():
        assert_close_to_scale(result["grads"][name], grad, tolerance, *label, name)
