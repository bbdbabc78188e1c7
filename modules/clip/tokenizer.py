"""CLIP's byte-level BPE tokenizer.

Produces the same ids as the tokenizer CLIP was trained with: the text is repaired with ftfy, HTML
entities are unescaped twice, whitespace is collapsed and the text lower-cased; it is then split with
CLIP's regular expression and each piece is byte-encoded and merged with the 48,894 BPE merges of
``bpe_simple_vocab_16e6.txt.gz`` (vendored from open_clip, MIT licence, see LICENSE.bpe_vocab).
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import ftfy
import regex
import torch

VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP's vocabulary of 49,408 ids was built from

# Special tokens first, then English contractions, letter runs, single digits, and runs of anything else.
_SPLIT_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def byte_to_char_table() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the remaining bytes (controls, space, ...) are moved to
    code points from 256 upwards, so BPE never sees whitespace or controls. The dict's order (printable
    bytes first, then the moved ones) is the order of the first 256 vocabulary ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in set(printable)]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(moved)})
    return table


def normalise_text(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = " ".join(text.split())  # collapses runs of any unicode whitespace
    return text.lower()


class CLIPTokenizer:
    def __init__(self, vocab_file: str | Path = VOCAB_FILE):
        self.byte_chars = byte_to_char_table()
        self.char_bytes = {c: b for b, c in self.byte_chars.items()}
        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            merge_lines = f.read().split("\n")[1:NUM_MERGES + 1]  # first line is a version header
        merges = [tuple(line.split()) for line in merge_lines]
        symbols = list(self.byte_chars.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self._cache = {SOT_TOKEN: [SOT_TOKEN], EOT_TOKEN: [EOT_TOKEN]}

    def _bpe(self, piece: str) -> list[str]:
        """Merge the characters of one pre-tokenised piece, lowest-ranked pair first."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        parts = list(piece[:-1]) + [piece[-1] + "</w>"]  # the last symbol carries the end-of-word mark
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: self.merge_rank.get(pair, float("inf")))
            if best not in self.merge_rank:
                break
            first, second = best
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the pair, left to right
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[piece] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without the start/end tokens."""
        ids = []
        for piece in _SPLIT_PATTERN.findall(normalise_text(text)):
            chars = "".join(self.byte_chars[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(chars))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` with the start/end tokens skipped (pass only real positions: id 0 is "!", not padding)."""
        out = bytearray()
        for i in ids:
            token = self.decoder[int(i)]
            if int(i) in (self.sot_id, self.eot_id):
                continue
            word = token[:-4] if token.endswith("</w>") else token
            out.extend(self.char_bytes[c] for c in word)
            if token.endswith("</w>"):
                out.extend(b" ")
        return out.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str], max_words: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask), each LongTensor (N, max_words): SOT, the caption, EOT, then zero padding.

        A caption longer than ``max_words - 2`` tokens is cut so that EOT stays the last real token,
        which is where CLIP reads the sentence feature.
        """
        if isinstance(texts, str):
            texts = [texts]
        if max_words < 2:
            raise ValueError("max_words must leave room for the start and end tokens (>= 2)")
        ids = torch.zeros(len(texts), max_words, dtype=torch.long)
        mask = torch.zeros(len(texts), max_words, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.sot_id] + self.encode(text)[: max_words - 2] + [self.eot_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask


@lru_cache(maxsize=1)
def get_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer()


def tokenize(texts: str | Sequence[str], max_words: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize captions for CLIP: ``(ids, mask)``, LongTensors of shape (N, max_words)."""
    return get_tokenizer()(texts, max_words)
