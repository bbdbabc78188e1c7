"""One interface for every retrieval method, and the registry that names them.

A method is a ``RetrievalHead`` subclass in its own file under ``modules/heads/``, registered with
``@register_head("name", add_args=add_name_args)`` (the method's own flags, if any, live in the same
file). The engine only ever calls:

* ``encode_text(text_ids, text_mask)`` and ``encode_video(video, video_mask)`` -> features: a tensor
  or a tuple of tensors, batch first. The engine gathers them across ranks and evaluates in chunks.
* ``similarity(text_features, video_features)`` -> (Nt, Nv) scores before the logit scale.
* ``compute_loss(text_features, video_features)`` -> {"loss": ..., other named terms} on the (gathered)
  batch, rows = texts, ground truth on the diagonal.
* ``training_step(batch, ctx)`` -> named losses of one micro-step (default: encode, gather,
  ``compute_loss``); a pre-training head overrides it (masked inputs, momentum encoders, queues), and
  ``after_optimizer_step(ctx)`` for what follows each optimiser step. State kept between steps is
  registered as buffers or sub-modules, so checkpoints carry it.
* ``param_groups(args)`` -> optimiser groups (CLIP at lr x coef_lr, new modules at lr).
"""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.clip import CLIP

HEADS: dict[str, type["RetrievalHead"]] = {}
HEAD_FLAGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}  # head name -> adds its own flags


def register_head(name: str, add_args: Callable[[argparse.ArgumentParser], None] | None = None
                  ) -> Callable[[type], type]:
    """Class decorator: the head under ``name``; ``add_args(parser)`` adds the method's own flags (the
    parser of every entry script gets them through ``add_head_args``)."""
    def add(cls: type) -> type:
        if name in HEADS:
            raise ValueError(f"a head named {name!r} is already registered ({HEADS[name].__name__})")
        HEADS[name] = cls
        if add_args is not None:
            HEAD_FLAGS[name] = add_args
        cls.head_name = name
        return cls

    return add


def add_head_args(parser: argparse.ArgumentParser) -> None:
    """The flags of every registered head that has its own (``modules.factory.add_model_args``)."""
    for add_args in dict.fromkeys(HEAD_FLAGS.values()):  # each once, in registration order
        add_args(parser)


def list_heads() -> list[str]:
    return sorted(HEADS)


def get_head(name: str) -> type["RetrievalHead"]:
    if name not in HEADS:
        raise ValueError(f"unknown method/head {name!r}; available: {', '.join(list_heads())}")
    return HEADS[name]


def symmetric_infonce(logits: Tensor) -> Tensor:
    """½ (CE over rows + CE over columns) with the diagonal as target (CLIP4Clip's loss, both directions)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def normalise(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of (B, T, D) using a (B, T) 0/1 mask; a row with no valid entry is an error upstream."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def norms_and_1d(name: str, param: Tensor) -> bool:
    """The default no-weight-decay rule: biases, norms and every 1-D parameter (gains, class token,
    logit scale); ``--weight_decay_exclude norms_and_1d`` applies it to any head."""
    return param.ndim < 2 or name.endswith(".bias") or "ln_" in name or "norm" in name.lower()


class RetrievalHead(nn.Module):
    """Base class: CLIP plus whatever the method adds. Subclasses override the encoders they change."""

    head_name = "base"
    # Name prefixes of trainable parameters whose gradient is exactly zero (or None) in the first step
    # by design: DGL's postfix projection behind the causal mask, UMP's generator attention while its
    # zero-initialised output projection is still zero. Tests assert exactly zero for these.
    zero_grad_at_init: tuple[str, ...] = ()
    # Prompt-tuning heads keep every CLIP tensor frozen (no gradient reaches CLIP at all).
    frozen_clip = False
    # State-dict prefixes that only pre-training uses (momentum copies, queues, MLM heads): dropped, with
    # a log line, when a pre-training checkpoint initialises a fine-tuning model.
    pretrain_only_prefixes: tuple[str, ...] = ()

    def __init__(self, clip: CLIP, args=None):
        super().__init__()
        self.clip = clip
        self.args = args

    # -- what the engine calls ------------------------------------------------------------------
    def forward(self, batch: dict, ctx) -> dict[str, Tensor]:
        """One training micro-step (the engine calls it through DDP so DDP sees the step)."""
        return self.training_step(batch, ctx)

    def training_step(self, batch: dict, ctx) -> dict[str, Tensor]:
        """Named losses of one micro-step, ``"loss"`` being the total to back-propagate. ``ctx`` is the
        engine's ``StepContext`` (autocast, gathering across ranks, rank, step). The default: encode
        both sides, gather them from every rank, ``compute_loss`` on the global batch."""
        with ctx.autocast():
            text = self.encode_text(batch["text_ids"], batch["text_mask"])
            video = self.encode_video(batch["video"], batch["video_mask"])
        return self.compute_loss(ctx.gather(text), ctx.gather(video))

    def after_optimizer_step(self, ctx) -> None:
        """Runs after every optimiser step (momentum updates and the like); nothing by default."""

    def check_batch(self, global_batch: int) -> None:
        """Raise ValueError (one line) when the global batch does not suit the head; checked at start-up."""

    def tokenizer(self):
        """The caption tokenizer, ``(texts, max_words) -> (ids, mask)``; None: CLIP's BPE."""
        return None

    def encode_text(self, text_ids: Tensor, text_mask: Tensor):
        return self.clip.encode_text(text_ids, text_mask)

    def encode_video(self, video: Tensor, video_mask: Tensor):
        raise NotImplementedError

    def similarity(self, text_features, video_features) -> Tensor:
        return normalise(text_features) @ normalise(video_features).t()

    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale.exp()

    def score_scale(self) -> float:
        """What turns ``similarity`` into the logits the loss is trained on (the learned logit scale);
        DSL's softmax is taken at this temperature by default (CAMoE's convention)."""
        return float(self.logit_scale().detach())

    def compute_loss(self, text_features, video_features) -> dict[str, Tensor]:
        logits = self.logit_scale() * self.similarity(text_features, video_features)
        return {"loss": symmetric_infonce(logits)}

    def new_module_names(self) -> Sequence[str]:
        """Top-level children created by the method (trained at the full lr); everything under ``clip``
        trains at lr x coef_lr."""
        return [name for name, _ in self.named_children() if name != "clip"]

    def param_groups(self, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: CLIP at lr x coef_lr, new modules at lr; biases, norms, embeddings-as-gains and
        1-D parameters (LayerNorm weights, logit scale) get no weight decay."""
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            is_clip = name.startswith("clip.")
            no_decay = self.no_weight_decay(name, param)
            groups.setdefault((is_clip, no_decay), []).append((name, param))
        out = []
        for (is_clip, no_decay), named in sorted(groups.items()):
            out.append({
                "params": [p for _, p in named],
                "names": [n for n, _ in named],
                "lr": lr * coef_lr if is_clip else lr,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "group": ("clip" if is_clip else "new") + ("_no_decay" if no_decay else ""),
            })
        return out

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Biases, norms and 1-D parameters are not decayed (a head may follow its paper instead)."""
        return norms_and_1d(name, param)

    def clamp_logit_scale(self, max_value: float = 4.6052) -> None:
        """CLIP4Clip clamps the learnable temperature at ln 100 after each step."""
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, max_value)

    def frame_features(self, video: Tensor, video_mask: Tensor | None = None) -> Tensor:
        """(B, T, 3, H, W) -> per-frame CLIP features (B, T, D); padded frames (mask 0) are not encoded
        (their rows are 0) unless a 3-D patch needs the whole clip."""
        if video_mask is None or bool(video_mask.all()) or self.clip.visual.conv2 is not None:
            frames, _ = self.clip.encode_frames(video)
            return frames
        valid = video_mask.bool()
        encoded = self.clip.encode_image(video[valid])
        frames = encoded.new_zeros(*video.shape[:2], encoded.shape[-1])
        frames[valid] = encoded
        return frames

    def visual_tokens(self, video: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The video as a token sequence for a fusion encoder or a caption decoder (captioning, QA):
        [v̄ (masked mean of the frame features); f_1..f_T] (B, 1+T, D) and its 0/1 validity. Heads with
        more to say (T2VLP's tube tokens) override it."""
        frames = self.frame_features(video, video_mask)
        ones = video_mask.new_ones(video_mask.shape[0], 1)
        return torch.cat([masked_mean(frames, video_mask)[:, None], frames], dim=1), torch.cat([ones, video_mask], 1)

    def video_features_and_tokens(self, video: Tensor, video_mask: Tensor):
        """(``encode_video``'s features, ``visual_tokens``) of the same clips, for a task that trains both
        (captioning with the retrieval loss): two passes here; a head whose features hold what its tokens
        are made of overrides it with one."""
        return self.encode_video(video, video_mask), self.visual_tokens(video, video_mask)

