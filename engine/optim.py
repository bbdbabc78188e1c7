"""Optimiser and learning-rate schedule.

Default: AdamW over the head's parameter groups (CLIP at lr x coef_lr, new modules at lr, no weight
decay on biases and norms), linear warm-up then cosine to 0; its fused kernel on CUDA. ``--optim bertadam`` reproduces
CLIP4Clip's BertAdam for parity: no bias correction, each parameter's gradient clipped to norm 1,
decoupled weight decay, and its warm-up-cosine whose cosine is *not* re-normalised after warm-up.
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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


def build_optimizer(model, args, total_steps: int) -> tuple[Optimizer, LambdaLR]:
    groups = model.param_groups(args.lr, args.coef_lr, args.weight_decay)
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
    # Step k (0-based) trains at the rate for progress (k + 1) / total, so the first step is not wasted at lr 0.
    scheduler = LambdaLR(optimizer, lambda step: shape(min(1.0, (step + 1) / total), args.warmup_proportion))
    return optimizer, scheduler
