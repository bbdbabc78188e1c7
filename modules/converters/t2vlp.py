"""``--init_format t2vlp``: T2VLP's ``pytorch_model.bin.N`` (Unified-Robots/T2VLP; stage 1 ``main_task_clip.py``
with ``modules/modeling.py`` + ``modules/module_clip.py``, stage 2 ``main_task_fusion.py`` with
``modules/modeling_fusion.py`` + ``modules/module_clip_fusion.py``; the downstream retrieval files keep the
stage-2 model).

Layout, all of it under ``clip.`` except the wrapper's ``visual_linear``:

* CLIP with OpenAI's names (as CLIP4Clip keeps them) -> ``clip.*``;
* tube module: ``clip.fusion_center`` (1, 1, K, W_v) -> ``tube.centers`` (K, W_v); ``clip.fusion_proj_center`` ->
  ``tube.center_proj``; ``clip.local_visual.transformer.resblocks.N`` / ``ln_post`` / ``proj`` -> ``tube.local``,
  ``tube.ln_post``, ``tube.proj``. The local copy's ``conv1``, ``class_embedding``, ``positional_embedding`` and
  ``ln_pre`` are copied from CLIP and never run: dropped;
* fusion (stage 2 and downstream): ``clip.fusion_transformer.resblocks.0..5`` -> ``fusion.transformer``
  (blocks 6..11 exist but are never executed: dropped); ``clip.fusion_positional_embedding`` ->
  ``fusion.positional_embedding``; ``clip.fusion_proj_embedding`` / ``clip.fusion_logit_bias`` -> ``vocab_head.proj``
  / ``vocab_head.bias``; ``clip.fusion_{unmatch,match}_matrix`` -> ``match.{unmatch,match}``;
* ``clip.lm_head`` and ``visual_linear``: modules T2VLP builds that none of its objectives uses
  (its vocabulary logits come from ``fusion_proj_embedding``): dropped.

Stage 2 and the downstream retrieval model share this layout, so a file with the fusion tensors implies
``--t2vlp_stage retrieval`` unless ``--t2vlp_stage 2`` is given (continuing pre-training); the retrieval model
drops the vocabulary head as any later-stage module (``pretrain_only_prefixes``).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .base import Conversion, Converter, ImpliedFlags, Layout, Reshape, block_count, openai_clip_renames, \
    register_converter

FUSION_EXECUTED = 6  # T2VLP runs fusion_transformer blocks 0..5 only
NEVER_RUN = "the local tube copy's patch embedding, class token, positions and ln_pre (copied from CLIP, never run)"
UNEXECUTED = "fusion_transformer blocks 6-11 (T2VLP executes blocks 0-5 only)"
UNUSED = "modules T2VLP builds but no computation of its objectives reads (lm_head, visual_linear)"
LOCAL_UNUSED = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")


def _centers_to_ours(x: Tensor) -> Tensor:
    return x.reshape(x.shape[-2], x.shape[-1])


def _centers_to_theirs(x: Tensor) -> Tensor:
    return x.reshape(1, 1, *x.shape)


@register_converter
class T2VLPConverter(Converter):
    name = "t2vlp"
    title = "T2VLP pytorch_model.bin"
    markers = ("clip.fusion_center", "clip.local_visual.")
    layout = Layout(
        [*openai_clip_renames("clip."),
         ("clip.local_visual.transformer.", "tube.local."),
         ("clip.local_visual.ln_post.", "tube.ln_post."),
         ("clip.local_visual.proj", "tube.proj"),
         ("clip.fusion_proj_center.", "tube.center_proj."),
         ("clip.fusion_transformer.", "fusion.transformer."),
         ("clip.fusion_positional_embedding", "fusion.positional_embedding"),
         ("clip.fusion_proj_embedding", "vocab_head.proj"),
         ("clip.fusion_logit_bias", "vocab_head.bias"),
         ("clip.fusion_unmatch_matrix", "match.unmatch"),
         ("clip.fusion_match_matrix", "match.match")],
        reshapes=[Reshape("clip.fusion_center", "tube.centers", _centers_to_ours, _centers_to_theirs)],
        drops=[(r"^clip\.local_visual\.(conv1\.|class_embedding$|positional_embedding$|ln_pre\.)", NEVER_RUN),
               (r"^clip\.fusion_transformer\.resblocks\.([6-9]|[1-9]\d+)\.", UNEXECUTED),
               (r"^(clip\.lm_head|visual_linear)\.", UNUSED)])

    def to_ours(self, state: Mapping[str, Tensor]) -> Conversion:
        conv = super().to_ours(state)
        conv.not_needed["negatives."] = "a draw counter of this project's hard-negative sampler (starts at 0)"
        conv.not_needed["masker."] = "a draw counter of this project's MLM masker (starts at 0)"
        return conv

    def from_ours(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Ours in T2VLP's layout, with the tensors T2VLP holds and never reads filled as T2VLP initialises
        them (copies of CLIP's) or with zeros (lm_head, visual_linear, an absent vocabulary head)."""
        state = {k: v for k, v in state.items() if not k.startswith(("negatives.", "masker."))}
        out = super().from_ours(state)
        visual = {k[len("clip.visual."):]: v for k, v in state.items() if k.startswith("clip.visual.")}
        for key, value in visual.items():
            if key.startswith(LOCAL_UNUSED):
                out[f"clip.local_visual.{key}"] = value.clone()
        proj = state["clip.text.proj"]
        width, dim = proj.shape
        out["clip.lm_head.weight"] = torch.zeros(dim, width, device=proj.device)
        out["clip.lm_head.bias"] = torch.zeros(dim, device=proj.device)
        if any(k.startswith("fusion.") for k in state):
            text_blocks = {k[len("clip.text.transformer.resblocks."):]: v for k, v in state.items()
                           if k.startswith("clip.text.transformer.resblocks.")}
            executed = block_count(state, "fusion.transformer.resblocks.")
            for key, value in text_blocks.items():  # the unexecuted blocks start as CLIP's text blocks
                if int(key.split(".")[0]) >= executed:
                    out[f"clip.fusion_transformer.resblocks.{key}"] = value.clone()
            vocab = state["clip.text.token_embedding.weight"].shape[0]
            out.setdefault("clip.fusion_proj_embedding", torch.zeros(dim, dim, device=proj.device))
            out.setdefault("clip.fusion_logit_bias", torch.zeros(vocab, device=proj.device))
            out["visual_linear.weight"] = torch.zeros(dim, dim, device=proj.device)
            out["visual_linear.bias"] = torch.zeros(dim, device=proj.device)
        return out

    def implied_flags(self, conv: Conversion, args) -> ImpliedFlags:
        state = conv.state
        flags: ImpliedFlags = {"method": ("t2vlp", "clip.fusion_center / clip.local_visual.*")}
        if any(k.startswith("fusion.") for k in state):
            given = str(getattr(args, "t2vlp_stage", "1"))
            stage = given if given in ("2", "retrieval") else "retrieval"
            flags["t2vlp_stage"] = (stage, "clip.fusion_transformer.* (stage 2 and downstream files share it)")
            executed = block_count(state, "fusion.transformer.resblocks.")
            if executed != getattr(args, "fusion_layers", FUSION_EXECUTED):
                flags["fusion_layers"] = (executed, "the clip.fusion_transformer blocks kept")
        else:
            flags["t2vlp_stage"] = ("1", "no clip.fusion_transformer.*")
        if "tube.centers" in state:
            flags["num_centers"] = (state["tube.centers"].shape[0], "clip.fusion_center centres")
        blocks = block_count(state, "tube.local.resblocks.")
        if blocks:
            flags["joint_layers"] = (blocks, "clip.local_visual.transformer blocks (one per joint block)")
        return flags
