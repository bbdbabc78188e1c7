"""T2VLP: Focus and Align, tube tokens (``--method t2vlp``) (github.com/Unified-Robots/T2VLP, TMM 2022).

Video side: CLIP frames with the last ``--joint_layers`` vision blocks attending across all frames of a
clip (padded frames hidden), frame features f -> meanP video feature v; the input of the first joint
block feeds the tube tokens U (``modules/components/tube.py``). Text: CLIP's EOT feature t and token
features w. Retrieval score: cos(t, v).

Stages (``--t2vlp_stage``):

* ``1`` (default; T2VLP's main_task_clip.py): symmetric InfoNCE on s·t̂v̂ᵀ + local alignment MSE(τ̂, U).
* ``2`` (main_task_fusion.py): a fusion encoder Ψ (CLIP text blocks 0..5, its own positions) over
  [v̄; f; U; w] trained by MLM + prefix LM + VTM with hard negatives + alignment; with
  ``--freeze_backbone`` CLIP and the tube module are frozen and encoded without gradient (what T2VLP
  does with detached inputs and the backbone at 1e-8).
* ``retrieval`` (main_task_retrieval_msrvtt.py): InfoNCE + alignment + VTM on detached inputs; at
  test time the top-K candidates are re-scored by Ψ (``engine/rerank.py``).

Every loss is computed on the batch gathered from all ranks (any per-rank sizes): InfoNCE and the
alignment identically on every rank; the fusion passes on this rank's rows, as its share of the global
mean (``rank_share``). Negatives and MLM/PLM draws come from generators every rank seeds alike, so 2
ranks equal 1 process (tested).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from modules.clip import CLIP
from modules.clip.tokenizer import get_tokenizer
from modules.components import BertMasker
from modules.components.fusion import (MATCH_NORMS, FusionEncoder, HardNegativeSampler, MatchHead, VocabHead,
                                       gather_batch, key_mask, prefix_lm_mask, rank_share)
from modules.components.tube import TubeTokens, local_alignment
from modules.flags import arg

from .base import RetrievalHead, masked_mean, normalise, register_head, symmetric_infonce

log = logging.getLogger(__name__)

STAGES = ("1", "2", "retrieval")
FUSION_MODULES = ("fusion.", "match.", "negatives.", "vocab_head.", "masker.")


def add_t2vlp_args(parser) -> None:
    g = parser.add_argument_group("T2VLP (--method t2vlp)")
    g.add_argument("--t2vlp_stage", choices=STAGES, default="1",
                   help="1: InfoNCE + tube alignment; 2: fusion encoder pre-training (MLM, prefix LM, VTM with hard "
                        "negatives, alignment); retrieval: InfoNCE + alignment + VTM, re-ranked at test")
    g.add_argument("--joint_layers", type=int, default=2,
                   help="last vision blocks attending jointly over all frames; also the depth of the tube transformer")
    g.add_argument("--num_centers", type=int, default=8, help="semantic centres = tube tokens per clip")
    g.add_argument("--tube_lr", type=float, default=1e-5,
                   help="learning rate of the tube module (centres, local transformer, centre projection)")
    g.add_argument("--fusion_layers", type=int, default=6, help="fusion encoder blocks (from CLIP's text blocks)")
    g.add_argument("--fusion_lr", type=float, default=None, help="learning rate of the fusion modules (default --lr)")
    g.add_argument("--fusion_dropout", type=float, default=0.2, help="dropout of the VTM and vocabulary heads")
    g.add_argument("--t2vlp_match_norm", choices=MATCH_NORMS, default="candidates",
                   help="how the VTM head normalises Ψ's text outputs: candidates (T2VLP's code and released weights): "
                        "each dimension over the pairs scored together (training: the global batch's 3B VTM "
                        "sequences; re-ranking: a query's K candidates); vector: each output by its own norm")
    g.add_argument("--freeze_backbone", action="store_true",
                   help="stage 2: CLIP and the tube module are frozen and encoded without gradient; only the fusion "
                        "modules train (T2VLP: detached inputs, backbone at 1e-8)")
    g.add_argument("--rerank_topk", type=int, default=32,
                   help="evaluation of a head with a cross-encoder: re-score the top K candidates per query in both "
                        "directions (0: raw scores only)")
    g.add_argument("--rerank_batch", type=int, default=512, help="candidate pairs per cross-encoder batch")


@register_head("t2vlp", add_args=add_t2vlp_args)
class T2VLP(RetrievalHead):
    # A later stage's modules, dropped (with a log line) when a model without them loads its checkpoint.
    pretrain_only_prefixes = FUSION_MODULES
    # Ψ reads the text tower's token features w (pre-training, captioning), never raw token embeddings.
    fusion_reads_text_tower = True

    def __init__(self, clip: CLIP, args=None):
        super().__init__(clip, args)
        self.stage = str(arg(args, "t2vlp_stage", "1"))
        if self.stage not in STAGES:
            raise ValueError(f"--t2vlp_stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        dim, width = clip.embed_dim, clip.config.text.width
        self.joint_layers = arg(args, "joint_layers", 2)
        depth = clip.config.vision.layers
        if not 0 < self.joint_layers <= depth:
            raise ValueError(f"--joint_layers must be in 1..{depth} (the vision tower's blocks), got {self.joint_layers}")
        self.tap = depth - self.joint_layers  # the input of the first joint block feeds the tube tokens
        self.tube = TubeTokens(clip.visual, dim, arg(args, "num_centers", 8), self.joint_layers)
        self.tube_lr, self.fusion_lr = arg(args, "tube_lr", 1e-5), arg(args, "fusion_lr", None)
        self.freeze_backbone = arg(args, "freeze_backbone", False)
        if self.freeze_backbone and self.stage != "2":
            raise ValueError("--freeze_backbone applies to --t2vlp_stage 2 (the fusion encoder on frozen features)")
        self.fusion = None
        if self.stage != "1":
            if width != dim:
                raise ValueError(f"the fusion encoder takes {dim}-d features in CLIP's {width}-wide text blocks")
            positions = max(clip.config.text.context_length,
                            1 + arg(args, "max_frames", 12) + self.tube.centers.shape[0] + arg(args, "max_words", 32))
            dropout = arg(args, "fusion_dropout", 0.2)
            self.fusion = FusionEncoder(clip.text, arg(args, "fusion_layers", 6), positions)
            self.match = MatchHead(width, dropout, arg(args, "t2vlp_match_norm", "candidates"))
            self.negatives = HardNegativeSampler(arg(args, "seed", 42))
        if self.stage == "2":
            special = get_tokenizer()
            self.vocab_head = VocabHead(width, clip.config.text.vocab_size, arg(args, "fusion_dropout", 0.2))
            # T2VLP: each word (never SOT/EOT/padding) with probability p, every one replaced by id 0.
            self.masker = BertMasker(clip.config.text.vocab_size, 0, (special.sot_id, special.eot_id), mask_id=None,
                                     rate=arg(args, "mlm_probability", 0.15), mask_fraction=1.0, random_fraction=0.0,
                                     seed=arg(args, "seed", 42))
            clip.logit_scale.requires_grad_(False)  # only the (gradient-free) negative sampling reads it
            if self.freeze_backbone:
                clip.requires_grad_(False)
                self.tube.requires_grad_(False)
        self.register_load_state_dict_post_hook(T2VLP._start_modules_missing_from_checkpoint)

    # -- loading -----------------------------------------------------------------------------------
    def _stage_modules(self) -> dict[str, str]:
        """Modules a checkpoint may lack as a whole (plain CLIP, or an earlier stage's weights), and how
        they start then."""
        sources = {"tube.": "its local blocks from the loaded CLIP's last vision blocks, fresh centres",
                   "fusion.": "its blocks from the loaded CLIP's first text blocks"}
        own = {k.split(".")[0] + "." for k in self.state_dict()}
        return {p: sources.get(p, "fresh") for p in ("tube.", *FUSION_MODULES) if p in own}

    def optional_in_checkpoint(self, state) -> dict[str, str]:
        """{prefix: how it starts} for this head's modules of which ``state`` has no tensor at all (the
        loader accepts their absence; every other tensor must still be in the checkpoint)."""
        return {prefix: how for prefix, how in self._stage_modules().items()
                if not any(k.startswith(prefix) for k in state)}

    @staticmethod
    def _start_modules_missing_from_checkpoint(module: "T2VLP", incompatible) -> None:
        """After loading weights without a whole module: the tube and fusion blocks restart from the
        CLIP just loaded (at construction they copied the CLIP they were built with); such a module is
        no longer reported missing."""
        missing = incompatible.missing_keys
        own = module.state_dict()
        for prefix in module._stage_modules():
            gone = [k for k in missing if k.startswith(prefix)]
            if not gone or len(gone) != sum(k.startswith(prefix) for k in own):
                continue
            if prefix == "tube.":
                module.tube.sync_from(module.clip.visual)
            elif prefix == "fusion.":
                module.fusion.sync_from(module.clip.text)
            for key in gone:
                missing.remove(key)

    # -- encoders ----------------------------------------------------------------------------------
    def _video(self, video: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(meanP video feature v (B, D), frame features f (B, T, D), tube tokens U (B, K, D))."""
        frames, taps = self.clip.encode_frames(video, taps=(self.tap,), joint_last_n=self.joint_layers,
                                               frame_mask=video_mask)
        tubes = self.tube(taps[self.tap], video_mask)
        return masked_mean(normalise(frames), video_mask), frames, tubes

    def encode_text(self, text_ids: Tensor, text_mask: Tensor):
        """(EOT feature t (N, D), token features w (N, L, D), text mask)."""
        text, words = self.clip.encode_text(text_ids, text_mask, return_tokens=True)
        return text, words, text_mask

    def encode_video(self, video: Tensor, video_mask: Tensor):
        """(v, f, U, video mask)."""
        return (*self._video(video, video_mask), video_mask)

    def similarity(self, text_features, video_features) -> Tensor:
        return normalise(text_features[0]) @ normalise(video_features[0]).t()

    def compute_loss(self, text_features, video_features) -> dict[str, Tensor]:
        """Stage 1's objective on a (gathered) batch: symmetric InfoNCE + local alignment."""
        text, words, text_mask = text_features[:3]
        video, _, tubes = video_features[:3]
        infonce = symmetric_infonce(self.logit_scale() * self.similarity(text_features, video_features))
        align = local_alignment(self.tube.center_queries(), words, text_mask, tubes)
        return {"loss": infonce + align, "infonce": infonce, "align": align}

    # -- the fusion encoder ------------------------------------------------------------------------
    def can_rerank(self) -> bool:
        return self.fusion is not None

    @staticmethod
    def visual_sequence(frames: Tensor, tubes: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor]:
        """[v̄ (masked mean of f); f_1..f_T; u_1..u_K] (N, 1+T+K, D) and its 0/1 validity."""
        mean = masked_mean(frames, video_mask)
        sequence = torch.cat([mean[:, None], frames, tubes.to(frames.dtype)], dim=1)
        ones = video_mask.new_ones(video_mask.shape[0], 1)
        return sequence, torch.cat([ones, video_mask, ones.expand(-1, tubes.shape[1])], dim=1)

    def visual_tokens(self, video: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor]:
        """[v̄; f; u] (B, 1+T+K, D): T2VLP's visual part of the fusion input (captioning, QA)."""
        _, frames, tubes = self._video(video, video_mask)
        return self.visual_sequence(frames, tubes, video_mask)

    def video_features_and_tokens(self, video: Tensor, video_mask: Tensor):
        """(v, f, U, video mask) and [v̄; f; u] from one pass of the video tower."""
        video_feat, frames, tubes = self._video(video, video_mask)
        return (video_feat, frames, tubes, video_mask), self.visual_sequence(frames, tubes, video_mask)

    def _fuse(self, visual: Tensor, visual_valid: Tensor, words: Tensor, text_mask: Tensor,
              mask: Tensor | None = None) -> Tensor:
        x = torch.cat([visual, words.to(visual.dtype)], dim=1)
        if mask is None:
            mask = key_mask(torch.cat([visual_valid, text_mask], dim=1))
        return self.fusion(x, attn_mask=mask)

    def match_outputs(self, visual: Tensor, visual_valid: Tensor, words: Tensor, text_mask: Tensor
                      ) -> tuple[Tensor, Tensor]:
        """Ψ's outputs (N, W) at v̄ (position 0) and at the caption's EOT: the matching head's inputs."""
        out = self._fuse(visual, visual_valid, words, text_mask)
        eot = visual.shape[1] + text_mask.sum(1).long() - 1
        return out[:, 0], out[torch.arange(out.shape[0], device=out.device), eot]

    @torch.no_grad()
    def match_probability(self, text_features, video_features, text_index: Tensor, video_index: Tensor) -> Tensor:
        """p_match of the pairs (text_index[..., k], video_index[..., k]) of encoded features (re-ranking),
        shaped like the indices. The pairs along the last axis are one query's candidates, scored together
        (``--t2vlp_match_norm candidates`` normalises across them, as T2VLP re-ranks)."""
        shape = text_index.shape
        _, words, text_mask = (x.index_select(0, text_index.flatten()) for x in text_features[:3])
        _, frames, tubes, video_mask = (x.index_select(0, video_index.flatten()) for x in video_features[:4])
        visual, visual_valid = self.visual_sequence(frames, tubes, video_mask)
        out_visual, out_text = (o.reshape(*shape, o.shape[-1]) for o in self.match_outputs(visual, visual_valid, words,
                                                                                             text_mask))
        return self.match(out_visual, out_text).softmax(-1)[..., 1]

    # -- training ----------------------------------------------------------------------------------
    def check_batch(self, global_batch: int) -> None:
        if self.fusion is not None and global_batch < 2:
            raise ValueError(f"--t2vlp_stage {self.stage} draws a hard negative from the rest of the global batch: "
                             f"--batch_size must be at least 2, got {global_batch}")

    def training_step(self, batch: dict, ctx) -> dict[str, Tensor]:
        ids, text_mask, video, video_mask = batch["text_ids"], batch["text_mask"], batch["video"], batch["video_mask"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone), ctx.autocast():
            text, words = self.clip.encode_text(ids, text_mask, return_tokens=True)
            video_feat, frames, tubes = self._video(video, video_mask)
        gathered, offsets = gather_batch(ctx, (text, words, text_mask, video_feat, frames, tubes, video_mask, ids))
        text, words, text_mask_g, video_feat, frames, tubes, video_mask_g, ids_g = gathered
        losses = self.compute_loss((text, words, text_mask_g), (video_feat, frames, tubes))
        if self.stage == "2":
            losses.pop("infonce")  # stage 2 trains the fusion encoder: MLM + PLM + VTM + alignment
        if self.fusion is None:
            return losses
        rows = torch.arange(int(offsets[ctx.rank]), int(offsets[ctx.rank + 1]), device=text.device)
        visual, visual_valid = self.visual_sequence(frames, tubes, video_mask_g)
        if self.stage == "retrieval":  # T2VLP's retrieval VTM trains Ψ on detached features
            visual, words = visual.detach(), words.detach()
        with torch.no_grad():
            scores = self.logit_scale() * self.similarity((text,), (video_feat,))
        losses["vtm"] = self._vtm_loss(visual, visual_valid, words, text_mask_g, scores, rows, ctx)
        if self.stage == "2":
            losses.update(self._language_losses(ids_g, text_mask_g, words, visual, visual_valid, rows, ctx))
        losses["loss"] = sum(v for k, v in losses.items() if k != "loss")
        return losses

    def _vtm_loss(self, visual, visual_valid, words, text_mask, scores, rows, ctx) -> Tensor:
        """Per local pair i: (v_i, t_i) matched, (v_j(i), t_i) and (v_i, t_j'(i)) not, the negatives
        drawn from the gathered scores; CE over the 3·B_g sequences of the global batch. Under
        ``candidates`` the text outputs are normalised over all 3·B_g sequences (every rank's Σ t²,
        gathered with gradient), so 2 ranks equal 1 process; T2VLP's code normalised over each GPU's."""
        video_for_text, text_for_video = self.negatives(scores)
        n = rows.numel()
        vis = torch.cat([rows, video_for_text[rows], rows])
        txt = torch.cat([rows, rows, text_for_video[rows]])
        labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(rows.device)
        with ctx.autocast():
            out_visual, out_text = self.match_outputs(visual[vis], visual_valid[vis], words[txt], text_mask[txt])
        sumsq = None
        if self.match.norm == "candidates":
            sumsq = ctx.gather(self.match.candidate_sumsq(out_text)).sum(0, keepdim=True)
        logits = self.match(out_visual, out_text, sumsq)
        return rank_share(F.cross_entropy(logits.float(), labels, reduction="sum"), 3 * scores.shape[0], ctx)

    def _language_losses(self, ids, text_mask, words, visual, visual_valid, rows, ctx) -> dict[str, Tensor]:
        """MLM: selected word ids -> 0 before the text tower, their fusion rows zeroed, predicted through
        the tied vocabulary head. PLM: prefix-LM mask; from a random start s, the outputs at text
        positions s..L_b-2 predict tokens s+1..L_b-1. Draws are made on the gathered ids."""
        generator = self.masker.next_generator()
        selected = self.masker(ids, text_mask, generator=generator).selected
        selected = at_least_one(selected, text_mask.bool() & ~torch.isin(ids, torch.tensor(self.masker.never,
                                                                                           device=ids.device)),
                                generator)
        lengths = text_mask.sum(1).long()
        starts = (torch.rand(ids.shape[0], generator=generator) * (lengths - 1).clamp_min(1).cpu()).long()
        embedding = self.clip.text.token_embedding.weight
        local_sel, local_ids = selected[rows], ids[rows]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone), ctx.autocast():
            _, masked_words = self.clip.encode_text(local_ids.masked_fill(local_sel, 0), text_mask[rows],
                                                    return_tokens=True)
        masked_words = masked_words.float().masked_fill(local_sel[..., None], 0.0)
        with ctx.autocast():
            out = self._fuse(visual[rows], visual_valid[rows], masked_words, text_mask[rows])
            mlm_logits = self.vocab_head(out[:, visual.shape[1]:][local_sel], embedding)
        mlm = rank_share(F.cross_entropy(mlm_logits.float(), local_ids[local_sel], reduction="sum"),
                         selected.sum(), ctx)
        position = torch.arange(ids.shape[1], device=ids.device)[None]
        predicts = (position >= starts.to(ids.device)[:, None]) & (position <= lengths[:, None] - 2)
        local_pred = predicts[rows]
        with ctx.autocast():
            mask = prefix_lm_mask(visual_valid[rows], text_mask[rows])
            out = self._fuse(visual[rows], visual_valid[rows], words[rows], text_mask[rows], mask=mask)
            plm_logits = self.vocab_head(out[:, visual.shape[1]:][local_pred], embedding)
        targets = local_ids.roll(-1, dims=1)[local_pred]  # position j predicts token j + 1
        plm = rank_share(F.cross_entropy(plm_logits.float(), targets, reduction="sum"), predicts.sum(), ctx)
        return {"mlm": mlm, "plm": plm}

    # -- optimisation ------------------------------------------------------------------------------
    def param_groups(self, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
        """The base groups (CLIP at lr x coef_lr, new modules at lr), with the tube module at --tube_lr
        and the fusion modules at --fusion_lr (default lr), each split by weight decay as before."""
        rates = {"tube.": self.tube_lr, **{p: self.fusion_lr for p in FUSION_MODULES if self.fusion_lr is not None}}
        out = []
        for group in super().param_groups(lr, coef_lr, weight_decay):
            suffix = "_no_decay" if group["group"].endswith("_no_decay") else ""
            split: dict[tuple[str, float], list[int]] = {}
            for i, name in enumerate(group["names"]):
                prefix = next((p for p in rates if name.startswith(p)), None)
                key = (group["group"], group["lr"]) if prefix is None else (prefix[:-1] + suffix, rates[prefix])
                split.setdefault(key, []).append(i)
            for (label, rate), chosen in split.items():
                out.append({**group, "params": [group["params"][i] for i in chosen],
                            "names": [group["names"][i] for i in chosen], "lr": rate, "group": label})
        return out


def at_least_one(selected: Tensor, eligible: Tensor, generator: torch.Generator) -> Tensor:
    """T2VLP masks at least one word per caption: a row with none selected gets one eligible position,
    drawn uniformly with ``generator``."""
    scores = torch.rand(selected.shape, generator=generator).to(selected.device).masked_fill(~eligible, -1.0)
    pick = F.one_hot(scores.argmax(1), selected.shape[1]).bool() & eligible
    empty = ~selected.any(1, keepdim=True)
    return selected | (pick & empty)
