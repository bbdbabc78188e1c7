"""``--init_format dgl``: DGL's ``ckpt.best.pth.tar`` (knightyxp/DGL: ``main.py`` saves
``{"state_dict": model.state_dict(), "optimizer": ..., "epoch": ...}`` of the DDP-wrapped ``CLIP4Clip`` of
``modules/clip4clip.py``, whose ``clip`` is the prompted CLIP of ``modules/clip.py``).

Layout (DGL's ckpt.best.pth.tar), all under ``clip.`` with OpenAI's names for CLIP itself:

* ``clip.visual.prompt_embeddings`` (1, n_g, W_v): the global prompts -> our ``prompt_embeddings`` (n_g, W_v);
  ``clip.visual.position_ids`` is an index buffer (0..P): dropped;
* Linear: ``clip.visual_prompt_embedding`` (1, n_l, L_p·W_v) -> ``visual_prompt_embedding`` (n_l, L_p·W_v), and
  ``clip.{prefix,postfix}_text_prompt_proj_layer`` -> the same names;
* Transformer: ``clip.unified_prompt_embedding`` (n_t + n_l·T, L_p·W_v), ``clip.PromptTransformer.resblocks.0``
  (our ``PromptTransformer`` is that one block) and ``clip.unified_prompt_mlp.{c_fc,c_proj}`` (our Sequential's
  0 and 2).

Both tables are row-major (prompt, layer, width) in DGL and here, so only the singleton axis moves.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from modules.clip.loading import CheckpointError

from .base import (Conversion, Converter, ImpliedFlags, Layout, Reshape, block_count, openai_clip_renames,
                   register_converter)


def _squeeze0(x: Tensor) -> Tensor:
    return x.squeeze(0)


def _unsqueeze0(x: Tensor) -> Tensor:
    return x.unsqueeze(0)


@register_converter
class DGL(Converter):
    name = "dgl"
    title = "DGL ckpt.best.pth.tar"
    markers = ("clip.visual.prompt_embeddings", "clip.unified_prompt_embedding.weight", "clip.visual_prompt_embedding")
    layout = Layout(
        [*openai_clip_renames("clip."),
         ("clip.PromptTransformer.resblocks.0.", "PromptTransformer."),
         ("clip.unified_prompt_mlp.c_fc.", "unified_prompt_mlp.0."),
         ("clip.unified_prompt_mlp.c_proj.", "unified_prompt_mlp.2."),
         ("clip.unified_prompt_embedding.", "unified_prompt_embedding."),
         ("clip.prefix_text_prompt_proj_layer.", "prefix_text_prompt_proj_layer."),
         ("clip.postfix_text_prompt_proj_layer.", "postfix_text_prompt_proj_layer.")],
        reshapes=[Reshape("clip.visual.prompt_embeddings", "prompt_embeddings", _squeeze0, _unsqueeze0),
                  Reshape("clip.visual_prompt_embedding", "visual_prompt_embedding", _squeeze0, _unsqueeze0)],
        drops=[(r"^clip\.visual\.position_ids$", "index buffer of the patch positions (0..P, rebuilt here)")])

    def from_ours(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = super().from_ours(state)
        positions = state["clip.visual.positional_embedding"]
        out["clip.visual.position_ids"] = torch.arange(positions.shape[0], device=positions.device)[None]
        return out

    def implied_flags(self, conv: Conversion, args) -> ImpliedFlags:
        state = conv.state
        flags: ImpliedFlags = {"method": ("dgl", "its prompt tables")}
        if "prompt_embeddings" in state:
            flags["global_prompt_length"] = (state["prompt_embeddings"].shape[0], "prompt_embeddings rows")
        width = state["prompt_embeddings"].shape[-1] if "prompt_embeddings" in state else None
        if "visual_prompt_embedding" in state:
            table = state["visual_prompt_embedding"]
            flags["shared_latent_space"] = ("linear", "visual_prompt_embedding")
            flags["visual_prompt_length"] = (table.shape[0], "visual_prompt_embedding rows")
            flags["text_prompt_length"] = (2 * table.shape[0], "one prefix and one postfix prompt per local prompt")
        elif "unified_prompt_embedding.weight" in state:
            table = state["unified_prompt_embedding.weight"]
            flags["shared_latent_space"] = ("transformer", "unified_prompt_embedding")
            n_text, n_local = getattr(args, "text_prompt_length", 8), getattr(args, "visual_prompt_length", 4)
            frames, rest = divmod(table.shape[0] - n_text, n_local) if n_local else (0, 1)
            if rest or frames < 1:
                raise CheckpointError(f"DGL-Transformer table of {table.shape[0]} rows is not --text_prompt_length "
                                      f"{n_text} + --visual_prompt_length {n_local} x frames; give the prompt lengths "
                                      "it was trained with")
            flags["max_frames"] = (frames, f"unified_prompt_embedding rows = {n_text} + {n_local} x {frames}")
        else:
            return flags
        if width:
            depth = table.shape[-1] // width
            blocks = min(block_count(state, "clip.visual.transformer.resblocks."),
                         block_count(state, "clip.text.transformer.resblocks."))
            every_block = depth == blocks and getattr(args, "unified_transformer_layers", None) is None
            flags["unified_transformer_layers"] = (None if every_block else depth,  # None: every block (the default)
                                                   f"prompt table width {table.shape[-1]} = {depth} x {width}")
        return flags
