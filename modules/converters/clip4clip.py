"""``--init_format clip4clip``: CLIP4Clip's ``pytorch_model.bin.N`` (ArrowLuo/CLIP4Clip, ``modules/modeling.py``,
class ``CLIP4Clip``) and the files of forks that keep its model.

Layout, read off that class: CLIP with OpenAI's names under ``clip.`` (``clip.visual.*``, ``clip.token_embedding``,
``clip.transformer.*``, ``clip.text_projection``, ``clip.logit_scale``; ``clip.visual.conv2`` with
``--linear_patch 3d``), then per ``--sim_header``:

* meanP: nothing more. The weights therefore do not say "meanP": any head may start from them.
* seqLSTM: ``lstm_visual.*``, plus ``frame_position_embeddings``, which CLIP4Clip builds for seqLSTM but never
  reads (dropped, with a log line).
* seqTransf: ``frame_position_embeddings`` (CLIP4Clip sizes it by CLIP's text context: 77 rows) and
  ``transformerClip.resblocks.N``: the same names as our seqTransf head.
* tightTransf: ``cross.*`` and ``similarity_dense``: recognised and refused (``TIGHT_REFUSAL``).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .base import Conversion, Converter, ImpliedFlags, Layout, block_count, openai_clip_renames, register_converter

TIGHT = ("cross.", "similarity_dense.")
TIGHT_REFUSAL = (
    "CLIP4Clip's tightTransf (cross.*, similarity_dense) is not the cross encoder of this project's tightTransf head: "
    "CLIP4Clip crosses the sentence feature with the frame features (no token-type embeddings) and pools with "
    "QuickGELU into a biased score, ours crosses every caption token and pools with tanh, so these weights would "
    "score a different function; they are not loaded")
UNREAD_LSTM_POSITIONS = "frame position embeddings CLIP4Clip builds for seqLSTM and never reads"


@register_converter
class CLIP4Clip(Converter):
    name = "clip4clip"
    title = "CLIP4Clip pytorch_model.bin"
    markers = ("clip.token_embedding.weight", "clip.text_projection", "clip.ln_final.")
    layout = Layout([*openai_clip_renames("clip."), ("frame_position_embeddings.", "frame_position_embeddings."),
                     ("transformerClip.", "transformerClip."), ("lstm_visual.", "lstm_visual.")])

    def to_ours(self, state: Mapping[str, Tensor]) -> Conversion:
        conv = self.layout.to_ours({k: v for k, v in state.items() if not k.startswith(TIGHT)})
        conv.source_keys = len(state)
        for key in (k for k in state if k.startswith(TIGHT)):
            conv.drop("tightTransf cross-encoder tensors", key)
            conv.refusal = TIGHT_REFUSAL
        if "lstm_visual.weight_ih_l0" in conv.state and "frame_position_embeddings.weight" in conv.state:
            conv.state.pop("frame_position_embeddings.weight")
            conv.drop(UNREAD_LSTM_POSITIONS, "frame_position_embeddings.weight")
        return conv

    def from_ours(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = super().from_ours(state)
        if "lstm_visual.weight_ih_l0" in state:  # CLIP4Clip's seqLSTM model also holds the unread table
            rows, proj = state["clip.text.positional_embedding"].shape[0], state["clip.text.proj"]
            out["frame_position_embeddings.weight"] = torch.zeros(rows, proj.shape[1], device=proj.device)
        return out

    def implied_flags(self, conv: Conversion, args) -> ImpliedFlags:
        state, flags = conv.state, {}
        if any(k.startswith("transformerClip.resblocks.") for k in state):
            flags["method"] = ("seqTransf", "transformerClip.*")
            flags["cross_num_hidden_layers"] = (block_count(state, "transformerClip.resblocks."),
                                                "the transformerClip.resblocks.N present")
            if "frame_position_embeddings.weight" in state:
                flags["max_position_embeddings"] = (state["frame_position_embeddings.weight"].shape[0],
                                                    "frame_position_embeddings.weight rows")
        elif "lstm_visual.weight_ih_l0" in state:
            flags["method"] = ("seqLSTM", "lstm_visual.*")
        return flags
