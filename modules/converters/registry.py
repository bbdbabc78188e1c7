"""The converters by name: every layout module registers itself on import (``base.register_converter``);
``choose_converter`` picks the one ``--init_format`` names or the one that explains a checkpoint best."""
from __future__ import annotations

from typing import Mapping

from torch import Tensor

from modules.clip.loading import CheckpointError

from . import clip4clip, dgl, hmmc, ours, simvtp, t2vlp  # noqa: F401  (each registers its converter)
from .base import CONVERTERS, Converter

LAYOUTS = ("ours", "clip4clip", "dgl", "hmmc", "t2vlp", "simvtp")
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
