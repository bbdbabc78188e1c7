"""Optimiser and learning-rate schedule.

Default: AdamW over the head's parameter groups (CLIP at lr x coef_lr, new modules at lr, no weight
decay on biases and norms), linear warm-up then cosine to 0; its fused kernel on CUDA. ``--optim bertadam`` reproduces
CLIP4Clip's BertAdam for parity: no bias correction, each parameter's gradient clipped to norm 1,
decoupled weight decay, and its warm-up-cosine whose cosine is *not* re-normalised after warm-up; with it,
weight decay spares only what CLIP4Clip's no-decay list names (``--weight_decay_exclude bias_and_LayerNorm``).

Optimiser step k (0-based) of ``total`` runs at ``lr x shape(k / total)``, as BertAdam computes its rate from
the number of steps already taken: warm-up starts at 0 and the last step is not at 0.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from modules.heads.base import norms_and_1d


def warmup_cosine(progress: float, warmup: float) -> float:
    """Linear warm-up over ``warmup`` of training, then cosine from 1 to 0 over the rest."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / max(1e-12, 1.0 - warmup)))


def clip4clip_warmup_cosine(progress: float, warmup: float) -> float:
    """CLIP4Clip's schedule: x/w during warm-up, then ½(1 + cos πx) with x the overall progress, so
    the multiplier drops from 1 to ½(1 + cos πw) at the end of warm-up."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class BertAdam(Optimizer):
    """CLIP4Clip's optimiser (re-implemented from its description, for parity runs)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0, max_grad_norm=1.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                state["next_m"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["next_v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = state["next_m"] / (state["next_v"].sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update = update + group["weight_decay"] * p
                p.add_(update, alpha=-group["lr"])
        return loss


def add_optim_args(parser):
    g = parser.add_argument_group("optimisation")
    g.add_argument("--optim", choices=("adamw", "bertadam"), default="adamw",
                   help="bertadam = CLIP4Clip's optimiser and schedule, for parity")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate of the new modules")
    g.add_argument("--coef_lr", type=float, default=1e-3, help="CLIP's learning rate is lr x coef_lr")
    g.add_argument("--weight_decay", type=float, default=0.2)
    g.add_argument("--weight_decay_exclude", choices=WEIGHT_DECAY_EXCLUSIONS, default=None,
                   help="parameters spared from weight decay: norms_and_1d = every norm, bias and 1-D parameter; "
                        "bias_and_LayerNorm = CLIP4Clip's list (names containing 'bias', and the modules its code "
                        "names LayerNorm), so CLIP's ln_*, class_embedding and HMMC's temporal norms are decayed. "
                        "Default: bias_and_LayerNorm with --optim bertadam, else the method's own rule "
                        "(norms_and_1d; DGL: biases only; UMP: nothing spared)")
    g.add_argument("--warmup_proportion", type=float, default=0.1)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.98)
    g.add_argument("--adam_eps", type=float, default=1e-6)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="global gradient-norm clip (0 = off)")
    return parser


def adamw_implementation(groups, args) -> dict:
    """AdamW's keyword for its implementation: ``fused=True`` (one kernel over all parameters) when every
    parameter is on CUDA, unless ``--no_fused_adamw``; nothing elsewhere, so CPU runs keep torch's
    default implementation."""
    params = [p for group in groups for p in group["params"]]
    if getattr(args, "no_fused_adamw", False) or not params or not all(p.is_cuda for p in params):
        return {}
    return {"fused": True}


WEIGHT_DECAY_EXCLUSIONS = ("norms_and_1d", "bias_and_LayerNorm")


def weight_decay_exclusion(args) -> str | None:
    """``--weight_decay_exclude``, or the recipe's: CLIP4Clip's list under its optimiser; None keeps the
    method's own rule."""
    chosen = getattr(args, "weight_decay_exclude", None)
    if chosen is None and getattr(args, "optim", "adamw") == "bertadam":
        return "bias_and_LayerNorm"
    return chosen


def authors_layer_norms(model: nn.Module) -> set[int]:
    """ids of the parameters of the norms that CLIP4Clip-lineage code names ``LayerNorm``: BERT-style ones
    (a Hugging Face text tower, HMMC's MLM transform, here any ``nn.LayerNorm`` not called ``ln_*``) and
    those under a module's ``authors_layer_norm_prefixes`` (the tight cross encoder, a BERT there). CLIP's
    own norms are ``ln_*`` in both code bases, and BatchNorms are not LayerNorms."""
    ids: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and not name.rpartition(".")[2].startswith("ln_"):
            ids.update(id(p) for p in module.parameters(recurse=False))
        prefixes = tuple(getattr(module, "authors_layer_norm_prefixes", ()))
        if prefixes:
            for inner_name, inner in module.named_modules():
                if isinstance(inner, nn.LayerNorm) and inner_name.startswith(prefixes):
                    ids.update(id(p) for p in inner.parameters(recurse=False))
    return ids


def exclusion_rule(model: nn.Module, exclusion: str) -> Callable[[str, Tensor], bool]:
    if exclusion == "norms_and_1d":
        return norms_and_1d  # the heads' default rule, whatever a head overrides it with
    layer_norms = authors_layer_norms(model)
    return lambda name, param: "bias" in name or id(param) in layer_norms


def regroup_weight_decay(groups: list[dict], excluded: Callable[[str, Tensor], bool], weight_decay: float) -> list[dict]:
    """Each group split again into decayed and spared parameters by ``excluded(name, param)``, keeping its
    learning rate; labels end in ``_no_decay`` for the spared part, as the heads write them."""
    out = []
    for group in groups:
        label = group["group"].removesuffix("_no_decay")
        split: dict[bool, list[int]] = {}
        for i, (name, param) in enumerate(zip(group["names"], group["params"])):
            split.setdefault(bool(excluded(name, param)), []).append(i)
        for spared, chosen in sorted(split.items()):
            out.append({**group, "params": [group["params"][i] for i in chosen],
                        "names": [group["names"][i] for i in chosen],
                        "weight_decay": 0.0 if spared else weight_decay,
                        "group": label + ("_no_decay" if spared else "")})
    return out


def optimizer_groups(model, args) -> list[dict]:
    """The model's parameter groups, with ``names``, after the weight-decay exclusion in force."""
    groups = model.param_groups(args.lr, args.coef_lr, args.weight_decay)
    exclusion = weight_decay_exclusion(args)
    if exclusion is not None:
        groups = regroup_weight_decay(groups, exclusion_rule(model, exclusion), args.weight_decay)
    return groups


def build_optimizer(model, args, total_steps: int) -> tuple[Optimizer, LambdaLR]:
    groups = optimizer_groups(model, args)
    for group in groups:
        group.pop("names", None)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optim == "bertadam":
        optimizer = BertAdam(groups, lr=args.lr, betas=betas, eps=args.adam_eps, max_grad_norm=1.0)
        shape = clip4clip_warmup_cosine
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=betas, eps=args.adam_eps,
                                      **adamw_implementation(groups, args))
        shape = warmup_cosine
    total = max(1, total_steps)
    # Step k (0-based) trains at the rate for progress k / total: BertAdam's steps-taken-so-far count.
    scheduler = LambdaLR(optimizer, lambda step: shape(min(1.0, step / total), args.warmup_proportion))
    return optimizer, scheduler
