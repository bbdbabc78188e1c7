"""``--init_format hmmc``: HMMC's ``pytorch_model.bin.N`` (cheetah003/HMMC: ``main_task_retrieval.py``'s
``save_model`` writes the ``state_dict()`` of ``BirdModel`` in ``modules/modeling.py``; its encoders are
``VisualEncoder`` and ``TextEncoder`` in ``modules/module_cross.py``).

Layout of the fine-tuned model:

* ``visual_encoder.visual.*``: CLIP's vision tower (OpenAI names) -> ``clip.visual.*``;
* ``visual_encoder.temporal_transformer.resblocks.N`` and ``visual_encoder.frame_position_embeddings`` (48 rows)
  -> our ``temporal.transformer`` and ``temporal.frame_position_embeddings`` (``--use_temp``);
* English: ``text_encoder.{token_embedding, positional_embedding, transformer, ln_final, text_projection}`` ->
  ``clip.text.*``; Chinese: ``text_encoder.chinese_encoder.*`` (a Hugging Face BERT) and ``text_encoder.text_proj``
  -> ``text_tower.encoder.*`` and ``text_tower.proj`` (``--text_encoder``);
* ``logit_scale`` (1,) -> ``clip.logit_scale``; ``visual_encoder.logit_scale`` (a copy of CLIP's) and
  ``weight_sum`` are read by no score (dropped). HMMC's scores scale both terms by the same temperature, so
  retrieval ranks never depend on it, but what the scale multiplies does (the loss, ``--dsl``'s default
  temperature). A file with neither (HMMC's fine-tuning model keeps CLIP's scale as a plain tensor, which
  ``state_dict()`` leaves out) gets the value that tensor holds, OpenAI CLIP's ln 100, and the log says so.

A pre-training checkpoint (``main_pretrain.py``'s ``BirdPreTrainedModel``) also holds momentum copies
(``*_k.``), queues (``queue_*``), the FAM projector/predictor and the MLM head (``cls.``): dropped, as our
own ``pretrain_only_prefixes`` are when a fine-tuning model starts from a pre-training run.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

from modules.clip.loading import CheckpointError

from .base import Conversion, Converter, ImpliedFlags, Layout, Reshape, register_converter

PRETRAINING_ONLY = "tensors that only HMMC's pre-training uses (momentum copies, queues, projector/predictor, MLM head)"
UNREAD = "tensors no HMMC score reads (weight_sum; the visual encoder's copy of the logit scale)"
NO_SCALE = ("no logit scale in the file (HMMC's model keeps OpenAI CLIP's as a plain tensor, fixed and not saved): "
            "clip.logit_scale set to ln 100, the scale HMMC scores and trains with")


@register_converter
class HMMC(Converter):
    name = "hmmc"
    title = "HMMC pytorch_model.bin"
    markers = ("visual_encoder.visual.", "text_encoder.chinese_encoder.", "text_encoder.token_embedding.weight")
    layout = Layout(
        [("visual_encoder.visual.", "clip.visual."),
         ("visual_encoder.temporal_transformer.", "temporal.transformer."),
         ("visual_encoder.frame_position_embeddings.", "temporal.frame_position_embeddings."),
         ("text_encoder.token_embedding.", "clip.text.token_embedding."),
         ("text_encoder.positional_embedding", "clip.text.positional_embedding"),
         ("text_encoder.transformer.", "clip.text.transformer."),
         ("text_encoder.ln_final.", "clip.text.ln_final."),
         ("text_encoder.text_projection", "clip.text.proj"),
         ("text_encoder.chinese_encoder.", "text_tower.encoder."),
         ("text_encoder.text_proj.", "text_tower.proj.")],
        reshapes=[Reshape("logit_scale", "clip.logit_scale", lambda x: x.reshape(()), lambda x: x.reshape(1))],
        drops=[(r"^[A-Za-z_]+_k\.", PRETRAINING_ONLY), (r"^queue", PRETRAINING_ONLY),
               (r"^(v_projector|v_predictor|t_projector|cls)\.", PRETRAINING_ONLY),
               (r"^(weight_sum|visual_encoder\.logit_scale)$", UNREAD)])

    def to_ours(self, state: Mapping[str, Tensor]) -> Conversion:
        conv = super().to_ours(state)
        if "clip.logit_scale" not in conv.state and "visual_encoder.logit_scale" in state:  # the only copy left
            conv.state["clip.logit_scale"] = state["visual_encoder.logit_scale"].reshape(())
            conv.dropped[UNREAD].remove("visual_encoder.logit_scale")
        elif "clip.logit_scale" not in conv.state:  # versions that keep it as a plain tensor (not saved)
            conv.state["clip.logit_scale"] = torch.tensor(math.log(100.0))
            conv.notes.append(NO_SCALE)
        if any(k.startswith("text_tower.") for k in conv.state):
            conv.not_needed["clip.text."] = "HMMC's Chinese text encoder replaces CLIP's text tower, which stays unused"
        return conv

    def from_ours(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = super().from_ours(state)
        scale = state["clip.logit_scale"]
        out["visual_encoder.logit_scale"] = scale.clone()
        out["weight_sum"] = torch.full((1,), 0.5, device=scale.device)
        return out

    def implied_flags(self, conv: Conversion, args) -> ImpliedFlags:
        state = conv.state
        temporal = any(k.startswith("temporal.") for k in state)
        flags: ImpliedFlags = {
            "method": ("hmmc", "visual_encoder.* / text_encoder.*"),
            "use_temp": (temporal, "visual_encoder.temporal_transformer.*" if temporal
                         else "no visual_encoder.temporal_transformer.*"),
        }
        if any(k.startswith("text_tower.") for k in state):
            if not getattr(args, "text_encoder", None):
                raise CheckpointError("HMMC's Chinese model (text_encoder.chinese_encoder.*): pass --text_encoder "
                                      "PATH, a local copy of hfl/chinese-roberta-wwm-ext (the model it was fine-tuned "
                                      "from)")
            flags["language"] = ("chinese", "text_encoder.chinese_encoder.*")
        else:
            flags["text_encoder"] = (None, "CLIP's text tower (text_encoder.transformer.*)")
        return flags
