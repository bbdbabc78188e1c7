"""torchrun / single-process set-up, feature gathering with gradients, and sharding helpers.

The contrastive loss is computed on features gathered from every rank, and every rank computes the
same global loss L. Parameters used after the gather (the logit scale, a cross encoder) therefore get
the full dL/dθ on every rank. For the encoders, the gather's backward sums the incoming gradient over
ranks (all-reduce) before taking the local slice, so rank r back-propagates W x dL/d(its features);
DDP's average over the W ranks then leaves exactly the gradient one process would compute on the
whole global batch, for every parameter. The tests check this against a single process to 1e-6.
"""
from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_minutes: int = 30) -> DistEnv:
    """Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK; NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        global _OWN_GROUP
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size, timeout=timeout,
                                store=_restart_store(world_size, rank, timeout))
        _OWN_GROUP = True
    return DistEnv(rank, world_size, local_rank, dev)


_OWN_GROUP = False  # whether init_distributed created the default group (a test's own group is left alone)


def close_distributed() -> None:
    """Destroy the process group init_distributed created. Left to interpreter exit, gloo's worker threads
    can be torn down unjoined ("terminate called without an active exception", SIGABRT after a finished
    run: seen in CI on 2 ranks). destroy_process_group only drops the registry's reference: a DDP reducer
    left in a reference cycle keeps the group (and its threads' pending work) alive until interpreter
    finalisation, so the garbage is collected first and the group then really goes here."""
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
    _OWN_GROUP = False


def _restart_store(world_size: int, rank: int, timeout) -> "dist.Store | None":
    """After a ``torchrun --max_restarts`` restart, the rendezvous keys of the dead attempt are still in
    the agent's store, and the new ranks would try to reach the old ones' addresses: give each attempt
    its own key prefix. None (the default env:// rendezvous) for a first attempt."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not attempt or "MASTER_ADDR" not in os.environ:
        return None
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=rank == 0 and not agent_store, timeout=timeout)
    return dist.PrefixStore(f"univtr/attempt{attempt}", store)


def env_from_group(device: torch.device = torch.device("cpu")) -> DistEnv:
    """The DistEnv of an already initialised process group (tests, notebooks)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv(device=device)
    return DistEnv(dist.get_rank(), dist.get_world_size(), 0, device)


def _all_gather_cat(x: Tensor) -> Tensor:
    """Every rank's equally shaped ``x``, concatenated on dim 0 in rank order (no autograd)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' ``x`` (equal shapes) concatenated on dim 0, differentiable (see the module docstring)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_features(features):
    """``gather_with_grad`` over a tensor or a tuple of tensors (the head's feature format)."""
    if isinstance(features, (tuple, list)):
        return tuple(gather_with_grad(f) for f in features)
    return gather_with_grad(features)


def all_reduce_flag(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks skip a bad step together)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shard_indices(total: int, env: DistEnv) -> list[int]:
    """This rank's contiguous share of range(total), padded by repeating the last index so every
    rank has the same count (gathered features are de-duplicated by index afterwards)."""
    per_rank = -(-total // env.world_size)
    start = env.rank * per_rank
    own = list(range(start, min(start + per_rank, total)))
    filler = own[-1] if own else total - 1
    return own + [filler] * (per_rank - len(own))


def gather_rows(x: Tensor, env: DistEnv) -> Tensor:
    """Concatenate equally sized per-rank tensors on every rank (no gradient)."""
    return _all_gather_cat(x) if env.distributed else x


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if not env.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
