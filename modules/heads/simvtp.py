"""SimVTP: masked video-text autoencoding on one joint VideoMAE trunk (``--method simvtp``), arXiv 2212.03490.

The backbone is the second family (``--backbone videomae_joint``, ``modules.videomae``): one ViT for
video tubes and BERT-embedded text. ``self.clip`` is RetrievalHead's backbone slot; here it holds the
``JointTrunk`` (``clip.visual`` the tubelet embedding, ``clip.text`` the BERT embedding layer).

Pre-training (``--simvtp_stage pretrain``, implied by main_pretrain.py's ``--do_pretrain``), four trunk
passes per step: (1) [visible video ; masked text] -> pixel decoder on the video outputs (MSE to the
per-tube normalised pixels of the masked tubes) and MLM head on the text outputs; (2) visible video
alone and (3) masked text alone -> mean-pooled VTC features (NormSoftmax, τ 0.05); (4) 2B joint
sequences, (V_i, T_i) and (V_j, T_i) with a random j != i -> VTM head, CE against [1]·B + [0]·B.

Fine-tuning (the default): SimVTP's dual encoder, two copies of the trunk. ``clip`` keeps the video
copy (tubelet embedding and blocks) and the text embedding; ``text_trunk`` holds the text copy's blocks.
Each side: blocks, mean pooling, a new ``fc_norm``; NormSoftmax on the cosine matrix. The pre-trained
final LayerNorm is dropped (VideoMAE's mean pooling). A test batch of views (B, V, T, 3, H, W) is
encoded view by view and averaged per video.

Where this differs from SimVTP's code (docs/simvtp.md): means exclude padding (``--pool_padding`` for
parity); VTC and VTM draw their negatives from the batch gathered over ranks (``--local_negatives`` for
SimVTP's per-GPU batch); masks are drawn in the head from (seed, step), on the global batch; dropout and
stochastic depth per sample from (seed, step, the sample's index in the global batch).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.clip.transformer import LayerNorm
from modules.components import BertMasker
from modules.components.matching import cosine_matrix, matching_labels, norm_softmax, random_negatives
from modules.components.pixel_decoder import PixelDecoder
from modules.components.pixels import pixel_targets
from modules.components.tube_mask import TubeMaskGenerator
from modules.flags import arg
from modules.videomae.loading import load_part
from modules.videomae.row_noise import RowNoise, global_rows, row_noise, step_key
from modules.videomae.text import clip_vocabulary
from modules.videomae.transformer import JointTrunk, complete_tubelets

from .base import RetrievalHead, masked_mean, register_head

log = logging.getLogger(__name__)
LOSSES = ("pixel", "mlm", "vtc", "vtm")


def add_simvtp_args(parser) -> None:
    g = parser.add_argument_group("SimVTP (--method simvtp, backbone videomae_joint)")
    g.add_argument("--simvtp_stage", choices=("finetune", "pretrain"), default=None,
                   help="pretrain: masked video/text autoencoding + VTC + VTM; finetune: dual encoder "
                        "(default: pretrain under main_pretrain.py's --do_pretrain, else finetune)")
    g.add_argument("--video_mask_ratio", type=float, default=0.9,
                   help="tube masking: share of spatial positions masked")
    g.add_argument("--text_mask_ratio", type=float, default=0.75, help="share of text tokens replaced by [MASK]")
    g.add_argument("--simvtp_temperature", type=float, default=0.05, help="τ of NormSoftmax (VTC, fine-tuning)")
    g.add_argument("--simvtp_loss_weights", type=float, nargs=4, default=[1.0, 1.0, 1.0, 1.0],
                   metavar=("PIXEL", "MLM", "VTC", "VTM"), help="pre-training loss weights")
    g.add_argument("--decoder_depth", type=int, default=None,
                   help="pixel decoder blocks (default: the architecture's, 4)")
    g.add_argument("--raw_pixel_targets", action="store_true",
                   help="reconstruct [0, 1] pixels instead of per-tube, per-channel standardised ones")
    g.add_argument("--local_negatives", action="store_true",
                   help="VTC/fine-tuning and VTM negatives from this rank's batch only (SimVTP's code); default: "
                        "the batch gathered from every rank")
    g.add_argument("--pool_padding", action="store_true",
                   help="mean pooling over every position, padding included (SimVTP's code); default: real tokens")
    g.add_argument("--simvtp_log_every", type=int, default=50,
                   help="pre-training: log the mean of each loss term (pixel, mlm, vtc, vtm) every N micro-steps")
    g.add_argument("--blr", type=float, default=None,
                   help="base learning rate: lr = blr x global batch / 256 (SimVTP's rule; overrides --lr)")


def scaled_lr(base_lr: float, global_batch: int, reference: int = 256) -> float:
    """SimVTP's (MAE's) linear scaling rule: 1.5e-4 x 1024 / 256 = 6e-4."""
    return base_lr * global_batch / reference


def average_views(features: Tensor, views: int) -> Tensor:
    """(B·V, D) per-view embeddings of B videos, views contiguous -> (B, D), the mean over each video's views."""
    return features.view(-1, views, features.shape[-1]).mean(1)


@register_head("simvtp", add_args=add_simvtp_args)
class SimVTP(RetrievalHead):
    backbone_family = "videomae_joint"
    pretrain_only_prefixes = ("decoder.", "mlm_head.", "vtm_head.", "tube_mask.", "text_masker.", "clip.norm.")

    def __init__(self, clip: JointTrunk, args=None):
        if not isinstance(clip, JointTrunk):
            raise ValueError("--method simvtp runs on the VideoMAE joint trunk: use --backbone videomae_joint (or "
                             "leave --backbone unset); a SimVTP-on-CLIP variant is not implemented")
        if arg(args, "precision", "fp32") == "fp16_weights":
            raise ValueError("--precision fp16_weights is CLIP4Clip's CLIP-only mode; use amp_bf16 or amp_fp16 with "
                             "simvtp")
        vocabulary, source = getattr(clip, "vocabulary", None), getattr(clip, "source", None)
        for name in ("vocabulary", "source"):
            clip.__dict__.pop(name, None)  # kept by the head; a deep copy of the trunk must not carry them
        super().__init__(clip, args)
        if vocabulary is None:
            vocabulary = clip_vocabulary()
        self.vocabulary = vocabulary
        self.stage = arg(args, "simvtp_stage", None) or ("pretrain" if arg(args, "do_pretrain", False) else "finetune")
        self.temperature = arg(args, "simvtp_temperature", 0.05)
        self.local_negatives = arg(args, "local_negatives", False)
        self.pool_padding = arg(args, "pool_padding", False)
        self.statistics = arg(args, "normalize", "imagenet")
        if self.stage == "pretrain":
            self._build_pretraining(args, source)
        else:
            self._build_dual_encoder(source)

    # -- construction ----------------------------------------------------------------------------
    def _build_pretraining(self, args, source) -> None:
        config, vocab = self.clip.config, self.vocabulary
        seed = arg(args, "seed", 42)
        self.weights = dict(zip(LOSSES, arg(args, "simvtp_loss_weights", [1.0] * 4)))
        self.log_every, self._running = arg(args, "simvtp_log_every", 50), []
        self.normalise_targets = not arg(args, "raw_pixel_targets", False)
        self.tube_mask = TubeMaskGenerator(config.grid ** 2, arg(args, "video_mask_ratio", 0.9), seed)
        self.text_masker = BertMasker(vocab.embedding_rows, vocab.pad_id, vocab.special_ids, mask_id=vocab.mask_id,
                                      rate=arg(args, "text_mask_ratio", 0.75), mask_fraction=1.0, random_fraction=0.0,
                                      seed=seed)
        dec = config.decoder
        self.decoder = PixelDecoder(config.width, dec.width, arg(args, "decoder_depth", None) or dec.layers, dec.heads,
                                    config.tube_pixels, dec.mlp_ratio, config.norm_eps, config.qkv_bias)
        self.mlm_head = nn.Linear(config.width, vocab.prediction_size)
        self.vtm_head = nn.Linear(config.width, 2)
        for head in (self.mlm_head, self.vtm_head):
            nn.init.xavier_uniform_(head.weight)
            nn.init.zeros_(head.bias)
        if source is not None and source.decoder:
            load_part(self.decoder, source.decoder, "pixel decoder", source.path)
        for name in ("mlm_head", "vtm_head"):  # SimVTP's text_cls and vtm_head
            part = {k[len(name) + 1:]: v for k, v in (source.heads if source is not None else {}).items()
                    if k.startswith(name + ".")}
            if part:
                load_part(getattr(self, name), part, name, source.path)

    def _build_dual_encoder(self, source) -> None:
        """Two trunk copies: ``clip`` (tubelet embedding, blocks; plus the text embedding) for video,
        ``text_trunk`` (blocks) for text; new ``fc_norm``s; the final LayerNorm dropped."""
        config = self.clip.config
        self.clip.norm = None
        self.text_trunk = JointTrunk(config, video=False, text=False, final_norm=False,
                                     drop_path_rate=self.clip.blocks[-1].drop_path_rate)
        self.text_trunk.blocks.load_state_dict(self.clip.blocks.state_dict())
        self.video_fc_norm = LayerNorm(config.width, eps=config.norm_eps)
        self.text_fc_norm = LayerNorm(config.width, eps=config.norm_eps)
        if source is not None and source.text_trunk:  # SimVTP's fine-tuned dual encoder
            load_part(self.text_trunk, source.text_trunk, "text copy", source.path)
            for name in ("video_fc_norm", "text_fc_norm"):
                load_part(getattr(self, name), {k[len(name) + 1:]: v for k, v in source.fc_norms.items()
                                                if k.startswith(name + ".")}, name, source.path)
        self.register_load_state_dict_post_hook(SimVTP._text_copy_from_trunk)

    def optional_in_checkpoint(self, state) -> dict[str, str]:
        """A pre-training checkpoint (one trunk, no text copy) fills the dual encoder's text copy too (the
        post-load hook copies the trunk): the loader accepts its absence and logs how it starts. The two new
        ``fc_norm``s are not filled: they start at 1 / 0, and the log (and ``--do_eval``) names them."""
        if self.stage == "pretrain" or any(k.startswith("text_trunk.") for k in state):
            return {}
        return {"text_trunk.": "SimVTP's fine-tuning starts the text copy of the trunk from the pre-trained encoder "
                               "(copied)"}

    @staticmethod
    def _text_copy_from_trunk(module: "SimVTP", incompatible) -> None:
        """A pre-training checkpoint has one trunk: the text copy starts from it too (SimVTP loads the
        pre-trained encoder into both copies)."""
        missing = [k for k in incompatible.missing_keys if k.startswith("text_trunk.")]
        if missing:
            module.text_trunk.blocks.load_state_dict(module.clip.blocks.state_dict())
            for key in missing:
                incompatible.missing_keys.remove(key)
            log.info("simvtp fine-tuning: the text copy of the trunk starts from the checkpoint's trunk")

    # -- encoders --------------------------------------------------------------------------------
    def tokenizer(self):
        return self.vocabulary.tokenize

    def _pool(self, tokens: Tensor, valid: Tensor) -> Tensor:
        return tokens.mean(1) if self.pool_padding else masked_mean(tokens, valid)

    @staticmethod
    def _trim(ids: Tensor, mask: Tensor, length: int | None = None) -> tuple[Tensor, Tensor]:
        """Dynamic padding (SimVTP tokenises with padding=True): columns past the longest caption are cut."""
        length = length or max(1, int(mask.sum(1).max()))
        return ids[:, :length], mask[:, :length]

    def encode_text(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        ids, mask = self._trim(text_ids, text_mask)
        tokens = self.clip.embed_text(ids)
        if self.stage == "pretrain":
            return self._pool(self.clip(tokens, mask), mask)
        return self.text_fc_norm(self._pool(self.text_trunk(tokens, mask), mask))

    def encode_video(self, video: Tensor, video_mask: Tensor) -> Tensor:
        """(B, T, 3, H, W) or a batch of test views (B, V, T, 3, H, W) -> (B, D), the views averaged."""
        if video.ndim == 6:
            views = video.shape[1]
            mask = video_mask if video_mask.ndim == 3 else video_mask[:, None].expand(-1, views, -1)
            return average_views(self.encode_video(video.flatten(0, 1), mask.flatten(0, 1)), views)
        tokens, valid = self.clip.embed_video(video, video_mask)
        pooled = self._pool(self.clip(tokens, valid), valid)
        return pooled if self.stage == "pretrain" else self.video_fc_norm(pooled)

    # -- fine-tuning -------------------------------------------------------------------------------
    def logit_scale(self) -> Tensor:
        return torch.tensor(1.0 / self.temperature)

    def clamp_logit_scale(self, max_value: float = 4.6052) -> None:
        """No learned temperature (τ is fixed)."""

    def compute_loss(self, text_features, video_features) -> dict[str, Tensor]:
        vtc = norm_softmax(cosine_matrix(text_features, video_features), self.temperature)
        return {"loss": vtc, "vtc": vtc}

    def check_batch(self, global_batch: int) -> None:
        if global_batch < 2:
            raise ValueError("simvtp needs a batch of at least 2 pairs (in-batch negatives)")

    def param_groups(self, lr: float, coef_lr: float, weight_decay: float) -> list[dict]:
        """One learning rate for the whole model (SimVTP trains trunk and heads alike); ``--blr`` scales it
        with the global batch. No weight decay on biases, norms, 1-D tensors and the mask token."""
        base = arg(self.args, "blr", None)
        if base is not None:
            lr = scaled_lr(base, arg(self.args, "batch_size", 256))
            log.info("simvtp: lr = --blr %g x global batch %d / 256 = %g", base, arg(self.args, "batch_size", 256), lr)
        groups = super().param_groups(lr, 1.0, weight_decay)
        for group in groups:
            group["group"] = group["group"].replace("clip", "trunk")
        return groups

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        return super().no_weight_decay(name, param) or name.endswith("mask_token")

    def training_step(self, batch: dict, ctx) -> dict[str, Tensor]:
        if self.stage == "pretrain":
            return self._pretraining_step(batch, ctx)
        with row_noise(self.step_noise(ctx, len(batch["text_ids"]))):
            if not self.local_negatives:
                return super().training_step(batch, ctx)
            with ctx.autocast():  # SimVTP's per-GPU NormSoftmax: this rank's pairs only
                text = self.encode_text(batch["text_ids"], batch["text_mask"])
                video = self.encode_video(batch["video"], batch["video_mask"])
            return self.compute_loss(text.float(), video.float())

    def step_noise(self, ctx, rows: int) -> RowNoise:
        """Dropout and stochastic depth of this micro-step's ``rows`` samples, from (seed, optimiser step,
        each sample's index in the step's global batch): the same masks however the batch is split over
        ranks and micro-steps, new ones for every sample and step, replayed by a resumed run."""
        return RowNoise(step_key(arg(self.args, "seed", 42), ctx.step),
                        global_rows(ctx.micro_step, ctx.world_size, ctx.rank, rows, ctx.device))

    # -- pre-training ------------------------------------------------------------------------------
    def _global_mean(self, ctx, sums: Tensor, counts: Tensor) -> Tensor:
        """Σ sums / Σ counts over every rank's rows, the same value on every rank (differentiable)."""
        return ctx.gather(sums).sum() / ctx.gather_nograd(counts.float()).sum().clamp_min(1.0)

    def draw_masks(self, batch: int, ctx, slices: int, device) -> tuple[Tensor, Tensor]:
        """This rank's rows of the global batch's tube masks (B, N) and its VTM negatives (global indices)."""
        generator = self.tube_mask.next_generator()
        total = batch * ctx.world_size
        masked = self.tube_mask(total, slices, generator=generator)
        negatives = random_negatives(batch if self.local_negatives else total, generator)
        rows = slice(ctx.rank * batch, (ctx.rank + 1) * batch)
        return masked[rows].to(device), (negatives if self.local_negatives else negatives[rows]).to(device)

    def masked_autoencode(self, video: Tensor, video_mask: Tensor, masked: Tensor, masked_ids: Tensor,
                          text_valid: Tensor) -> dict[str, Tensor]:
        """Pass 1: [visible video ; masked text] through the trunk, then the pixel decoder on the video
        outputs. ``video`` (B, T, 3, H, W) with T a multiple of the tubelet, ``masked`` (B, N) tube masks.
        Returns the visible tokens, their validity and indices, the masked indices and validity, the text
        embeddings, the text outputs (for the MLM head) and the pixel predictions (B, Nm, tube pixels)."""
        trunk = self.clip
        order = masked.float().argsort(dim=1, stable=True)  # visible first, each part in token order
        nv = int((~masked[0]).sum())
        out = {"visible_index": order[:, :nv], "masked_index": order[:, nv:]}
        tokens, token_valid = trunk.embed_video(video, video_mask)
        out["visible_valid"] = token_valid.gather(1, out["visible_index"])
        out["masked_valid"] = token_valid.gather(1, out["masked_index"])
        out["visible"] = tokens.gather(1, out["visible_index"][..., None].expand(-1, -1, tokens.shape[-1]))
        out["text"] = trunk.embed_text(masked_ids)
        joint = trunk(torch.cat([out["visible"], out["text"]], 1), torch.cat([out["visible_valid"], text_valid], 1))
        out["text_out"] = joint[:, nv:]
        out["predicted"] = self.decoder(joint[:, :nv], out["visible_index"], out["masked_index"], tokens.shape[1],
                                        torch.cat([out["visible_valid"], out["masked_valid"]], 1))
        return out

    def _pretraining_step(self, batch: dict, ctx) -> dict[str, Tensor]:
        """SimVTP's four passes; every loss is a mean over the global batch (per-sample sums and
        counts gathered), so 2 ranks equal one process (tested)."""
        trunk = self.clip
        video, video_mask = complete_tubelets(batch["video"], batch["video_mask"], trunk.config.tubelet_size)
        b = video.shape[0]
        rows = slice(ctx.rank * b, (ctx.rank + 1) * b)
        lengths = ctx.gather_nograd(batch["text_mask"].sum(1))
        ids, text_mask = self._trim(batch["text_ids"], batch["text_mask"], max(1, int(lengths.max())))
        corrupted = self.text_masker(ctx.gather_nograd(ids), ctx.gather_nograd(text_mask))
        masked_ids, labels, selected = corrupted.ids[rows], corrupted.labels[rows], corrupted.selected[rows]
        masked, negatives = self.draw_masks(b, ctx, video.shape[1] // trunk.config.tubelet_size, video.device)
        text_valid = text_mask.bool()
        with row_noise(self.step_noise(ctx, b)) as noise, ctx.autocast():
            out = self.masked_autoencode(video, video_mask, masked, masked_ids, text_valid)
            visible, visible_valid, text = out["visible"], out["visible_valid"], out["text"]
            mlm_logits = self.mlm_head(out["text_out"][selected])
            video_feature = self._pool(trunk(visible, visible_valid), visible_valid)
            text_feature = self._pool(trunk(text, text_valid), text_valid)
            if self.local_negatives:
                other, other_valid = visible[negatives], visible_valid[negatives]
            else:
                other = ctx.gather(visible)[negatives].to(visible.dtype)
                other_valid = ctx.gather_nograd(visible_valid)[negatives]
            pairs = torch.cat([torch.cat([visible, other]), torch.cat([text, text])], 1)
            pairs_valid = torch.cat([torch.cat([visible_valid, other_valid]), text_valid.repeat(2, 1)], 1)
            with noise.rows_as(torch.cat([2 * noise.rows, 2 * noise.rows + 1])):  # positive, negative of a row
                vtm_logits = self.vtm_head(self._pool(trunk(pairs, pairs_valid), pairs_valid))

        target = pixel_targets(video, trunk.config.tubelet_size, trunk.config.patch_size, self.statistics,
                               self.normalise_targets)
        masked_index, masked_valid = out["masked_index"], out["masked_valid"]
        target = target.gather(1, masked_index[..., None].expand(-1, -1, target.shape[-1]))
        error = (out["predicted"].float() - target).pow(2).sum(-1) * masked_valid  # (B, Nm)
        pixel = self._global_mean(ctx, error.sum(1), masked_valid.sum(1) * target.shape[-1])
        token_ce = F.cross_entropy(mlm_logits.float(), labels[selected], reduction="none")
        per_row = torch.zeros(b, device=video.device).index_add(0, selected.nonzero()[:, 0], token_ce)
        mlm = self._global_mean(ctx, per_row, selected.sum(1))
        vtm_ce = F.cross_entropy(vtm_logits.float(), matching_labels(b, video.device), reduction="none")
        vtm = self._global_mean(ctx, vtm_ce, torch.ones_like(vtm_ce))
        if self.local_negatives:
            vtc = norm_softmax(cosine_matrix(text_feature, video_feature), self.temperature)
        else:
            vtc = norm_softmax(cosine_matrix(ctx.gather(text_feature), ctx.gather(video_feature)), self.temperature)
        losses = {"pixel": pixel, "mlm": mlm, "vtc": vtc, "vtm": vtm}
        self._log_terms(losses, ctx)
        return {"loss": sum(self.weights[k] * losses[k] for k in LOSSES), **losses}

    def _log_terms(self, losses: dict[str, Tensor], ctx) -> None:
        """Every ``--simvtp_log_every`` micro-steps, the mean of each term since the last line (one sync)."""
        self._running.append(torch.stack([losses[k].detach() for k in LOSSES]))
        if self.log_every and len(self._running) >= self.log_every:
            means = torch.stack(self._running).mean(0).tolist()
            self._running = []
            if ctx.rank == 0:
                log.info("simvtp step %d: %s (mean of the last %d micro-steps)", ctx.step + 1,
                         " ".join(f"{k} {v:.4f}" for k, v in zip(LOSSES, means)), self.log_every)
