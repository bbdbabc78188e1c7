"""``build_model(args)``: CLIP backbone + the chosen method head, from the command-line flags."""
from __future__ import annotations

import argparse
import logging

import torch

from modules.clip import build_clip, list_architectures, load_clip
from modules.converters import apply_implied_flags, list_formats, load_into_model, remember_defaults
from modules.heads import RetrievalHead, add_head_args, get_head, list_heads
from modules.videomae import add_videomae_args, trunk_from_args

log = logging.getLogger(__name__)

# Always trained under CLIP4Clip's --freeze_layer_num: the output norms and projections.
_TOP_LAYERS = ("text.ln_final.", "text.proj", "logit_scale", "visual.ln_post.", "visual.proj", "visual.conv2.")


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("model")
    g.add_argument("--pretrained_clip_name", default="ViT-B/32",
                   help="OpenAI name (ViT-B/32, ViT-B/16, ViT-L/14) or a path to .pt / HF folder / .safetensors")
    g.add_argument("--pretrained_dir", default=None, help="folder searched first for ViT-B-32.pt etc.")
    g.add_argument("--clip_init", choices=("pretrained", "random"), default="pretrained",
                   help="random: build --pretrained_clip_name's architecture (e.g. 'tiny') with random weights")
    g.add_argument("--sim_header", default="meanP", help="CLIP4Clip head: meanP, seqLSTM, seqTransf, tightTransf")
    g.add_argument("--method", default=None, help=f"method head (default: --sim_header); one of {list_heads()}")
    g.add_argument("--loose_type", action="store_true", help="accepted for CLIP4Clip commands (implied by dual heads)")
    g.add_argument("--linear_patch", choices=("2d", "3d"), default="2d")
    g.add_argument("--freeze_layer_num", type=int, default=0,
                   help="CLIP4Clip semantics: freeze CLIP blocks below N and every embedding (token, patch, "
                        "positions, ln_pre); -1 trains all of CLIP")
    g.add_argument("--cross_num_hidden_layers", type=int, default=4, help="temporal / cross transformer depth")
    g.add_argument("--max_position_embeddings", type=int, default=128, help="frame positions of seqTransf")
    g.add_argument("--init_model", default=None,
                   help="initial weights: a UniVTR checkpoint, a CLIP file, or a seed's released model (CLIP4Clip or "
                        "HMMC pytorch_model.bin.N, DGL ckpt.best.pth.tar, T2VLP's and SimVTP's .pth); the flags its "
                        "weights imply are inferred")
    g.add_argument("--init_format", default="auto", choices=("auto", *list_formats()),
                   help="layout of --init_model (auto: recognised from its tensor names; see docs/reproduce.md)")
    g.add_argument("--grad_checkpointing", action="store_true")
    g.add_argument("--backbone", choices=("clip", "videomae_joint"), default=None,
                   help="backbone family (default: the method's: CLIP for every method but simvtp)")
    add_videomae_args(parser)  # --videomae_arch, --videomae_checkpoint, --bert_path, ...
    add_head_args(parser)  # each method head's own flags (DGL, UMP, HMMC, T2VLP, SimVTP)
    remember_defaults(parser)  # "given" = differs from these (checkpoint-implied flags, modules/converters/flags.py)
    return parser


def freeze_clip_layers(model: RetrievalHead, freeze_layer_num: int) -> int:
    """CLIP4Clip's rule; returns the number of frozen parameters."""
    if freeze_layer_num < 0:
        return 0
    frozen = 0
    for name, param in model.clip.named_parameters():
        if name.startswith(_TOP_LAYERS):
            continue
        if ".resblocks." in name and int(name.split(".resblocks.")[1].split(".")[0]) >= freeze_layer_num:
            continue
        param.requires_grad_(False)
        frozen += param.numel()
    return frozen


def load_init_model(model: RetrievalHead, path: str, init_format: str | None = None) -> None:
    """Weights of a finished run (ours, or a seed's released model: ``modules/converters``) into ``model``.

    Every tensor of the model must come from the checkpoint and every tensor of the checkpoint must
    have a place, else one ``CheckpointError`` line names what is left on either side: a head tensor left
    at its random initialisation would quietly cost points. The one exception is a checkpoint with no
    head tensors at all (plain CLIP, or CLIP4Clip meanP): the head's new modules then start fresh, and the
    log says which. Tensors only pre-training uses (``pretrain_only_prefixes``, a seed's momentum copies
    and queues) are dropped, in one log line."""
    plan = load_into_model(model, path, init_format or getattr(model.args, "init_format", None))
    # What the file did not fill: a run that only evaluates refuses them (engine.checkpoint.check_evaluated_weights).
    untrained = {key.split(".")[0] for key in plan.head_missing} if plan.head_fresh else set()
    if hasattr(model, "optional_in_checkpoint"):  # whole modules the file lacks (T2VLP's tube, fusion, matching head)
        untrained |= {prefix.split(".")[0] for prefix in model.optional_in_checkpoint(plan.tensors)
                      if any(True for _ in getattr(model, prefix.split(".")[0]).parameters())}
    model.untrained_modules = sorted(untrained)


def build_model(args) -> RetrievalHead:
    """The model for a set of flags: CLIP (pretrained or random), the method head, freezing, options."""
    apply_implied_flags(args)  # what --init_model's weights determine (method, head shape, backbone)
    name = getattr(args, "method", None) or args.sim_header
    head_cls = get_head(name)
    family = getattr(head_cls, "backbone_family", "clip")
    if getattr(args, "backbone", None) not in (None, family):
        raise ValueError(f"--method {name} runs on the {family} backbone, not --backbone {args.backbone}")
    if family == "videomae_joint":  # SimVTP's joint trunk (modules/videomae); CLIP's flags do not apply
        trunk = trunk_from_args(args)
        model = head_cls(trunk, args)
        if getattr(args, "init_model", None):
            load_init_model(model, args.init_model)
        trunk.set_grad_checkpointing(getattr(args, "grad_checkpointing", False))
        return model
    if getattr(args, "clip_config", None):  # a self-contained checkpoint's architecture; --init_model has the weights
        clip = build_clip(args.clip_config)
    elif args.clip_init == "random":
        if args.pretrained_clip_name.replace("/", "-") not in [a.replace("/", "-") for a in list_architectures()]:
            raise ValueError(f"--clip_init random needs an architecture name, one of {list_architectures()}")
        clip = build_clip(args.pretrained_clip_name)
    else:
        clip = load_clip(args.pretrained_clip_name, pretrained_dir=getattr(args, "pretrained_dir", None))
    if getattr(args, "linear_patch", "2d") == "3d":
        clip.visual.enable_3d_patch()
    model = head_cls(clip, args)
    if getattr(args, "init_model", None):
        load_init_model(model, args.init_model)
    freeze_clip_layers(model, getattr(args, "freeze_layer_num", -1))
    if getattr(args, "grad_checkpointing", False):
        clip.set_grad_checkpointing(True)
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
