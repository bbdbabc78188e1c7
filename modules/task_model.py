"""A method head plus the modules of a downstream task (a caption decoder, an answer classifier).

The engine trains a ``TaskModel`` exactly as it trains a head: it calls ``forward(batch, ctx)`` for the
named losses of a micro-step and the same hooks (``after_optimizer_step``, ``check_batch``,
``clamp_logit_scale``, ``param_groups``). The head keeps providing the video side
(``head.visual_tokens``) and, where the task adds it, its own retrieval loss.

Weights: ``--init_model`` of a retrieval or pre-training checkpoint (ours or a seed's) initialises the
head as in ``main_task_retrieval.py``, the task modules start fresh (to train them; evaluating them so is
refused); ``--init_model`` of a checkpoint this task saved (``model_best.pt`` of main_task_caption.py, ...)
restores everything, strictly.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from modules.clip import CheckpointError
from modules.converters.ours import read_model_record
from modules.factory import build_model

log = logging.getLogger("univtr")


class TaskModel(nn.Module):
    task_name = "task"  # the task's checkpoints carry head = "<task_name>/<method head>"
    # Flags of the task's own modules (decoder depth, answer head) that a checkpoint of this task restores.
    recorded_flags: tuple[str, ...] = ()

    def __init__(self, head: nn.Module, args=None):
        super().__init__()
        self.head = head
        self.args = args

    # -- what the engine and the checkpoints read --------------------------------------------------
    @property
    def clip(self) -> nn.Module:
        return self.head.clip

    @property
    def head_name(self) -> str:
        return f"{self.task_name}/{self.head.head_name}"

    def tokenizer(self):
        return self.head.tokenizer()

    def check_batch(self, global_batch: int) -> None:
        self.head.check_batch(global_batch)

    def clamp_logit_scale(self) -> None:
        self.head.clamp_logit_scale()

    def after_optimizer_step(self, ctx) -> None:
        self.head.after_optimizer_step(ctx)

    def forward(self, batch: dict, ctx) -> dict[str, Tensor]:
        return self.training_step(batch, ctx)

    def training_step(self, batch: dict, ctx) -> dict[str, Tensor]:
        raise NotImplementedError

    def head_retrieval_loss(self, text_ids: Tensor, text_mask: Tensor, video_features, ctx) -> dict[str, Tensor]:
        """The head's own retrieval loss (its ``compute_loss`` on the gathered batch) for these texts and the
        videos' already encoded features (``head.video_features_and_tokens``: one pass of the video tower)."""
        with ctx.autocast():
            text = self.head.encode_text(text_ids, text_mask)
        return self.head.compute_loss(ctx.gather(text), ctx.gather(video_features))

    def task_module_names(self) -> Sequence[str]:
        """Top-level children the task adds (trained at the full --lr)."""
        return [name for name, _ in self.named_children() if name != "head"]

    def task_modules_with_weights(self) -> list[str]:
        """The task modules that hold parameters (what a checkpoint of this task must provide)."""
        return [name for name in self.task_module_names() if any(True for _ in getattr(self, name).parameters())]

    def param_groups(self, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
        """The head's groups (CLIP at lr x coef_lr, its new modules at lr) plus the task modules at lr,
        with the head's no-weight-decay rule."""
        groups = self.head.param_groups(lr, coef_lr, weight_decay)
        for group in groups:
            group["names"] = [f"head.{n}" for n in group.get("names", [])]
        by_decay: dict[bool, list] = {}
        for child in self.task_module_names():
            for name, param in getattr(self, child).named_parameters(prefix=child):
                if param.requires_grad:
                    by_decay.setdefault(self.head.no_weight_decay(name, param), []).append((name, param))
        for no_decay, named in sorted(by_decay.items()):
            groups.append({"params": [p for _, p in named], "names": [n for n, _ in named], "lr": lr,
                           "weight_decay": 0.0 if no_decay else weight_decay,
                           "group": self.task_name + ("_no_decay" if no_decay else "")})
        return groups


def build_task_model(args, make: "type[TaskModel]", **kwargs) -> TaskModel:
    """``make(head, args, **kwargs)`` around the head the flags describe. A checkpoint of this very task
    in ``--init_model`` is loaded into the whole model (strict); any other file initialises the head."""
    init = getattr(args, "init_model", None)
    record = read_model_record(init) if init else None
    own = record is not None and str(record.get("head", "")).startswith(make.task_name + "/")
    if own:
        for flag in make.recorded_flags:  # the checkpoint rebuilds its own task modules
            recorded = record.get("args", {}).get(flag)
            if recorded is not None and recorded != getattr(args, flag, None):
                log.info("--%s %s restored from %s", flag, recorded, init)
                setattr(args, flag, recorded)
        args.init_model = None  # the head is built bare; the whole model's weights follow
    try:
        model = make(build_model(args), args, **kwargs)
    finally:
        args.init_model = init
    # Modules no checkpoint filled (a run that only evaluates refuses them): from another task's or a
    # retrieval file, the task's own modules and whatever the head's load left fresh.
    model.untrained_modules = [] if own else [*(f"head.{name}" for name in getattr(model.head, "untrained_modules", ())),
                                              *model.task_modules_with_weights()]
    if own:
        state = torch.load(init, map_location="cpu", weights_only=True)["model"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{init}: a {make.task_name} checkpoint that does not fit this model: missing "
                                  f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]} (other flags when saved?)")
        log.info("%s: %s checkpoint loaded (%d tensors)", init, make.task_name, len(state))
    return model
