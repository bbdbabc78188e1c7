"""Checkpoint converters: the seed repositories' released weights load into this project's models.

One module per layout registers a ``Converter`` (``base.py``): ``ours`` (this project, plain CLIP),
``clip4clip``, ``dgl``, ``hmmc``, ``t2vlp``, ``simvtp``. ``--init_format auto`` (the default) picks the layout
by recognising the key set: every converter whose marker tensors are present converts the checkpoint, and the
one that accounts for the largest share of its tensors wins (a tie is an error that asks for ``--init_format``).
Adding a layout is one module here that registers itself, plus its name in ``LAYOUTS``.

``checkpoint.py`` reads files (``state_dict``/``model`` wrappers, DDP ``module.`` prefixes, ``.pth.tar``,
``weights_only=True``) and loads a conversion into a model with every tensor accounted for;
``flags.py`` reconciles the flags the weights imply with the given ones before the model is built.
"""
from __future__ import annotations

import importlib
from typing import Mapping

from torch import Tensor

from modules.clip.loading import CheckpointError

from .base import CONVERTERS, Conversion, Converter, ImpliedFlags, Layout, Reshape, register_converter

LAYOUTS = ("ours", "clip4clip", "dgl", "hmmc", "t2vlp", "simvtp")
for _module in LAYOUTS:
    importlib.import_module(f"{__name__}.{_module}")


def list_formats() -> list[str]:
    return list(CONVERTERS)


def get_converter(name: str) -> Converter:
    if name not in CONVERTERS:
        raise CheckpointError(f"--init_format {name!r}: one of auto, {', '.join(CONVERTERS)}")
    return CONVERTERS[name]


def detect(state: Mapping[str, Tensor]) -> list[tuple[float, Converter]]:
    """(share of the tensors explained, converter) for every layout whose markers are present, best first."""
    keys = list(state)
    found = [(c.to_ours(state).explained, c) for c in CONVERTERS.values() if c.matches(keys)]
    return sorted(found, key=lambda pair: -pair[0])


def choose_converter(state: Mapping[str, Tensor], init_format: str | None, path) -> Converter:
    """The converter ``--init_format`` names, or the detected one; one-line errors otherwise."""
    if init_format and init_format != "auto":
        return get_converter(init_format)
    found = detect(state)
    if not found:
        first = ", ".join(sorted(state)[:6])
        raise CheckpointError(f"{path}: unrecognised checkpoint layout (first keys: {first}); known layouts: "
                              f"{', '.join(CONVERTERS)}; --init_format forces one")
    best = found[0][0]
    tied = [c.name for share, c in found if share == best]
    if len(tied) > 1:
        raise CheckpointError(f"{path}: the layouts {' and '.join(tied)} both explain {best:.0%} of the checkpoint; "
                              "choose one with --init_format")
    return found[0][1]


from .checkpoint import load_into_model, plan_load, read_checkpoint  # noqa: E402  (they use the registry)
from .flags import apply_implied_flags, remember_defaults  # noqa: E402

__all__ = ["CONVERTERS", "LAYOUTS", "Conversion", "Converter", "ImpliedFlags", "Layout", "Reshape",
           "apply_implied_flags", "choose_converter", "detect", "get_converter", "list_formats", "load_into_model",
           "plan_load", "read_checkpoint", "register_converter", "remember_defaults"]
