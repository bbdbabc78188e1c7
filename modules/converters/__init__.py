"""Checkpoint converters: the seed repositories' released weights load into this project's models.

One module per layout registers a ``Converter`` (``base.py``): ``ours`` (this project, plain CLIP),
``clip4clip``, ``dgl``, ``hmmc``, ``t2vlp``, ``simvtp``. ``--init_format auto`` (the default) picks the layout
by recognising the key set: every converter whose marker tensors are present converts the checkpoint, and the
one that accounts for the largest share of its tensors wins (a tie is an error that asks for ``--init_format``).
Adding a layout is one module here that registers itself, plus its import and name in ``registry.py``.

``checkpoint.py`` reads files (``state_dict``/``model`` wrappers, DDP ``module.`` prefixes, ``.pth.tar``,
``weights_only=True``) and loads a conversion into a model with every tensor accounted for;
``flags.py`` reconciles the flags the weights imply with the given ones before the model is built.
"""
from __future__ import annotations

from .base import CONVERTERS, Conversion, Converter, ImpliedFlags, Layout, Reshape, register_converter
from .checkpoint import load_into_model, plan_load, read_checkpoint
from .flags import apply_implied_flags, remember_defaults
from .registry import LAYOUTS, choose_converter, detect, get_converter, list_formats

__all__ = ["CONVERTERS", "LAYOUTS", "Conversion", "Converter", "ImpliedFlags", "Layout", "Reshape",
           "apply_implied_flags", "choose_converter", "detect", "get_converter", "list_formats", "load_into_model",
           "plan_load", "read_checkpoint", "register_converter", "remember_defaults"]
