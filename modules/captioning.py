"""Video captioning on any registered head (``main_task_caption.py``; T2VLP's design).

The head gives the video as a token sequence (``head.visual_tokens``: [v̄; frames] by default, T2VLP's
[v̄; frames; tube tokens]); a prefix-LM transformer reads it as a prefix, the caption after it (text
causal, the prefix never reading the text), and a vocabulary head tied to CLIP's token embedding
predicts the next token. The caption enters as CLIP's token embeddings, or, on a head whose fusion
encoder was trained on the text tower's token features (T2VLP: ``fusion_reads_text_tower``), as those
features, as T2VLP's captioning feeds them. A head that already has a fusion encoder and a
vocabulary head (a T2VLP stage-2 or downstream checkpoint) lends them; otherwise the decoder is built
from CLIP's first ``--decoder_layers`` text blocks. Visual tokens of another width than the text's are
projected.

Training loss: L_cap (teacher-forced next-token CE on every valid token after SOT, its global mean over
all ranks) + ``--caption_retrieval_loss_weight`` x the head's own retrieval loss (``compute_loss`` on
the gathered batch: T2VLP's L_sim + L_align). Decoding: greedy or batched beam search
(``modules/components/decoder.py``), with a key/value cache unless ``--no_kv_cache``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.clip.tokenizer import get_tokenizer
from modules.components.decoder import TextTowerTokens, beam_search, greedy_search, make_stepper, with_text_state
from modules.components.fusion import FusionEncoder, VocabHead, prefix_lm_mask, rank_share
from modules.flags import arg
from modules.task_model import TaskModel


def add_caption_args(parser):
    g = parser.add_argument_group("captioning (main_task_caption.py)")
    g.add_argument("--beam_size", type=int, default=1, help="1: greedy decoding (T2VLP's); >1: batched beam search")
    g.add_argument("--length_penalty", type=float, default=1.0,
                   help="beam search ranks finished captions by sum(log p) / length ** this (0: raw sum)")
    g.add_argument("--max_gen_len", type=int, default=None,
                   help="most tokens generated per caption, end token included (default --max_words - 1, T2VLP's)")
    g.add_argument("--decoder_layers", type=int, default=6,
                   help="blocks of a new caption decoder, from CLIP's first text blocks (T2VLP executes 6); unused "
                        "when the head has its own fusion encoder")
    g.add_argument("--caption_dropout", type=float, default=0.2, help="dropout of a new vocabulary head (T2VLP's 0.2)")
    g.add_argument("--caption_retrieval_loss_weight", type=float, default=1.0,
                   help="weight of the head's own retrieval loss beside the caption loss (T2VLP's recipe: 1, its "
                        "L_sim + L_align); 0: caption loss only (no text-tower pass)")
    g.add_argument("--no_kv_cache", action="store_true",
                   help="decode by re-encoding the whole prefix at every step (T2VLP's way; for comparison)")
    return parser


class CaptionModel(TaskModel):
    task_name = "caption"
    recorded_flags = ("decoder_layers",)  # shapes the decoder: a caption checkpoint restores it
    # The head's modules that captioning does not use (a T2VLP matching head; the text tower without the
    # retrieval loss) get no gradient: DDP must not wait for them (engine/trainer.py reads this flag).
    ddp_find_unused_parameters = True

    def __init__(self, head: nn.Module, args=None):
        super().__init__(head, args)
        text = getattr(head.clip, "text", None)
        if head.tokenizer() is not None or text is None or not hasattr(text, "token_embedding"):
            raise ValueError(f"captioning decodes CLIP's BPE vocabulary through CLIP's text tower; --method "
                             f"{head.head_name} has another text tower")

        special = get_tokenizer()
        self.sot, self.eot = special.sot_id, special.eot_id
        self.retrieval_weight = float(arg(args, "caption_retrieval_loss_weight", 1.0))
        self.reads_text_tower = bool(getattr(head, "fusion_reads_text_tower", False))
        width = text.cfg.width
        if getattr(head, "fusion", None) is None:
            self.decoder = FusionEncoder(text, arg(args, "decoder_layers", 6), 2 * text.cfg.context_length)
        if getattr(head, "vocab_head", None) is None:
            self.vocab_head = VocabHead(width, text.cfg.vocab_size, arg(args, "caption_dropout", 0.2))
        visual_width = getattr(head, "visual_token_width", head.clip.embed_dim)
        self.visual_proj = nn.Linear(visual_width, width) if visual_width != width else None

    # -- the pieces ----------------------------------------------------------------------------------
    def caption_decoder(self) -> FusionEncoder:
        return self.decoder if "decoder" in self._modules else self.head.fusion

    def caption_vocab(self) -> VocabHead:
        return self.vocab_head if "vocab_head" in self._modules else self.head.vocab_head

    def prefix(self, visual: Tensor) -> Tensor:
        """The head's visual tokens as the decoder's prefix (projected to the text width if needed)."""
        return self.visual_proj(visual) if self.visual_proj is not None else visual

    def embed(self, ids: Tensor, like: Tensor) -> Tensor:
        return self.clip.text.token_embedding(ids).to(like.dtype)

    def text_input(self, ids: Tensor, mask: Tensor, like: Tensor) -> Tensor:
        """The decoder's text rows (N, L, W) for whole captions: the text tower's token features when the
        head reads them, else the token embeddings."""
        if self.reads_text_tower:
            return self.clip.encode_text(ids, mask, return_tokens=True)[1].to(like.dtype)
        return self.embed(ids, like)

    def step_input(self, like: Tensor, use_cache: bool = True):
        """Decoding: new ids (N, 1) -> the decoder's rows for them (N, 1, W), the same as ``text_input``
        gives at those positions (a ``TextTowerTokens`` when the head reads the text tower)."""
        if self.reads_text_tower:
            return TextTowerTokens(self.clip.text, like.dtype, use_cache)
        return lambda ids: self.embed(ids, like)

    def vocab_logits(self, hidden: Tensor) -> Tensor:
        return self.caption_vocab()(hidden, self.clip.text.token_embedding.weight)

    def caption_logits(self, visual: Tensor, valid: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """(N, L, V): the logits at every text position under the prefix-LM mask (position t predicts t+1)."""
        prefix = self.prefix(visual)
        out = self.caption_decoder()(torch.cat([prefix, self.text_input(ids, mask, prefix)], dim=1),
                                     attn_mask=prefix_lm_mask(valid, mask))
        return self.vocab_logits(out[:, prefix.shape[1]:])

    @staticmethod
    def caption_loss(logits: Tensor, ids: Tensor, mask: Tensor, ctx) -> Tensor:
        """Teacher-forced CE over every valid token after SOT (EOT included), the mean over all ranks'
        tokens (``rank_share``: DDP's averaged gradient is the global mean's)."""
        targets = mask[:, 1:].bool()
        local = F.cross_entropy(logits[:, :-1][targets].float(), ids[:, 1:][targets], reduction="sum")
        count = ctx.gather_nograd(targets.sum().reshape(1)).sum()
        return rank_share(local, count, ctx)

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch: dict, ctx) -> dict[str, Tensor]:
        ids, mask, video, video_mask = batch["text_ids"], batch["text_mask"], batch["video"], batch["video_mask"]
        with ctx.autocast():
            if self.retrieval_weight:
                video_features, (visual, valid) = self.head.video_features_and_tokens(video, video_mask)
            else:
                visual, valid = self.head.visual_tokens(video, video_mask)
            logits = self.caption_logits(visual, valid, ids, mask)
        caption = self.caption_loss(logits, ids, mask, ctx)
        losses = {"caption": caption}
        total = caption
        if self.retrieval_weight:
            retrieval = self.head_retrieval_loss(ids, mask, video_features, ctx)
            losses.update({f"retrieval_{k}": v for k, v in retrieval.items() if k != "loss"})
            losses["retrieval"] = retrieval["loss"]
            total = total + self.retrieval_weight * retrieval["loss"]
        losses["loss"] = total
        return losses

    # -- decoding ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, video: Tensor, video_mask: Tensor, beam_size: int = 1, max_len: int = 31,
                 length_penalty: float = 1.0, use_cache: bool = True) -> list[list[int]]:
        """Token ids (without SOT and EOT) of one caption per video."""
        visual, valid = self.head.visual_tokens(video, video_mask)
        prefix = self.prefix(visual)
        embed = self.step_input(prefix, use_cache)
        stepper = with_text_state(make_stepper(self.caption_decoder(), prefix, valid, use_cache), embed)
        log_probs = lambda hidden: self.vocab_logits(hidden[:, -1]).float().log_softmax(-1)  # noqa: E731
        if beam_size == 1:  # the same captions as beam search with one beam (tested), without its bookkeeping
            return greedy_search(stepper, embed, log_probs, video.shape[0], self.sot, self.eot, max_len, video.device)
        return beam_search(stepper, embed, log_probs, video.shape[0], self.sot, self.eot, max_len, video.device,
                           beam_size, length_penalty)
