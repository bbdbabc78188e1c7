"""Reading checkpoint files and loading a conversion into a model with every tensor accounted for.

``read_checkpoint`` accepts what ``modules.clip.loading.read_state_dict`` reads (pickles and ``.pth.tar``
archives with ``weights_only=True``, TorchScript, safetensors, Hugging Face folders) and DeepSpeed's checkpoint
folders, unwraps the entries the seeds' training scripts keep the weights under (``WRAPPERS``), strips DDP's
``module.`` prefix, and keeps the last file in memory so that the flag inference and the load read it once.

``plan_load`` compares a conversion with a model's state dict (real or on the meta device) and lists
whatever is left on either side; ``load_into_model`` raises them as one ``CheckpointError`` line or loads,
casting floating tensors (fp16 files) to the model's dtypes, and logs what was mapped and dropped.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from modules.clip.loading import CheckpointError, read_state_dict

from .registry import choose_converter
from .base import Conversion, group_of

log = logging.getLogger(__name__)

# Entries that hold the weights in training checkpoints: DGL's ckpt.best.pth.tar ("state_dict"), SimVTP's
# checkpoint-N.pth ("model"), DeepSpeed's mp_rank_00_model_states.pt ("module"), T2VLP's pytorch_model.bin.N
# ("model_state_dict", beside "global_step" and "optim_state_dict"). CLIP4Clip and HMMC save the bare state dict.
WRAPPERS = ("state_dict", "model", "module", "model_state_dict")
# DeepSpeed's save_checkpoint writes <dir>/<tag>/mp_rank_00_model_states.pt and the last tag to <dir>/latest.
DEEPSPEED_WEIGHTS, DEEPSPEED_LATEST = "mp_rank_00_model_states.pt", "latest"
PRETRAIN_ONLY = "tensors that only pre-training uses"  # the log wording of our own pre-training runs
_cache: dict[tuple, dict[str, Tensor]] = {}


def _numpy_scalars():
    """Training scripts store numpy scalars beside the weights (best R@1, epoch): allowed under
    weights_only (under numpy 1's and numpy 2's module names), as PyTorch's documentation suggests; so is
    the run's ``argparse.Namespace``, which VideoMAE-derived scripts (SimVTP's) save as ``args``.
    Anything else still refuses to unpickle."""
    import argparse

    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")]
    return torch.serialization.safe_globals([(scalar, "numpy.core.multiarray.scalar"),
                                             (scalar, "numpy._core.multiarray.scalar"), np.dtype, *dtypes,
                                             argparse.Namespace])


def _key(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def read_checkpoint(path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file or folder, unwrapped, without DDP's ``module.`` prefix."""
    path = deepspeed_weights(Path(path))
    if not path.exists():
        raise CheckpointError(f"--init_model {path}: no such file")
    key = _key(path)
    if key not in _cache:
        with _numpy_scalars():
            state, _, _ = read_state_dict(path)
        _cache.clear()
        _cache[key] = unwrap(state, path)
    return _cache[key]


def deepspeed_weights(path: Path) -> Path:
    """The weights file of a DeepSpeed checkpoint folder (a tag's folder, or the run folder whose ``latest``
    names the tag); any other path unchanged."""
    if not path.is_dir():
        return path
    if (path / DEEPSPEED_WEIGHTS).is_file():
        return path / DEEPSPEED_WEIGHTS
    latest = path / DEEPSPEED_LATEST
    if latest.is_file() and (path / latest.read_text().strip() / DEEPSPEED_WEIGHTS).is_file():
        return path / latest.read_text().strip() / DEEPSPEED_WEIGHTS
    return path


def forget_checkpoints() -> None:
    _cache.clear()


def unwrap(obj, path) -> dict[str, Tensor]:
    while isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (entries: {', '.join(map(str, list(obj)[:8]))})")
    others = sorted(str(k) for k in obj if k not in tensors)
    if others:
        log.info("%s: %d entries beside the weights are not tensors and are ignored: %s", path, len(others),
                 names(others))
    if all(k.startswith("module.") for k in tensors):  # saved from a DistributedDataParallel wrapper
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def names(keys, shown: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:shown]) + (f" ... ({len(keys)} in all)" if len(keys) > shown else "")


def _index_buffer(value: Tensor) -> bool:
    """An arange buffer (``position_ids``): derived from shapes, never learned."""
    if value.is_meta:
        return True
    flat = value.flatten()
    return not flat.is_floating_point() and torch.equal(flat, torch.arange(flat.numel(), device=flat.device))


@dataclass
class LoadPlan:
    """What a conversion gives a model: the tensors to load and every leftover, on either side."""

    tensors: dict[str, Tensor]
    extra: list[str] = field(default_factory=list)  # checkpoint tensors with no place in the model
    clip_missing: list[str] = field(default_factory=list)
    head_missing: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)  # "key (checkpoint shape) vs (model shape)"
    fresh_3d_patch: bool = False  # --linear_patch 3d from a 2-D checkpoint: conv2 starts from conv1
    head_in_file: bool = False

    def groups(self) -> Counter:
        """Tensors to load by log group (CLIP tower or head module); what plan_load dropped is not counted."""
        return Counter(group_of(key) for key in self.tensors)

    @property
    def head_fresh(self) -> bool:
        """A checkpoint with no head tensor at all (CLIP only): the head's modules start fresh."""
        return bool(self.head_missing) and not self.head_in_file

    def problems(self, head: str) -> list[str]:
        out = []
        if self.extra:
            out.append(f"{len(self.extra)} checkpoint tensors have no place in the {head} model being built (wrong "
                       f"--method or head flags?): {names(self.extra)}")
        if self.clip_missing:
            out.append(f"{len(self.clip_missing)} backbone tensors (clip.*) are not in the checkpoint and would keep their initial "
                       f"values: {names(self.clip_missing)}")
        if self.head_missing and self.head_in_file:
            out.append(f"{len(self.head_missing)} tensors of the {head} head being built are not in the checkpoint "
                       f"(different head flags, e.g. --cross_num_hidden_layers, --max_frames, prompt lengths?): "
                       f"{names(self.head_missing)}")
        if self.shapes:
            out.append(f"{len(self.shapes)} tensors differ in shape, checkpoint vs model (backbone or head flags?): "
                       f"{names(self.shapes, 4)}")
        return out


def plan_load(own: Mapping[str, Tensor], conv: Conversion, pretrain_only_prefixes=()) -> LoadPlan:
    """Match a conversion against a model's state dict; ``conv.dropped`` receives what is left out by rule."""
    tensors = dict(conv.state)
    for key in [k for k in tensors if k not in own]:
        if key.rsplit(".", 1)[-1] == "position_ids" and _index_buffer(tensors[key]):
            conv.drop("index buffers (rebuilt from the shapes)", key)
            tensors.pop(key)
        elif pretrain_only_prefixes and key.startswith(tuple(pretrain_only_prefixes)):
            conv.drop(PRETRAIN_ONLY, key)
            tensors.pop(key)
    plan = LoadPlan(tensors, extra=sorted(conv.unexplained) + sorted(k for k in tensors if k not in own))
    optional = ("position_ids",)
    missing = [k for k in own if k not in tensors and not k.endswith(optional)
               and not k.startswith(tuple(conv.not_needed))]
    if "clip.visual.conv2.weight" in missing:
        missing.remove("clip.visual.conv2.weight")
        plan.fresh_3d_patch = True
    plan.clip_missing = [k for k in missing if k.startswith("clip.")]
    plan.head_missing = [k for k in missing if not k.startswith("clip.")]
    plan.head_in_file = any(not k.startswith("clip.") for k in tensors)
    plan.shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in tensors.items()
                   if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return plan


def load_into_model(model, path, init_format: str | None = None) -> LoadPlan:
    """Load ``path`` (any registered layout) into ``model``; one ``CheckpointError`` line when anything of
    the checkpoint or of the model would be left out, never a silent partial load."""
    state = read_checkpoint(path)
    forget_checkpoints()  # the model is about to hold the weights: do not keep a second copy
    converter = choose_converter(state, init_format, path)
    how = "forced by --init_format" if init_format and init_format != "auto" else "detected"
    where = f"{path} ({converter.title} layout, {how})"
    conv = converter.to_ours(state)
    if conv.refusal:
        raise CheckpointError(f"{where}: {conv.refusal}")
    own = model.state_dict()
    if hasattr(model, "optional_in_checkpoint"):  # modules a head starts as built when a checkpoint lacks them
        conv.not_needed.update(model.optional_in_checkpoint(conv.state))
    plan = plan_load(own, conv, getattr(model, "pretrain_only_prefixes", ()))
    problems = plan.problems(model.head_name)
    if problems:
        raise CheckpointError(f"{where}: not loaded: {'; '.join(problems)}")
    casts = {}
    for key, value in plan.tensors.items():
        if value.is_floating_point() and value.dtype != own[key].dtype:
            casts[str(value.dtype)] = casts.get(str(value.dtype), 0) + 1
            plan.tensors[key] = value.to(own[key].dtype)
    model.load_state_dict(plan.tensors, strict=False)
    groups = ", ".join(f"{group} {count}" for group, count in sorted(plan.groups().items()) if count)
    log.info("%s: %d tensors mapped (%s)", where, len(plan.tensors), groups)
    for reason, keys in conv.dropped.items():
        if not keys:
            continue
        if reason == PRETRAIN_ONLY:  # the wording the pre-training docs and tests quote
            modules = ", ".join(sorted({k.split(".")[0] for k in keys}))
            log.info("%s: dropped %d %s (%s)", path, len(keys), reason, modules)
        else:
            log.info("%s: dropped %d %s: %s", path, len(keys), reason, names(keys, 4))
    for note in conv.notes:
        log.info("%s: %s", path, note)
    for dtype, count in casts.items():
        log.info("%s: %d %s tensors converted to the model's dtype", path, count, dtype.replace("torch.", ""))
    for prefix, why in conv.not_needed.items():
        log.info("%s: %s* not in the checkpoint: %s", path, prefix, why)
    if plan.fresh_3d_patch:
        model.clip.visual.enable_3d_patch()  # starts equal to the loaded conv1
        log.info("%s: no 3-D patch weights; --linear_patch 3d starts from the checkpoint's conv1", path)
    if plan.head_fresh:
        fresh = sorted({k.split(".")[0] for k in plan.head_missing})
        log.info("%s: a CLIP checkpoint without %s head weights; these start fresh: %s", path, model.head_name,
                 ", ".join(fresh))
    return plan
