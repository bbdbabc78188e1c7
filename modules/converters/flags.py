"""The flags a checkpoint's weights imply, reconciled with the given flags before the model is built.

Implied: the method and its shape flags (each converter's ``implied_flags``), and the backbone (the
registered CLIP architecture whose tensor shapes match every CLIP tensor of the file: patch size,
widths, depths, resolution; ``--linear_patch 3d`` when the file has the 3-D patch). When the file holds
every CLIP tensor, CLIP is built from its architecture alone (``--clip_init random``) and then loaded:
no OpenAI file is needed.

"Given" means: the value differs from the flag's parser default (``remember_defaults`` records the
defaults when ``add_model_args`` builds the parser), or the flag is in the ``explicit`` set a caller that
knows the command line passes. A default value typed out on the command line is therefore
indistinguishable from no flag, and yields to the checkpoint with a log line. A given flag that differs
from what the weights imply is an error naming both; a flag not given is set, with a log line.
"""
from __future__ import annotations

import argparse
import functools
import logging
from typing import Any, Collection

from modules.clip import build_clip, list_architectures
from modules.clip.config import canonical_name, get_config
from modules.clip.loading import OPENAI_FILES, CheckpointError

from .registry import choose_converter
from .base import Conversion, ImpliedFlags
from .checkpoint import read_checkpoint

log = logging.getLogger(__name__)

_DEFAULTS: dict[str, Any] = {}
_MISSING = object()


def remember_defaults(parser: argparse.ArgumentParser) -> None:
    """Record the parser's defaults (called by ``modules.factory.add_model_args``)."""
    for action in parser._actions:
        if action.dest not in ("help", argparse.SUPPRESS):
            _DEFAULTS[action.dest] = parser.get_default(action.dest)


def _given(args, dest: str, explicit: Collection[str] | None) -> bool:
    if explicit is not None:
        return dest in explicit
    if dest not in _DEFAULTS:  # no parser recorded this flag (a namespace built by hand): it was set on purpose
        return hasattr(args, dest)
    return getattr(args, dest, _DEFAULTS[dest]) != _DEFAULTS[dest]


@functools.lru_cache(maxsize=None)
def _architecture_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_clip(name, device="meta").state_dict().items()}


def _display_name(architecture: str) -> str:
    """``ViT-B-32`` -> ``ViT-B/32`` (the spelling of the flag's default); other names as they are."""
    return next((name for name in OPENAI_FILES if canonical_name(name) == architecture), architecture)


def _is_architecture(value) -> bool:
    return isinstance(value, str) and canonical_name(value) in list_architectures()


def backbone_flags(conv: Conversion) -> tuple[ImpliedFlags, bool]:
    """(flags the CLIP tensors imply, whether the file holds every CLIP tensor of that architecture that the
    model uses: HMMC's Chinese model replaces the text tower, ``conv.not_needed``)."""
    clip = {k[len("clip."):]: tuple(v.shape) for k, v in conv.state.items() if k.startswith("clip.")}
    flags: ImpliedFlags = {}
    if clip.pop("visual.conv2.weight", None) is not None:
        flags["linear_patch"] = ("3d", "clip.visual.conv2.weight")
    if "visual.conv1.weight" not in clip:
        return flags, False
    for architecture in list_architectures():
        shapes = _architecture_shapes(architecture)
        if all(shapes[k] == shape for k, shape in clip.items() if k in shapes):  # extras: the load names them
            vision = get_config(architecture).vision
            why = f"CLIP tensor shapes: patch {vision.patch_size}, width {vision.width}, {vision.layers} blocks"
            flags["pretrained_clip_name"] = (_display_name(architecture), why)
            flags["image_resolution"] = (vision.image_size, why)
            unneeded = tuple(prefix[len("clip."):] for prefix in conv.not_needed if prefix.startswith("clip."))
            return flags, all(k in clip or k.startswith(unneeded) for k in shapes if k != "visual.conv2.weight")
    return flags, False  # an unregistered architecture: the shape check of the load speaks


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "(unset)" if value is None else str(value)


def _same(flag: str, current, value) -> bool:
    if flag == "pretrained_clip_name" and _is_architecture(current):
        return canonical_name(current) == canonical_name(value)
    return current == value


def apply_implied_flags(args, explicit: Collection[str] | None = None) -> list[str]:
    """Set the flags ``args.init_model``'s weights imply; a given flag that contradicts them is one
    ``CheckpointError`` line naming both. Returns the notes it also logs."""
    path = getattr(args, "init_model", None)
    if not path:
        return []
    state = read_checkpoint(path)
    converter = choose_converter(state, getattr(args, "init_format", None), path)
    conv = converter.to_ours(state)
    where = f"{path} ({converter.title} layout)"
    if conv.refusal:
        raise CheckpointError(f"{where}: {conv.refusal}")
    backbone, complete_clip = backbone_flags(conv)
    implied = {**backbone, **converter.implied_flags(conv, args)}
    conflicts, notes = [], []
    for flag, (value, why) in implied.items():
        if flag == "method":
            _reconcile_method(args, value, why, explicit, conflicts, notes)
            continue
        current = getattr(args, flag, _MISSING)
        if current is not _MISSING and _same(flag, current, value):
            continue
        if flag == "pretrained_clip_name" and current is not _MISSING and not _is_architecture(current):
            continue  # a file path: its shapes are checked against the checkpoint's when loading
        if current is not _MISSING and _given(args, flag, explicit):
            conflicts.append(f"--{flag} {_show(current)} given, the weights imply {_show(value)} ({why})")
        else:
            setattr(args, flag, value)
            notes.append(f"--{flag} {_show(value)} ({why})")
    if conflicts:
        raise CheckpointError(f"{where}: flags contradict the checkpoint: {'; '.join(conflicts)}")
    if complete_clip and _is_architecture(getattr(args, "pretrained_clip_name", None)) \
            and getattr(args, "clip_init", "pretrained") == "pretrained":
        args.clip_init = "random"
        notes.append("--clip_init random (the file holds every CLIP tensor: no --pretrained_clip_name file is read)")
    if notes:
        log.info("%s: flags from the weights: %s", where, "; ".join(notes))
    return notes


def _reconcile_method(args, value: str, why: str, explicit, conflicts: list[str], notes: list[str]) -> None:
    method = getattr(args, "method", None)
    head = method or getattr(args, "sim_header", None)
    if head == value:
        return
    if method and _given(args, "method", explicit):
        conflicts.append(f"--method {method} given, the weights are a {value} model ({why})")
    elif not method and _given(args, "sim_header", explicit):
        conflicts.append(f"--sim_header {head} given, the weights are a {value} model ({why})")
    else:
        args.method = value
        notes.append(f"--method {value} ({why})")
