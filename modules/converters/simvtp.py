"""``--init_format simvtp``: SimVTP's released checkpoints (mayuelala/SimVTP; its code is the release commit kept in
the fork wufeim/SimVTP: ``modeling_pretrain.py``, ``modeling_finetune.py``).

Two layouts, with no tensor name in common, onto the ``simvtp`` head (``modules/heads/simvtp.py``, whose
``clip`` slot holds the VideoMAE ``JointTrunk``):

* pre-trained (``PretrainVisionTransformer``): ``encoder.patch_embed.proj`` -> ``clip.visual.proj`` /
  ``proj_bias``; ``encoder.blocks`` / ``encoder.norm`` -> ``clip.blocks`` / ``clip.norm``; ``text_embeddings``
  (BERT's embedding layer) -> ``clip.text``; ``decoder.{blocks,norm,head}``, ``encoder_to_decoder`` and
  ``mask_token`` -> ``decoder.*``; ``text_cls`` -> ``mlm_head``; ``vtm_head`` -> ``vtm_head``. A fine-tuning
  model drops what only pre-training uses (the head's ``pretrain_only_prefixes``) and starts its text copy of the
  trunk from the encoder and its two ``fc_norm``s fresh, as SimVTP's fine-tuning does;
* fine-tuned (``DualVideoTextEncoder``, the MSR-VTT model): ``video_encoder.{patch_embed,blocks}`` -> ``clip``;
  ``video_encoder.fc_norm`` -> ``video_fc_norm``; ``text_encoder.text_embeddings`` -> ``clip.text``;
  ``text_encoder.blocks`` -> ``text_trunk.blocks``; ``text_encoder.fc_norm`` -> ``text_fc_norm``. Each copy also
  holds a module it never runs (the video copy's BERT embedding, the text copy's tubelet embedding): dropped.

Implied: ``--method simvtp``, ``--backbone videomae_joint``, ``--videomae_arch`` (the registered architecture
whose shapes match the trunk) and its ``--image_resolution``, ``--clip_init random`` (the file holds the whole
trunk: no ``--videomae_checkpoint`` is read), ``--decoder_depth`` when the decoder's depth is not the
architecture's, ``--simvtp_stage finetune`` for a fine-tuned file. The vocabulary is not in the weights: a BERT
table (30522 rows) needs ``--bert_path``.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import Tensor

from modules.clip.loading import CheckpointError
from modules.videomae.config import canonical_name, get_config, list_architectures
from modules.videomae.text import clip_vocabulary

from .base import Conversion, Converter, ImpliedFlags, Layout, block_count, register_converter

UNRUN_TEXT = "the video copy's BERT embedding layer (SimVTP builds one in each copy; the video branch never runs it)"
UNRUN_VIDEO = "the text copy's tubelet embedding (SimVTP builds one in each copy; the text branch never runs it)"
TOKEN_TYPES = "BERT's token-type index buffer (zeros, rebuilt from the shapes)"
BERT_BUFFERS = ((r"text_embeddings\.token_type_ids$", TOKEN_TYPES),)


def _trunk_renames(theirs: str) -> list[tuple[str, str]]:
    """One VideoMAE encoder under ``theirs`` -> the joint trunk's video side and blocks."""
    return [(theirs + "patch_embed.proj.weight", "clip.visual.proj"),
            (theirs + "patch_embed.proj.bias", "clip.visual.proj_bias"),
            (theirs + "blocks.", "clip.blocks.")]


PRETRAINED = Layout(
    [*_trunk_renames("encoder."), ("encoder.norm.", "clip.norm."), ("text_embeddings.", "clip.text."),
     ("decoder.", "decoder."), ("encoder_to_decoder.weight", "decoder.encoder_to_decoder.weight"),
     ("mask_token", "decoder.mask_token"), ("text_cls.", "mlm_head."), ("vtm_head.", "vtm_head.")],
    drops=BERT_BUFFERS)
FINETUNED = Layout(
    [*_trunk_renames("video_encoder."), ("video_encoder.fc_norm.", "video_fc_norm."),
     ("text_encoder.text_embeddings.", "clip.text."), ("text_encoder.blocks.", "text_trunk.blocks."),
     ("text_encoder.fc_norm.", "text_fc_norm.")],
    drops=[(r"^video_encoder\.text_embeddings\.", UNRUN_TEXT), (r"^text_encoder\.patch_embed\.", UNRUN_VIDEO),
           *BERT_BUFFERS])
FINETUNED_PREFIXES = ("video_encoder.", "text_encoder.")
COUNTERS = {"tube_mask.": "a draw counter of this project's tube masking (starts at 0)",
            "text_masker.": "a draw counter of this project's text masking (starts at 0)"}
FRESH_FOR_FINETUNING = {
    "text_trunk.": "SimVTP's fine-tuning starts the text copy of the trunk from the pre-trained encoder (copied)",
    "video_fc_norm.": "a LayerNorm SimVTP's fine-tuning adds (starts at 1 / 0)",
    "text_fc_norm.": "a LayerNorm SimVTP's fine-tuning adds (starts at 1 / 0)"}


def _position_ids(state: Mapping[str, Tensor]) -> Tensor:
    """BERT's index buffer (1, positions), which older transformers versions save with the weights."""
    table = state["clip.text.position_embeddings.weight"]
    return torch.arange(table.shape[0], device=table.device)[None]


def _architecture(state: Mapping[str, Tensor], given) -> tuple[str, str]:
    """(the registered VideoMAE architecture whose shapes match the trunk, why); ``given`` when it names the same."""
    width, _, tubelet, patch, _ = state["clip.visual.proj"].shape
    layers = block_count(state, "clip.blocks.")
    hidden = {v.shape[0] for k, v in state.items() if re.fullmatch(r"clip\.blocks\.\d+\.mlp\.fc1\.weight", k)}
    qkv_bias = any(k.endswith(".attn.q_bias") for k in state if k.startswith("clip.blocks."))
    why = f"trunk shapes: width {width}, {layers} blocks, tubelet {tubelet}, patch {patch}"
    for name in list_architectures():
        c = get_config(name)
        if (c.width, c.layers, c.tubelet_size, c.patch_size, c.qkv_bias) == (width, layers, tubelet, patch, qkv_bias) \
                and hidden <= {int(c.width * c.mlp_ratio)}:
            same = isinstance(given, str) and canonical_name(given) == canonical_name(name)
            return (given if same else name), why
    raise CheckpointError(f"SimVTP trunk ({why}, MLP {sorted(hidden)}) matches no registered VideoMAE architecture "
                          f"({', '.join(list_architectures())}); add one under modules/videomae/model_configs")


@register_converter
class SimVTPConverter(Converter):
    name = "simvtp"
    title = "SimVTP checkpoint"
    markers = ("text_embeddings.word_embeddings.weight", "video_encoder.patch_embed.", "text_encoder.text_embeddings.")

    def to_ours(self, state: Mapping[str, Tensor]) -> Conversion:
        if any(k.startswith(FINETUNED_PREFIXES) for k in state):
            return FINETUNED.to_ours(state)
        conv = PRETRAINED.to_ours(state)
        conv.not_needed.update(COUNTERS)
        conv.not_needed.update(FRESH_FOR_FINETUNING)
        return conv

    def from_ours(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Our simvtp model in SimVTP's layout: a fine-tuning model as the fine-tuned file (with the copies'
        unrun modules as clones of the run ones), a pre-training model as the pre-trained file."""
        state = {k: v for k, v in state.items() if not k.startswith(tuple(COUNTERS))}
        if any(k.startswith("text_trunk.") for k in state):
            out = FINETUNED.to_theirs(state)
            out |= {"video_encoder.text_embeddings." + k[len("clip.text."):]: v.clone() for k, v in state.items()
                    if k.startswith("clip.text.")}
            out["text_encoder.patch_embed.proj.weight"] = state["clip.visual.proj"].clone()
            out["text_encoder.patch_embed.proj.bias"] = state["clip.visual.proj_bias"].clone()
            texts = ("video_encoder.text_embeddings.", "text_encoder.text_embeddings.")
        else:
            out, texts = PRETRAINED.to_theirs(state), ("text_embeddings.",)
        return out | {prefix + "position_ids": _position_ids(state) for prefix in texts}

    def implied_flags(self, conv: Conversion, args) -> ImpliedFlags:
        state = conv.state
        finetuned = any(k.startswith("text_trunk.") for k in state)
        marker = "video_encoder.* / text_encoder.*" if finetuned else "encoder.* / text_embeddings.*"
        flags: ImpliedFlags = {"method": ("simvtp", marker), "backbone": ("videomae_joint", marker),
                               "clip_init": ("random", "the file holds the whole trunk: no --videomae_checkpoint "
                                                       "is read")}
        if getattr(state.get("clip.visual.proj"), "ndim", 0) == 5:
            arch, why = _architecture(state, getattr(args, "videomae_arch", None))
            flags["videomae_arch"] = (arch, why)
            flags["image_resolution"] = (get_config(arch).image_size, f"the input size of {arch}")
            depth = block_count(state, "decoder.blocks.")
            if depth and depth != get_config(arch).decoder.layers:
                flags["decoder_depth"] = (depth, "the decoder.blocks present")
        if finetuned:
            if getattr(args, "do_pretrain", False):
                raise CheckpointError("--do_pretrain given, the weights are SimVTP's fine-tuned dual encoder "
                                      f"({marker}), which pre-training does not continue")
            flags["simvtp_stage"] = ("finetune", f"{marker}: SimVTP's fine-tuned dual encoder")
        words = state.get("clip.text.word_embeddings.weight")
        if words is not None and not getattr(args, "bert_path", None) \
                and words.shape[0] != clip_vocabulary().embedding_rows:
            raise CheckpointError(f"SimVTP's text embedding has {words.shape[0]} rows (BERT WordPiece): pass "
                                  "--bert_path PATH, a local bert-base-uncased folder or its vocab.txt (the tokenizer "
                                  "it was trained with)")
        return flags
