"""A Hugging Face text encoder from a local folder behind CLIP's ``encode_text`` contract.

``HFTextTower(path, embed_dim)``: ``transformers.AutoModel`` (e.g. a local copy of
hfl/chinese-roberta-wwm-ext) plus one Linear hidden -> embed_dim applied to the token states and to
the pooler output, which is the sentence feature. ``hf_tokenizer(path)`` tokenises with the folder's
``AutoTokenizer`` into the same ``(ids, mask)`` LongTensors as ``modules.clip.tokenize``. Nothing is
downloaded (``local_files_only``).
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn


def _require_folder(path: str, what: str) -> None:
    from pathlib import Path

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{what} {path!r} is not a folder: give a local Hugging Face model folder "
                                "(config.json, weights, tokenizer files); nothing is downloaded")


def load_hf_tokenizer(path: str):
    from transformers import AutoTokenizer

    _require_folder(path, "--text_encoder")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def hf_tokenizer(path: str) -> Callable[[str | Sequence[str], int], tuple[Tensor, Tensor]]:
    """``tokenize(texts, max_words) -> (ids, mask)`` with the folder's tokenizer ([CLS] ... [SEP], padded)."""
    tokenizer = load_hf_tokenizer(path)

    def tokenize(texts: str | Sequence[str], max_words: int = 32) -> tuple[Tensor, Tensor]:
        out = tokenizer([texts] if isinstance(texts, str) else list(texts), padding="max_length", truncation=True,
                        max_length=max_words, return_tensors="pt")
        return out["input_ids"].long(), out["attention_mask"].long()

    return tokenize


class HFTextTower(nn.Module):
    def __init__(self, path: str, embed_dim: int):
        super().__init__()
        from transformers import AutoModel

        _require_folder(path, "--text_encoder")
        self.encoder = AutoModel.from_pretrained(path, local_files_only=True)
        hidden = self.encoder.config.hidden_size
        self.proj = nn.Linear(hidden, embed_dim)

    @property
    def vocab_size(self) -> int:
        return self.encoder.config.vocab_size

    def forward(self, ids: Tensor, mask: Tensor, return_tokens: bool = False):
        """(N, L) ids and attention mask -> (N, D) from the pooler; with ``return_tokens`` also (N, L, D).
        A model without a pooler uses its first token's state."""
        out = self.encoder(input_ids=ids, attention_mask=mask)
        pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else out.last_hidden_state[:, 0]
        sentence = self.proj(pooled)
        if return_tokens:
            return sentence, self.proj(out.last_hidden_state)
        return sentence
