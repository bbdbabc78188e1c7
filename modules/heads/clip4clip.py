"""CLIP4Clip's similarity heads (``--sim_header``): meanP, seqLSTM, seqTransf and tightTransf.

meanP, seqLSTM and seqTransf are dual encoders: a video is the masked mean of its (temporally
modelled) frame features. tightTransf is a cross encoder that scores each (caption, video) pair.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from modules.clip import CLIP, Transformer
from modules.clip.transformer import LayerNorm
from modules.flags import arg

from .base import RetrievalHead, masked_mean, normalise, register_head, symmetric_infonce


def key_padding_mask(video_mask: Tensor) -> Tensor:
    """(B, T) 0/1 -> additive fp32 (B, T, T) mask hiding padded frames from every query."""
    hidden = (1.0 - video_mask.float()) * float("-inf")
    hidden = torch.nan_to_num(hidden, nan=0.0)  # 0 * -inf is nan for valid frames
    return hidden[:, None, :].expand(-1, video_mask.shape[1], -1)


@register_head("meanP")
class MeanPooling(RetrievalHead):
    """Parameter-free: the masked mean of L2-normalised frame features."""

    def encode_video(self, video: Tensor, video_mask: Tensor) -> Tensor:
        frames = self.temporal(self.frame_features(video, video_mask), video_mask)
        return masked_mean(normalise(frames), video_mask)

    def temporal(self, frames: Tensor, video_mask: Tensor) -> Tensor:
        return frames


@register_head("seqLSTM")
class SequenceLSTM(MeanPooling):
    """An LSTM over the valid frames, added back to the frame features (residual), then meanP."""

    def __init__(self, clip: CLIP, args=None):
        super().__init__(clip, args)
        dim = clip.embed_dim
        self.lstm_visual = nn.LSTM(dim, dim, num_layers=1, batch_first=True)

    def temporal(self, frames: Tensor, video_mask: Tensor) -> Tensor:
        lengths = video_mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(frames, lengths, batch_first=True, enforce_sorted=False)
        self.lstm_visual.flatten_parameters()
        out, _ = self.lstm_visual(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=frames.shape[1])
        return out + frames


@register_head("seqTransf")
class SequenceTransformer(MeanPooling):
    """Frame position embeddings plus a temporal transformer whose blocks start as CLIP's first text
    blocks (CLIP4Clip's initialisation), added back to the frame features (residual), then meanP."""

    def __init__(self, clip: CLIP, args=None):
        super().__init__(clip, args)
        dim = clip.embed_dim
        layers = arg(args, "cross_num_hidden_layers", 4)
        max_frames = arg(args, "max_position_embeddings", 128)
        self.frame_position_embeddings = nn.Embedding(max_frames, dim)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.02)
        text = clip.text
        if text.cfg.width != dim:
            raise ValueError(f"seqTransf initialises from CLIP's text blocks: needs text width {text.cfg.width} == {dim}")
        self.transformerClip = Transformer(dim, layers, text.cfg.heads, text.cfg.mlp_ratio)
        self.transformerClip.init_weights()  # blocks beyond CLIP's text depth keep this initialisation
        for ours, clip_block in zip(self.transformerClip.resblocks, text.transformer.resblocks):
            ours.load_state_dict(clip_block.state_dict())

    def temporal(self, frames: Tensor, video_mask: Tensor) -> Tensor:
        positions = torch.arange(frames.shape[1], device=frames.device)
        x = frames + self.frame_position_embeddings(positions)
        return self.transformerClip(x, attn_mask=key_padding_mask(video_mask)) + frames


@register_head("tightTransf")
class TightTransformer(RetrievalHead):
    """Cross encoder: caption tokens and frame features, with type and position embeddings, through a
    transformer; the first output scores the pair. Cost grows with texts x videos (chunked)."""

    # CLIP4Clip's cross encoder is a BERT: its norms are named LayerNorm there (--weight_decay_exclude).
    authors_layer_norm_prefixes = ("cross.",)

    def __init__(self, clip: CLIP, args=None):
        super().__init__(clip, args)
        dim = clip.embed_dim
        layers = arg(args, "cross_num_hidden_layers", 4)
        self.pair_chunk = arg(args, "cross_pair_chunk", 4096)
        self.type_embeddings = nn.Embedding(2, dim)
        self.position_embeddings = nn.Embedding(arg(args, "max_position_embeddings", 128), dim)
        self.cross = Transformer(dim, layers, max(1, dim // 64))
        self.cross.init_weights()
        self.cross_ln = LayerNorm(dim)
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.score = nn.Linear(dim, 1, bias=False)  # a bias shifts every pair equally: InfoNCE ignores it
        for emb in (self.type_embeddings, self.position_embeddings):
            nn.init.normal_(emb.weight, std=0.02)
        # The pair scores are trained without CLIP's temperature, so it never reaches the loss: frozen.
        clip.logit_scale.requires_grad_(False)

    def encode_text(self, text_ids: Tensor, text_mask: Tensor):
        _, tokens = self.clip.encode_text(text_ids, text_mask, return_tokens=True)
        return tokens, text_mask

    def encode_video(self, video: Tensor, video_mask: Tensor):
        return self.frame_features(video, video_mask), video_mask

    def similarity(self, text_features, video_features) -> Tensor:
        text_tokens, text_mask = text_features
        frames, video_mask = video_features
        n_text, n_video = text_tokens.shape[0], frames.shape[0]
        scores = []
        pair_index = torch.cartesian_prod(torch.arange(n_text), torch.arange(n_video)).to(text_tokens.device)
        for chunk in pair_index.split(self.pair_chunk):
            t, v = chunk[:, 0], chunk[:, 1]
            scores.append(self._pair_scores(text_tokens[t], text_mask[t], frames[v], video_mask[v]))
        return torch.cat(scores).view(n_text, n_video)

    def _pair_scores(self, text_tokens, text_mask, frames, video_mask) -> Tensor:
        x = torch.cat([text_tokens, frames], dim=1)
        types = torch.cat([torch.zeros_like(text_mask), torch.ones_like(video_mask)], dim=1)
        positions = torch.arange(x.shape[1], device=x.device)
        x = x + self.type_embeddings(types) + self.position_embeddings(positions)
        out = self.cross_ln(self.cross(x, attn_mask=key_padding_mask(torch.cat([text_mask, video_mask], dim=1))))
        return self.score(self.pooler(out[:, 0])).squeeze(-1)

    def score_scale(self) -> float:
        return 1.0  # the pair scores are the logits

    def compute_loss(self, text_features, video_features) -> dict[str, Tensor]:
        # CLIP4Clip trains the cross encoder on its raw pair scores, without the CLIP temperature.
        return {"loss": symmetric_infonce(self.similarity(text_features, video_features))}
