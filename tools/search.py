"""Search an index by text from the shell.

    python -m tools.search INDEX "a dog catches a frisbee" [--topk 5] [--html out.html] [--json]

Ranked paths with scores in the terminal; ``--html`` writes a self-contained page with a strip of frames
per result (each links to its video). The model is rebuilt from the checkpoint the index records
(``--checkpoint`` when it moved).

Scores are the head's own: for a head whose score is a dot product of two embeddings (CLIP4Clip, DGL,
UMP) the index ranks by it directly (exactly, or with FAISS); for a head with another score (HMMC's
top-k frames) the ``--candidates`` best by the first embedding are re-scored with the head's
``similarity`` (every video when the index holds no more than that, which is exact); a head that scores
pairs jointly (tightTransf) scores every video.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from tools import ann
from tools.ann import from_rows, primary_vectors, scoring_mode
from tools.store import Entry, IndexFolderError, IndexStore, index_header


@dataclass
class Hit:
    entry: Entry
    score: float
    rank: int


class Searcher:
    """An index with its model, ready for text queries (thread-safe)."""

    def __init__(self, index_dir, checkpoint=None, device: str = "cpu", use_faiss: bool = True,
                 nprobe: int | None = None, candidates: int = 1000):
        from engine.checkpoint import load_model  # start-up

        self.store = IndexStore.open(index_dir)
        self.header = self.store.header()
        recorded = self.header["model"]
        path = Path(checkpoint or recorded["checkpoint"])
        if not path.is_file():
            raise IndexFolderError(f"{index_dir}: its model {path} is not there; pass --checkpoint PATH")
        self.model, self.args = load_model(path, device)
        mine = index_header(path, self.model, 0, 0)["model"]
        differs = [k for k in ("fingerprint", "head", "clip_config", "flags") if mine[k] != recorded[k]]
        if differs:
            raise IndexFolderError(f"{index_dir} was built with another model ({', '.join(differs)} differ from {path}); "
                                   "rebuild it with python -m tools.index --rebuild")
        self.device = device
        self.entries = self.store.entries()
        self.features = self.store.load_features(self.entries)
        self.mode = scoring_mode(self.model, self.features)
        self.candidates = candidates
        self.cross_topk = self._cross_topk()
        self.lock = threading.Lock()
        self.ann = None
        if self.mode != "full":
            vectors = primary_vectors(self.features)
            settings = self.header.get("ann")
            built = settings and self.store.ann_path.is_file() and settings["count"] == len(self.entries)
            if use_faiss and built and ann.faiss_available():
                self.ann = ann.FaissIndex.load(self.store.ann_path, nprobe or settings["nprobe"])
            else:
                self.ann = ann.ExactIndex(vectors)

    def _cross_topk(self) -> int:
        try:
            from engine.rerank import wants_rerank  # start-up
        except ImportError:
            return 0
        return int(self.args.rerank_topk) if wants_rerank(self.model, self.args) else 0

    @property
    def description(self) -> str:
        how = {"dot": "cosine", "rerank": f"{self.model.head_name} score on the top {self.candidates} by cosine",
               "full": f"{self.model.head_name} score on every video"}[self.mode]
        where = "FAISS" if isinstance(self.ann, ann.FaissIndex) else "exact"
        cross = f", top {self.cross_topk} re-ranked by its cross-encoder" if self.cross_topk else ""
        return f"{len(self.entries)} videos, {how}, {where}{cross}"

    def encode_text(self, texts: list[str]):
        from modules.clip import tokenize  # start-up

        tokenizer = self.model.tokenizer() or tokenize
        ids, mask = tokenizer(list(texts), max_words=self.args.max_words)
        return self.model.encode_text(ids.to(self.device), mask.to(self.device))

    @torch.no_grad()
    def scores(self, texts: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, row indices into ``entries``), (len(texts), min(k, N)), best first."""
        with self.lock:
            text = self.encode_text(texts)
            text = tuple(t.float().cpu() for t in text) if isinstance(text, (tuple, list)) else text.float().cpu()
            n = len(self.entries)
            k, want = min(k, n), min(max(k, self.cross_topk), n)
            if self.mode == "dot":
                scores, rows = self.ann.search(primary_vectors(text), want)
            elif self.mode == "full":
                scores, rows = self._rescore(text, torch.arange(n).expand(len(texts), -1), want)
            else:
                _, rows = self.ann.search(primary_vectors(text), max(want, min(self.candidates, n)))
                scores, rows = self._rescore(text, rows, want)
            if self.cross_topk:
                scores, rows = self._cross_rerank(text, scores, rows)
            return scores[:, :k], rows[:, :k]

    def _cross_rerank(self, text, scores: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A head with a cross-encoder (``can_rerank``/``match_probability``, T2VLP) re-scores each query's
        top ``--rerank_topk`` candidates as evaluation does (engine/rerank.py); they stay above the rest."""
        from engine.rerank import rerank_scores  # start-up

        scores, rows = scores.clone(), rows.clone()
        top = min(self.cross_topk, rows.shape[1])
        for q in range(rows.shape[0]):
            query = tuple(t[q:q + 1] for t in text)
            p_match = self.model.match_probability(query, self.features, torch.zeros(top, dtype=torch.long), rows[q, :top])
            new = rerank_scores(scores[q:q + 1, :top], p_match[None], self.model.score_scale())[0]
            order = new.argsort(descending=True)
            scores[q, :top], rows[q, :top] = new[order], rows[q, :top][order]
        return scores, rows

    def _rescore(self, text, rows: torch.Tensor, k: int, tile: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's similarity of each query with its candidate rows, then the top k of those."""
        out_s, out_i = [], []
        for q in range(rows.shape[0]):
            query = tuple(t[q:q + 1] for t in text) if isinstance(text, tuple) else text[q:q + 1]
            cand = rows[q][rows[q] >= 0]
            s = torch.cat([self.model.similarity(query, from_rows(self.features, c))[0] for c in cand.split(tile)])
            top = s.float().topk(k)
            out_s.append(top.values)
            out_i.append(cand[top.indices])
        return torch.stack(out_s), torch.stack(out_i)

    def search(self, texts: list[str], k: int = 5) -> list[list[Hit]]:
        scores, rows = self.scores(texts, k)
        return [[Hit(self.entries[int(r)], float(s), rank + 1) for rank, (s, r) in enumerate(zip(srow, rrow))]
                for srow, rrow in zip(scores, rows)]


def hit_record(hit: Hit) -> dict:
    e = hit.entry
    return {"rank": hit.rank, "score": round(hit.score, 6), "id": e.id, "path": e.path, "duration": e.duration,
            "frames": e.frames}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.search", description=__doc__.split("\n")[0])
    parser.add_argument("index", help="an index folder written by python -m tools.index")
    parser.add_argument("query", nargs="+", help="one or more text queries")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--html", default=None, help="also write a page with a strip of frames per result")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--checkpoint", default=None, help="the index's model when it moved")
    parser.add_argument("--exact", action="store_true", help="exact search even when a FAISS index exists")
    parser.add_argument("--nprobe", type=int, default=None, help="FAISS cells scanned per query (default: calibrated)")
    parser.add_argument("--candidates", type=int, default=1000, help="re-ranking heads: candidates re-scored")
    args = parser.parse_args(argv)
    if args.topk < 1:
        print("error: --topk must be >= 1", file=sys.stderr)
        return 2
    from modules.clip import CheckpointError  # start-up

    try:
        searcher = Searcher(args.index, args.checkpoint, use_faiss=not args.exact, nprobe=args.nprobe,
                            candidates=args.candidates)
    except (CheckpointError, IndexFolderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = searcher.search(args.query, args.topk)
    if args.json:
        print(json.dumps([{"query": q, "results": [hit_record(h) for h in hits]}
                          for q, hits in zip(args.query, results)], indent=1))
    else:
        for query, hits in zip(args.query, results):
            print(f"{query!r} ({searcher.description}):")
            for hit in hits:
                print(f"  {hit.rank:>3}  {hit.score:8.4f}  {hit.entry.path}")
    if args.html:
        from tools.html import results_page  # start-up

        Path(args.html).write_text(results_page(searcher, list(zip(args.query, results))))
        print(f"page written: {Path(args.html).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
