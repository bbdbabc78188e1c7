"""The text side of the joint trunk: which vocabulary feeds the BERT embedding layer.

* ``bert_vocabulary(path)``: BERT's WordPiece tokenizer from a local ``vocab.txt`` (a file, or a
  folder such as a local copy of bert-base-uncased), through ``transformers.BertTokenizer``; [CLS],
  [SEP], [PAD] are never masked and [MASK] is the tokenizer's own. Nothing is downloaded.
* ``clip_vocabulary()``: without a BERT vocabulary, CLIP's BPE (the datasets' default tokenizer): its
  49,408 ids plus one extra embedding row that serves as [MASK]; SOT, EOT and padding (0) are never
  masked. Used by the tiny trunks of the tests and the toy demo; not SimVTP's setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from torch import Tensor

from modules.clip.tokenizer import get_tokenizer

Tokenize = Callable[[str | Sequence[str], int], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class TextVocabulary:
    tokenize: Tokenize | None  # (texts, max_words) -> (ids, mask); None: CLIP's BPE, the datasets' default
    embedding_rows: int  # rows of the word-embedding table (the vocabulary, plus [MASK] when it is not in it)
    prediction_size: int  # classes of the MLM head: the real tokens
    pad_id: int
    special_ids: tuple[int, ...]  # never masked
    mask_id: int
    source: str

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Token strings of ``ids`` (for pictures of masked captions)."""
        if self.tokenize is not None:
            return self.tokenize.tokenizer.convert_ids_to_tokens(list(ids))

        clip = get_tokenizer()
        return ["[MASK]" if int(i) == self.mask_id else clip.decode([int(i)]) for i in ids]


def find_vocab_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    candidates = [path] if path.is_file() else [path / "vocab.txt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"no BERT vocabulary at {path} (looked for {', '.join(map(str, candidates))}): give "
                            "--bert_path a local bert-base-uncased folder or its vocab.txt; nothing is downloaded")


def bert_vocabulary(path: str | Path, lowercase: bool = True) -> TextVocabulary:
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(str(find_vocab_file(path)), do_lower_case=lowercase)

    def tokenize(texts: str | Sequence[str], max_words: int = 32) -> tuple[Tensor, Tensor]:
        out = tokenizer([texts] if isinstance(texts, str) else list(texts), padding="max_length", truncation=True,
                        max_length=max_words, return_tensors="pt")
        return out["input_ids"].long(), out["attention_mask"].long()

    tokenize.tokenizer = tokenizer
    return TextVocabulary(tokenize, len(tokenizer), len(tokenizer), tokenizer.pad_token_id,
                          tuple(tokenizer.all_special_ids), tokenizer.mask_token_id, f"BERT WordPiece ({path})")


def clip_vocabulary() -> TextVocabulary:
    clip = get_tokenizer()
    size = clip.vocab_size
    return TextVocabulary(None, size + 1, size, 0, (clip.sot_id, clip.eot_id), size,
                          "CLIP BPE + one [MASK] row (no --bert_path)")
