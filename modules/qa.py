"""Video question answering on any registered head (``main_task_qa.py``).

The video side is the head's ``visual_tokens`` (T2VLP: [v̄; f; tube tokens], others [v̄; f]); the question
is CLIP's text tower's token features; both go through a fusion encoder (the head's own when it has one,
T2VLP's stage-2 Ψ, else one built from CLIP's first ``--fusion_layers`` text blocks). Two answer heads
(``--qa_head``):

* ``classifier`` (default, the usual protocol): an MLP over [o(v̄); o(question EOT)] to the answers of
  train_ans2label.json. Training masks out questions whose answer is outside the vocabulary (their CE
  term is dropped, the global mean is over the others); evaluation counts them as wrong.
* ``first_token`` (T2VLP parity): input [visual; question words; a zero vector], the output at the last
  position through the vocabulary head tied to CLIP's token embedding (the head's stage-2 one when
  present); the target is the answer's first BPE token, so multi-token answers are truncated.

Loss: CE (the global batch's mean over every rank, ``rank_share``) + ``--qa_retrieval_weight`` x the
head's own retrieval loss (encode, gather, ``compute_loss``: CLIP4Clip's L_sim, plus T2VLP's alignment)
on ("question answer", video), T2VLP's L_sim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.components.fusion import FusionEncoder, VocabHead, key_mask, rank_share
from modules.heads.base import RetrievalHead
from modules.flags import arg
from modules.task_model import TaskModel

QA_HEADS = ("classifier", "first_token")
SPARE_POSITIONS = 16  # fusion positions beyond 1 + frames + words + 1, for a head's extra visual tokens (tubes)


class QAModel(TaskModel):
    task_name = "qa"
    recorded_flags = ("qa_head",)  # the answer head a QA checkpoint was trained with
    # A question's path through the model leaves parts of a head unused (e.g. a temporal transformer only
    # its retrieval features use, T2VLP's matching head): DDP must not wait for their gradients.
    ddp_find_unused_parameters = True

    def __init__(self, head: RetrievalHead, args=None, answers: int = 0, digest: bytes = b""):
        super().__init__(head, args)
        self.kind = arg(args, "qa_head", "classifier")
        if self.kind not in QA_HEADS:
            raise ValueError(f"--qa_head must be one of {', '.join(QA_HEADS)}, got {self.kind!r}")
        self.retrieval_weight = float(arg(args, "qa_retrieval_weight", 0.0))
        clip = head.clip
        dim, width = clip.embed_dim, clip.config.text.width
        self.input_proj = nn.Linear(dim, width) if dim != width else None
        if getattr(head, "fusion", None) is None:
            positions = max(clip.config.text.context_length,
                            2 + arg(args, "max_frames", 12) + arg(args, "max_words", 32) + SPARE_POSITIONS)
            self.fusion = FusionEncoder(clip.text, arg(args, "fusion_layers", 6), positions)
        if self.kind == "classifier":
            if answers < 1:
                raise ValueError("the answer classifier needs a non-empty answer vocabulary (train_ans2label.json)")
            self.classifier = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.GELU(), nn.LayerNorm(2 * width),
                                            nn.Linear(2 * width, answers))
        elif getattr(head, "vocab_head", None) is None:
            self.vocab_head = VocabHead(width, clip.config.text.vocab_size, arg(args, "fusion_dropout", 0.2))
        # SHA-1 of the answer vocabulary it was trained with: a checkpoint evaluated on another is refused.
        self.register_buffer("answer_digest", torch.tensor(list(digest.ljust(20, b"\0")), dtype=torch.uint8))

    def fusion_encoder(self) -> FusionEncoder:
        own = self._modules.get("fusion")
        return own if own is not None else self.head.fusion

    def vocabulary_head(self) -> VocabHead:
        own = self._modules.get("vocab_head")
        return own if own is not None else self.head.vocab_head

    # -- the answer -----------------------------------------------------------------------------------
    def answer_logits(self, visual: Tensor, visual_valid: Tensor, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        """(N, answers) for the classifier, (N, vocabulary) for the first-token head."""
        _, words = self.clip.encode_text(text_ids, text_mask, return_tokens=True)
        x = torch.cat([visual, words.to(visual.dtype)], dim=1)
        valid = torch.cat([visual_valid, text_mask], dim=1)
        if self.kind == "first_token":  # T2VLP: a zero vector after the (padded) question, read at its output
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
            valid = torch.cat([valid, valid.new_ones(valid.shape[0], 1)], dim=1)
        if self.input_proj is not None:
            x = self.input_proj(x)
        out = self.fusion_encoder()(x, attn_mask=key_mask(valid))
        if self.kind == "first_token":
            return self.vocabulary_head()(out[:, -1], self.clip.text.token_embedding.weight)
        eot = visual.shape[1] + text_mask.sum(1).long() - 1
        return self.classifier(torch.cat([out[:, 0], out[torch.arange(out.shape[0], device=out.device), eot]], -1))

    def targets(self, batch: dict) -> Tensor:
        """The class of each item's answer (-1 outside the vocabulary), or its first token."""
        return batch["label"] if self.kind == "classifier" else batch["answer_token"]

    # -- training -------------------------------------------------------------------------------------
    def training_step(self, batch: dict, ctx) -> dict[str, Tensor]:
        video, video_mask = batch["video"], batch["video_mask"]
        with ctx.autocast():
            if self.retrieval_weight:  # one pass of the video tower for both losses
                video_features, (visual, valid) = self.head.video_features_and_tokens(video, video_mask)
            else:
                visual, valid = self.head.visual_tokens(video, video_mask)
            logits = self.answer_logits(visual, valid, batch["text_ids"], batch["text_mask"])
        target = self.targets(batch).long()
        known = target >= 0  # out-of-vocabulary answers are masked out of the CE
        count = ctx.gather_nograd(known.sum().reshape(1)).sum().clamp_min(1)
        local = F.cross_entropy(logits.float()[known], target[known], reduction="sum")
        losses = {"qa": rank_share(local, count, ctx)}
        total = losses["qa"]
        if self.retrieval_weight:
            losses["retrieval"] = self.head_retrieval_loss(batch["qa_ids"], batch["qa_mask"], video_features, ctx)["loss"]
            total = total + self.retrieval_weight * losses["retrieval"]
        losses["loss"] = total
        return losses
