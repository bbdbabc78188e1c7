"""HMMC: Hierarchical Matching and Momentum Contrast (``--method hmmc``), after github.com/cheetah003/HMMC.

Video side: CLIP frame features f (B, T, D) -> temporal transformer o = TT(f + P) + f (``--use_temp``)
-> v = masked mean of norm(o_i) (a mean of unit vectors, not re-normalised). Padded frames (video mask
0) are hidden from the temporal attention and left out of every mean, so padding never changes a
feature. HMMC's loader never pads (its 12 slots repeat stored frames of a short video, and its model reads
them all): ``--padded_frames stretch`` gives that (an all-ones mask), docs/reproduce.md the difference.
The raw frames f are kept for hierarchical matching (``--use_frame_fea``).

Retrieval score: cos(t, v) + mean of the top-k cos(t, f_i) over the valid frames (``--top_frames``);
HMMC's s·cos(t, v) + mean top-k s·cos(t, f_i) divided by the logit scale s, so rankings are the same.

Fine-tuning (the default): the dual loss w_vtm·CE_sym(s·t̂v̂ᵀ) + w_ftm·mean over valid frames of
CE_sym(s·t̂f̂_iᵀ), with CE_sym the project's ½(rows + columns) convention (HMMC's code sums
both, i.e. twice this). Pre-training (``--hmmc_stage pretrain``, implied by main_pretrain.py's
``--do_pretrain``): ``training_step`` runs MoCo (query forward, momentum update, key forward,
FAM/VTM/FTM against queues, enqueue, MLM); see ``HMMC.training_step``. Fine-tuning drops the
pre-training-only state of a checkpoint on load (``HMMC.pretrain_only_prefixes``).

Choices where HMMC's code cannot be followed or is a bug:
* Logit scale: CLIP's learnable one (clamped at 100 by the engine) by default; ``--hmmc_fixed_logit_scale``
  fixes it at 100 as HMMC's untracked tensor does. In pre-training it is frozen (no loss uses it).
* [MASK] for CLIP's vocabulary: a learned embedding (plus the position embedding) replaces the token
  embedding of masked positions, so no BPE merge is overwritten (HMMC reuses id 49394). Padding (id 0,
  explicit), SOT and EOT are never masked. The MLM runs through the causal text tower, as HMMC's does.
* Every pre-training loss is computed on the batch gathered from all ranks, identically on every rank:
  the projector/predictor BatchNorm sees the global batch (what SyncBatchNorm would give) and the MLM
  masks are drawn on the gathered ids, so 2 ranks equal 1 process (tested).
* Built only when used: no t_projector and no tag queue (never reached in HMMC), no FAM modules with
  ``--weight_fam 0``, no MLM head with ``--weight_mlm 0``: every trainable parameter reaches the loss.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.clip import CLIP, Transformer
from modules.clip.tokenizer import get_tokenizer
from modules.clip.transformer import BlockHook
from modules.components import BertMasker, FeatureQueue, MomentumTwin, queue_infonce
from modules.components.hf_text import HFTextTower, hf_tokenizer, load_hf_tokenizer
from modules.flags import arg

from .base import RetrievalHead, masked_mean, normalise, register_head, symmetric_infonce
from .clip4clip import key_padding_mask

log = logging.getLogger(__name__)

FRAME_POSITIONS = 48  # rows of HMMC's learned frame-position table


def add_hmmc_args(parser) -> None:
    g = parser.add_argument_group("HMMC (--method hmmc)")
    g.add_argument("--hmmc_stage", choices=("finetune", "pretrain"), default=None,
                   help="finetune: dual contrastive loss; pretrain: momentum encoders, queues, FAM/VTM/FTM/MLM "
                        "(default: pretrain under main_pretrain.py's --do_pretrain, else finetune)")
    g.add_argument("--use_temp", action="store_true",
                   help="4-block temporal transformer over the frames (without it: mean of the normalised frames); "
                        "off by default as in HMMC's CLI, on in every published run and in configs/hmmc_*.yaml")
    g.add_argument("--use_frame_fea", action="store_true",
                   help="frame-level matching: FTM in pre-training, the frame loss in fine-tuning, top-k frames at "
                        "test (off by default as in HMMC's CLI, on in every published run)")
    g.add_argument("--top_frames", type=int, default=3, help="k of the top-k frame term of the retrieval score")
    g.add_argument("--hmmc_fixed_logit_scale", action="store_true",
                   help="fine-tune with s fixed at 100 (HMMC's code) instead of CLIP's learnable logit scale")
    g.add_argument("--weight_vtm_finetune", type=float, default=0.85, help="fine-tuning video-text loss weight")
    g.add_argument("--weight_ftm_finetune", type=float, default=0.15, help="fine-tuning frame-text loss weight")
    g.add_argument("--weight_fam", type=float, default=0.05, help="pre-training: frame adjacency matching (0 = off)")
    g.add_argument("--weight_vtm", type=float, default=0.45, help="pre-training: video-text matching")
    g.add_argument("--weight_ftm", type=float, default=0.45, help="pre-training: frame-text matching")
    g.add_argument("--weight_mlm", type=float, default=0.05, help="pre-training: masked language modelling (0 = off)")
    g.add_argument("--contrast_num_negative", type=int, default=1024,
                   help="queue size K (a multiple of the global batch)")
    g.add_argument("--contrast_momentum", type=float, default=0.99, help="EMA coefficient m of the momentum encoders")
    g.add_argument("--contrast_temperature", type=float, default=0.07, help="tau of the queue InfoNCE losses")
    g.add_argument("--mlm_probability", type=float, default=0.15, help="share of text tokens the MLM predicts")
    g.add_argument("--hmmc_projector_hidden", type=int, default=4096,
                   help="hidden width of the FAM projector/predictor")
    g.add_argument("--text_encoder", default=None,
                   help="a local Hugging Face model folder (e.g. hfl/chinese-roberta-wwm-ext) replacing CLIP's text "
                        "tower, with its tokenizer; needed by --language chinese")
    g.add_argument("--text_lr", type=float, default=None,
                   help="learning rate of the text encoder (HMMC: 1e-4 pre-training, 1e-7 fine-tuning); "
                        "default: CLIP's rule (lr x coef_lr)")


# ----------------------------------------------------------------------------------------------------
# Video features and the hierarchical score


class TemporalTransformer(nn.Module):
    """o = TT(f + P) + f: 4 pre-LN blocks (width D, D/64 heads, QuickGELU MLP 4D), 48 learned frame
    positions, padded frames hidden from every query."""

    def __init__(self, dim: int, layers: int = 4, positions: int = FRAME_POSITIONS):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(positions, dim)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.02)
        self.transformer = Transformer(dim, layers, max(1, dim // 64))
        self.transformer.init_weights()

    def forward(self, frames: Tensor, video_mask: Tensor) -> Tensor:
        positions = self.frame_position_embeddings.num_embeddings
        if frames.shape[1] > positions:
            raise ValueError(f"HMMC's temporal transformer has {positions} frame positions; "
                             f"got {frames.shape[1]} frames")
        x = frames + self.frame_position_embeddings.weight[: frames.shape[1]].to(frames.dtype)
        return self.transformer(x, attn_mask=key_padding_mask(video_mask)) + frames


def encode_frames(visual: nn.Module, video: Tensor, video_mask: Tensor) -> Tensor:
    """(B, T, 3, H, W) -> CLIP frame features (B, T, D) of any vision tower (query or momentum copy);
    padded frames are not encoded and their rows are 0 (a 3-D patch needs the whole clip: zeroed after)."""
    batch, num_frames = video.shape[:2]
    valid = video_mask.bool()
    if visual.conv2 is not None or bool(valid.all()):
        frames = visual(video.flatten(0, 1), num_frames=num_frames).view(batch, num_frames, -1)
        return frames * valid.unsqueeze(-1).to(frames.dtype)
    encoded = visual(video[valid])
    frames = encoded.new_zeros(batch, num_frames, encoded.shape[-1])
    frames[valid] = encoded
    return frames


def video_feature(frames: Tensor, video_mask: Tensor, temporal: nn.Module | None) -> Tensor:
    """v = masked mean of norm(o_i), o = TT(f + P) + f (or the raw frames without a temporal module)."""
    out = temporal(frames, video_mask) if temporal is not None else frames
    return masked_mean(normalise(out), video_mask)


def top_frames_mean(frame_scores: Tensor, video_mask: Tensor, k: int) -> Tensor:
    """(Nt, Nv, T) scores -> (Nt, Nv): mean of the k largest over each video's valid frames (all of
    them when it has fewer than k). Ties give the same value whichever is picked."""
    scores = frame_scores.masked_fill(~video_mask.bool()[None], float("-inf"))
    top = scores.topk(min(k, scores.shape[-1]), dim=-1).values
    picked = torch.isfinite(top)
    return torch.where(picked, top, 0.0).sum(-1) / picked.sum(-1).clamp_min(1)


def frame_text_infonce(text: Tensor, frames: Tensor, video_mask: Tensor, scale: Tensor) -> Tensor:
    """Fine-tuning frame loss: for every frame slot i, symmetric InfoNCE of s·t̂ f̂_iᵀ (½ rows + ½ columns),
    averaged over the valid (video, frame) pairs (= (1/T) Σ_i without padding). A padded frame is
    neither a target nor a negative."""
    valid = video_mask.bool().t()  # (T, N): slot i of video n is a real frame
    logits = scale * torch.einsum("nd,mtd->tnm", normalise(text), normalise(frames))  # (T, texts, videos)
    t2v = logits.masked_fill(~valid[:, None, :], float("-inf")).log_softmax(-1).diagonal(dim1=1, dim2=2)
    v2t = logits.log_softmax(1).diagonal(dim1=1, dim2=2)
    per_pair = -0.5 * (t2v + v2t)
    return torch.where(valid, per_pair, 0.0).sum() / valid.sum().clamp_min(1)


# ----------------------------------------------------------------------------------------------------
# Pre-training losses (HMMC's FAM, VTM, FTM, MLM)


def adjacent_frame_pairs(video_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """FAM's ordered pairs (video, query frame, key frame): (i, i+1) and (i+1, i) for every i with both
    frames valid; 2(T-1) per unpadded video."""
    valid = video_mask.bool()
    both = valid[:, :-1] & valid[:, 1:]
    video, first = both.nonzero(as_tuple=True)
    return (torch.cat([video, video]), torch.cat([first, first + 1]), torch.cat([first + 1, first]))


def frame_adjacency_loss(predictions: Tensor, keys: Tensor, queue: Tensor, temperature: float,
                         video_mask: Tensor) -> Tensor:
    """FAM = (1/(T-1)) Σ_i [ℓ(h(g(f_i)), g^k(f^k_{i+1})) + ℓ(h(g(f_{i+1})), g^k(f^k_i))], ℓ the queue
    InfoNCE averaged over videos; with padding, the sum over valid pairs / the number of adjacent pairs."""
    video, query_frame, key_frame = adjacent_frame_pairs(video_mask)
    terms = queue_infonce(predictions[video, query_frame], keys[video, key_frame], queue, temperature, reduction="none")
    return terms.sum() / max(1, terms.shape[0] // 2)


def frame_text_matching(text: Tensor, frames: Tensor, text_keys: Tensor, frame_keys: Tensor, frame_queue: Tensor,
                        text_queue: Tensor, temperature: float, video_mask: Tensor) -> Tensor:
    """FTM = (1/T) Σ_i [ℓ(t, f^k_i, Q_frame) + ℓ(f_i, t^k, Q_text)] over the valid frames."""
    video, frame = video_mask.bool().nonzero(as_tuple=True)
    to_frames = queue_infonce(text[video], frame_keys[video, frame], frame_queue, temperature, reduction="none")
    to_text = queue_infonce(frames[video, frame], text_keys[video], text_queue, temperature, reduction="none")
    return (to_frames + to_text).sum() / max(1, video.shape[0])


def projection_mlp(dim: int, hidden: int) -> nn.Sequential:
    """HMMC's projector g and predictor h: Linear, BatchNorm, ReLU, Linear (dim -> hidden -> dim)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


def project_valid(mlp, frames: Tensor, valid: Tensor) -> Tensor:
    """``mlp`` over the valid frames only (BatchNorm statistics never see padding), back in (B, T, D)."""
    projected = mlp(frames[valid])
    out = projected.new_zeros(*frames.shape[:2], projected.shape[-1])
    out[valid] = projected
    return out


class MaskEmbeddingHook(BlockHook):
    """CLIP has no [MASK] token: before block 0, masked positions get a learned embedding plus their
    position embedding instead of their token embedding."""

    def __init__(self, masked: Tensor, embedding: Tensor, positions: Tensor):
        self.masked, self.embedding, self.positions = masked, embedding, positions

    def before_block(self, index: int, x: Tensor) -> Tensor:
        if index:
            return x
        replacement = (self.embedding + self.positions[: x.shape[1]]).to(x.dtype)
        return torch.where(self.masked[..., None], replacement, x)


# ----------------------------------------------------------------------------------------------------


@register_head("hmmc", add_args=add_hmmc_args)
class HMMC(RetrievalHead):
    # What fine-tuning drops from a pre-training checkpoint (it keeps clip., temporal., text_tower.).
    pretrain_only_prefixes = ("momentum.", "queue.", "v_projector.", "v_predictor.", "mlm_head.",
                              "mlm_mask_embedding", "masker.")

    def __init__(self, clip: CLIP, args=None):
        super().__init__(clip, args)
        dim = clip.embed_dim
        self.stage = arg(args, "hmmc_stage", None) or ("pretrain" if arg(args, "do_pretrain", False) else "finetune")
        self.use_frame_fea = arg(args, "use_frame_fea", False)
        self.top_k = arg(args, "top_frames", 3)
        self.fixed_logit_scale = arg(args, "hmmc_fixed_logit_scale", False)
        self.weights_finetune = (arg(args, "weight_vtm_finetune", 0.85), arg(args, "weight_ftm_finetune", 0.15))
        self.weights = {name: arg(args, f"weight_{name}", default)
                        for name, default in (("fam", 0.05), ("vtm", 0.45), ("ftm", 0.45), ("mlm", 0.05))}
        if not self.use_frame_fea:
            self.weights["ftm"] = 0.0
        self.temperature = arg(args, "contrast_temperature", 0.07)
        if self.top_k < 1:
            raise ValueError(f"--top_frames must be >= 1, got {self.top_k}")

        self.temporal = TemporalTransformer(dim) if arg(args, "use_temp", False) else None
        path = arg(args, "text_encoder", None)
        if arg(args, "language", "english") == "chinese" and path is None:
            raise ValueError("--language chinese with --method hmmc needs --text_encoder PATH (a local copy of "
                             "hfl/chinese-roberta-wwm-ext)")
        self.text_tower = HFTextTower(path, dim) if path else None
        if self.text_tower is not None:
            clip.text.requires_grad_(False)  # replaced: a trainable but unused tower would break DDP
        if self.fixed_logit_scale or self.stage == "pretrain":
            # Fixed at 100, or unused by every pre-training loss (they use --contrast_temperature).
            clip.logit_scale.requires_grad_(False)
            if self.fixed_logit_scale:
                with torch.no_grad():
                    clip.logit_scale.fill_(math.log(100.0))
        if self.stage == "pretrain":
            self._build_pretraining(dim, args)
            self.register_load_state_dict_post_hook(HMMC._resync_twin_after_load)
        else:
            self.register_load_state_dict_pre_hook(HMMC._drop_pretraining_state)

    def _build_pretraining(self, dim: int, args) -> None:
        """Pre-training-only state: built only when used, so every trainable parameter reaches the loss.
        No t_projector (built but unused in HMMC's code) and no tag queue (its branch never runs)."""
        num_frames = arg(args, "max_frames", 12)
        layout = {"video": (dim, 1), "text": (dim, 1)}
        if self.weights["ftm"]:
            layout["frame_raw"] = (dim, num_frames)
        if self.weights["fam"]:
            hidden = arg(args, "hmmc_projector_hidden", 4096)
            self.v_projector = projection_mlp(dim, hidden)
            self.v_predictor = projection_mlp(dim, hidden)
            layout["frame_proj"] = (dim, num_frames)
        if self.weights["mlm"]:
            self._build_mlm(dim, arg(args, "mlm_probability", 0.15), arg(args, "seed", 42))
        self.queue = FeatureQueue(arg(args, "contrast_num_negative", 1024), layout)
        self.momentum = MomentumTwin(self._query_encoders(), arg(args, "contrast_momentum", 0.99))

    def _build_mlm(self, dim: int, rate: float, seed: int) -> None:
        if self.text_tower is not None:
            tokenizer = load_hf_tokenizer(self.args.text_encoder)
            vocab = self.text_tower.vocab_size
            self.masker = BertMasker(vocab, tokenizer.pad_token_id, tokenizer.all_special_ids,
                                     mask_id=tokenizer.mask_token_id, rate=rate, seed=seed)
            self.mlm_mask_embedding = None
        else:
            clip_tokens = get_tokenizer()
            vocab = self.clip.config.text.vocab_size
            # CLIP pads with id 0 (also the BPE token "!", which is therefore never masked); SOT/EOT never.
            self.masker = BertMasker(vocab, 0, (clip_tokens.sot_id, clip_tokens.eot_id), mask_id=None, rate=rate,
                                     seed=seed)
            self.mlm_mask_embedding = nn.Parameter(torch.randn(self.clip.config.text.width) * 0.02)
        self.mlm_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=1e-12),
                                      nn.Linear(dim, vocab))  # BERT's transform, then an untied decoder

    # -- loading ---------------------------------------------------------------------------------
    def _drop_pretraining_state(self, state_dict, prefix, *unused) -> None:
        """Fine-tuning loads a pre-training checkpoint: the momentum copies, queues, projector/predictor
        and MLM head are dropped (HMMC's BirdModel keeps the query encoders only)."""
        dropped = [k for k in state_dict if k[len(prefix):].startswith(self.pretrain_only_prefixes)]
        for key in dropped:
            del state_dict[key]
        if dropped:
            log.info("hmmc fine-tuning: %d pre-training-only tensors of the checkpoint not loaded", len(dropped))

    @staticmethod
    def _resync_twin_after_load(module: "HMMC", incompatible) -> None:
        """Weights without momentum copies (CLIP, a fine-tuned model): the keys restart equal to the
        loaded queries, as at construction."""
        missing = [k for k in incompatible.missing_keys if k.startswith("momentum.copies.")]
        if missing:
            module.momentum.sync(module._query_encoders())
            for key in missing:
                incompatible.missing_keys.remove(key)

    # -- encoders --------------------------------------------------------------------------------
    def _query_encoders(self) -> dict[str, nn.Module]:
        """The modules with momentum copies: vision tower (+ temporal transformer), text tower, projector."""
        encoders = {"visual": self.clip.visual, "text": self.text_tower or self.clip.text}
        if self.temporal is not None:
            encoders["temporal"] = self.temporal
        if hasattr(self, "v_projector"):
            encoders["v_projector"] = self.v_projector
        return encoders

    def _text(self, tower: nn.Module, ids: Tensor, mask: Tensor, hooks=(), return_tokens: bool = False):
        if isinstance(tower, HFTextTower):
            return tower(ids, mask, return_tokens=return_tokens)
        return tower(ids, hooks=hooks, return_tokens=return_tokens)

    def _video(self, encoders, video: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor]:
        frames = encode_frames(encoders["visual"], video, video_mask)
        temporal = encoders["temporal"] if "temporal" in encoders else None
        return video_feature(frames, video_mask, temporal), frames

    def encode_text(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        return self._text(self.text_tower or self.clip.text, text_ids, text_mask)

    def encode_video(self, video: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(v, raw frame features f, video mask)."""
        v, frames = self._video(self._query_encoders(), video, video_mask)
        return v, frames, video_mask

    def tokenizer(self):
        """The Hugging Face tower's own tokenizer; None (CLIP's BPE) otherwise."""
        return hf_tokenizer(self.args.text_encoder) if self.text_tower is not None else None

    # -- fine-tuning and retrieval -----------------------------------------------------------------
    def logit_scale(self) -> Tensor:
        if self.fixed_logit_scale:
            return self.clip.logit_scale.new_tensor(100.0)
        return super().logit_scale()

    def similarity(self, text_features, video_features) -> Tensor:
        video, frames, video_mask = video_features
        text = normalise(text_features)
        scores = text @ normalise(video).t()
        if self.use_frame_fea:
            frame_scores = torch.einsum("nd,mtd->nmt", text, normalise(frames))
            scores = scores + top_frames_mean(frame_scores, video_mask, self.top_k)
        return scores

    def compute_loss(self, text_features, video_features) -> dict[str, Tensor]:
        video, frames, video_mask = video_features
        scale = self.logit_scale()
        vtm = symmetric_infonce(scale * normalise(text_features) @ normalise(video).t())
        if not self.use_frame_fea:
            return {"loss": vtm, "vtm": vtm}
        ftm = frame_text_infonce(text_features, frames, video_mask, scale)
        w_vtm, w_ftm = self.weights_finetune
        return {"loss": w_vtm * vtm + w_ftm * ftm, "vtm": vtm, "ftm": ftm}

    def param_groups(self, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
        """The base rule; with ``--text_lr`` the text encoder gets its own rate, as HMMC's ``text_lr``: CLIP's
        text tower, or the Hugging Face model with its projection to the joint space (HMMC's
        ``text_encoder`` module holds both, so the projection trains at 1e-7 in fine-tuning too)."""
        groups = super().param_groups(lr, coef_lr, weight_decay)
        text_lr = arg(self.args, "text_lr", None)
        if text_lr is None:
            return groups
        out = []
        for group in groups:
            suffix = "_no_decay" if group["group"].endswith("_no_decay") else ""
            is_text = [n.startswith(("clip.text.", "text_tower.")) for n in group["names"]]
            for text, rate, label in ((False, group["lr"], group["group"]), (True, text_lr, "text" + suffix)):
                chosen = [i for i, t in enumerate(is_text) if t == text]
                if chosen:
                    out.append({**group, "params": [group["params"][i] for i in chosen],
                                "names": [group["names"][i] for i in chosen], "lr": rate, "group": label})
        return out

    # -- pre-training ------------------------------------------------------------------------------
    def check_batch(self, global_batch: int) -> None:
        """Called by the engine at start-up: the queues overwrite whole global batches."""
        if self.stage == "pretrain":
            self.queue.check_batch(global_batch)

    def training_step(self, batch: dict, ctx) -> dict[str, Tensor]:
        """Fine-tuning: the default (encode, gather, ``compute_loss``). Pre-training, in HMMC's order:
        1. query forward (gathered from every rank, with gradient); 2. momentum update of the key
        encoders (once per optimiser step); 3. key forward (no gradient, gathered); 4. FAM, VTM, FTM
        against the queues; 5. enqueue the normalised keys of the global batch; 6. MLM through the
        query text encoder. Every loss is computed on the global batch, the same on every rank
        (BatchNorm statistics too), so DDP's average gives one process's gradient."""
        if self.stage != "pretrain":
            return super().training_step(batch, ctx)
        ids, text_mask, video, video_mask = batch["text_ids"], batch["text_mask"], batch["video"], batch["video_mask"]
        query = self._query_encoders()
        with ctx.autocast():
            text = self._text(query["text"], ids, text_mask)
            video_feat, frames = self._video(query, video, video_mask)
        text, video_feat, frames = ctx.gather((text, video_feat, frames))
        valid = ctx.gather_nograd(video_mask).bool()

        self.momentum.update(query, step=ctx.step)
        with torch.no_grad(), ctx.autocast():
            text_key = self._text(self.momentum["text"], ids, text_mask)
            video_key, frame_keys = self._video(self.momentum, video, video_mask)
        text_key, video_key, frame_keys = (ctx.gather_nograd(x).float() for x in (text_key, video_key, frame_keys))

        zero = text.new_zeros(())
        negatives = {name: self.queue.snapshot(name) for name in self.queue.layout}
        keys = {"video": video_key, "text": text_key}
        tau = self.temperature
        losses = {"vtm": queue_infonce(video_feat, text_key, negatives["text"], tau)
                  + queue_infonce(text, video_key, negatives["video"], tau), "fam": zero, "ftm": zero, "mlm": zero}
        if "frame_raw" in negatives:
            losses["ftm"] = frame_text_matching(text, frames, text_key, frame_keys, negatives["frame_raw"],
                                                negatives["text"], tau, valid)
            keys["frame_raw"] = frame_keys
        if "frame_proj" in negatives:
            predictions = project_valid(lambda x: self.v_predictor(self.v_projector(x)), frames, valid)
            with torch.no_grad():
                projected_keys = project_valid(self.momentum["v_projector"], frame_keys, valid)
            losses["fam"] = frame_adjacency_loss(predictions, projected_keys, negatives["frame_proj"], tau, valid)
            keys["frame_proj"] = projected_keys
        self.queue.enqueue(keys, valid={"frame_raw": valid, "frame_proj": valid})
        if self.weights["mlm"]:
            losses["mlm"] = self._mlm_loss(ids, text_mask, ctx)
        total = sum(self.weights[name] * losses[name] for name in ("fam", "vtm", "ftm", "mlm"))
        return {"loss": total, **losses}

    def _mlm_loss(self, ids: Tensor, text_mask: Tensor, ctx) -> Tensor:
        """Masks drawn on the gathered ids (the same on every rank), this rank's rows through the query
        text encoder, CE over the masked positions of the global batch."""
        corrupted = self.masker(ctx.gather_nograd(ids), ctx.gather_nograd(text_mask))
        rows = slice(ctx.rank * ids.shape[0], (ctx.rank + 1) * ids.shape[0])
        tower = self.text_tower or self.clip.text
        hooks = ()
        if self.mlm_mask_embedding is not None:
            hooks = (MaskEmbeddingHook(corrupted.masked[rows], self.mlm_mask_embedding, tower.positional_embedding),)
        with ctx.autocast():
            _, tokens = self._text(tower, corrupted.ids[rows], text_mask, hooks=hooks, return_tokens=True)
        tokens = ctx.gather(tokens)
        selected = corrupted.selected
        logits = self.mlm_head(tokens[selected])
        loss = F.cross_entropy(logits.float(), corrupted.labels[selected], reduction="sum")
        return loss / selected.sum().clamp_min(1)
