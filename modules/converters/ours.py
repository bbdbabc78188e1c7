"""``--init_format ours``: this project's own checkpoints, and plain CLIP weights.

* Model checkpoints (``model_final.pt``, ``model_best.pt``, ``checkpoint_last.pt``'s ``model``): our names,
  CLIP under ``clip.`` (``clip.text.proj``), the head's tensors at the top level. Loaded as they are; the
  head's tensors are checked against the model being built by the loader.
* A plain CLIP (OpenAI ``.pt`` state dict or TorchScript, a Hugging Face ``CLIPModel`` folder, our
  ``.safetensors``): converted by ``modules.clip.loading`` and put under ``clip.``.

The flags of our own runs are not inferred here: a self-contained model checkpoint records them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from modules.clip.loading import to_our_layout

from .base import Conversion, Converter, register_converter

# The self-contained model checkpoint (model_final.pt, model_best.pt) that engine.checkpoint.save_model writes:
# the weights under "model", the CLIP architecture, the head and every flag beside them.
MODEL_FORMAT = "univtr-model-v1"


def read_model_record(path) -> dict | None:
    """The record of a self-contained model checkpoint (everything but the weights), or None for any
    other file (CLIP4Clip's pytorch_model.bin.N, a CLIP file, an older UniVTR checkpoint)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors" or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours (TorchScript, unreadable): the CLIP loader reports it in its own words
        return None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        return None
    return {k: v for k, v in state.items() if k != "model"}


@register_converter
class Ours(Converter):
    name = "ours"
    title = "UniVTR / plain CLIP"
    def matches(self, keys) -> bool:
        # Our text tower lives under clip.text.; CLIP4Clip-style files keep OpenAI's clip.token_embedding.
        ours = any(k.startswith("clip.text.") for k in keys)
        plain_clip = not any(k.startswith("clip.") for k in keys) and any(
            k in ("visual.conv1.weight", "text.proj") or k.startswith("vision_model.") for k in keys)
        return ours or plain_clip

    def to_ours(self, state: Mapping[str, Tensor]) -> Conversion:
        if any(k.startswith("clip.") for k in state):
            return Conversion(dict(state), source_keys=len(state))
        clip = to_our_layout(state, "pickle")  # OpenAI, Hugging Face or our layout, without a prefix
        return Conversion({f"clip.{k}": v for k, v in clip.items()}, source_keys=len(state))

    def from_ours(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return dict(state)
