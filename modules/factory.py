"""``build_model(args)``: CLIP backbone + the chosen method head, from the command-line flags."""
from __future__ import annotations

import argparse
import logging

import torch

from modules.clip import build_clip, list_architectures, load_clip
from modules.clip.loading import CheckpointError, read_state_dict, to_our_layout
from modules.heads import RetrievalHead, add_prompt_args, get_head, list_heads

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
    g.add_argument("--init_model", default=None, help="initial weights: a UniVTR or CLIP4Clip pytorch_model.bin.N")
    g.add_argument("--grad_checkpointing", action="store_true")
    add_prompt_args(parser)  # DGL / UMP flags
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


def _names(keys, shown: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:shown]) + (f" ... ({len(keys)} in all)" if len(keys) > shown else "")


def load_init_model(model: RetrievalHead, path: str) -> None:
    """Weights of a finished run (ours or CLIP4Clip's ``pytorch_model.bin.N``) into ``model``.

    Every tensor of the model must come from the checkpoint: a head tensor left at its random
    initialisation would quietly cost points (e.g. a seqTransf checkpoint evaluated with another
    --cross_num_hidden_layers). The one exception is a checkpoint with no head tensors at all (plain
    CLIP, or CLIP4Clip meanP): the head's new modules then start fresh, and the log says which.
    Tensors only pre-training uses (momentum copies, queues, MLM heads: ``pretrain_only_prefixes``)
    are dropped, in one log line."""
    state, fmt, _ = read_state_dict(path)
    if "model" in state and isinstance(state["model"], dict):  # a UniVTR training checkpoint
        state = state["model"]
    clip_state = to_our_layout(state, fmt)
    heads_state = {k: v for k, v in state.items() if not k.startswith("clip.")}
    own = model.state_dict()
    dropped = [k for k in heads_state if k not in own and k.startswith(tuple(model.pretrain_only_prefixes))]
    for key in dropped:
        heads_state.pop(key)
    if dropped:
        log.info("%s: dropped %d tensors that only pre-training uses (%s)", path, len(dropped),
                 ", ".join(sorted({k.split(".")[0] for k in dropped})))
    merged = {f"clip.{k}": v for k, v in clip_state.items()} | heads_state
    missing, unexpected = model.load_state_dict(merged, strict=False)
    if unexpected:
        raise CheckpointError(f"{path}: weights the {model.head_name} head does not have (wrong --method or head "
                              f"flags?): {_names(unexpected)}")
    head_missing = [k for k in missing if not k.startswith("clip.")]
    clip_missing = [k for k in missing if k.startswith("clip.") and k != "clip.visual.conv2.weight"]
    if "clip.visual.conv2.weight" in missing:  # a 2-D patch checkpoint under --linear_patch 3d
        model.clip.visual.enable_3d_patch()  # starts equal to the loaded conv1
        log.info("%s: no 3-D patch weights; --linear_patch 3d starts from the checkpoint's conv1", path)
    if clip_missing:
        raise CheckpointError(f"{path}: {len(clip_missing)} CLIP tensors are not in the checkpoint and would keep "
                              f"random values: {_names(clip_missing)}")
    if head_missing and heads_state:
        raise CheckpointError(f"{path}: {len(head_missing)} tensors of the {model.head_name} head being built are not "
                              f"in the checkpoint (different head flags, e.g. --cross_num_hidden_layers, "
                              f"--max_frames, prompt lengths?): {_names(head_missing)}")
    if head_missing:
        fresh = sorted({k.split(".")[0] for k in head_missing})
        log.info("%s: a CLIP checkpoint without %s head weights; these start fresh: %s", path, model.head_name,
                 ", ".join(fresh))


def build_model(args) -> RetrievalHead:
    """The model for a set of flags: CLIP (pretrained or random), the method head, freezing, options."""
    name = getattr(args, "method", None) or args.sim_header
    head_cls = get_head(name)
    if args.clip_init == "random":
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
