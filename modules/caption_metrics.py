"""Captioning metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr from ``pycocoevalcap`` (the COCO caption
evaluation code every captioning paper reports), on every reference caption of each video.

The COCO protocol tokenises candidates and references with Stanford's PTB tokenizer and scores METEOR
with METEOR 1.5; both are Java programs. Without a Java runtime the scores that need none (BLEU, ROUGE-L,
CIDEr) are still computed, on a simple tokenizer (lower case, the PTB tokenizer's punctuation dropped,
split on white space), and ``CaptionScores.note`` says in one line what is missing. Scores are reported
x 100, as in the papers.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

NO_JAVA = ("java not found: METEOR and the PTB tokenizer need a Java runtime (apt-get install default-jre-headless); "
           "reporting BLEU-4, ROUGE-L, CIDEr with a simple tokenizer")
NO_PACKAGE = "pycocoevalcap is not installed: pip install pycocoevalcap (captioning metrics)"
# What the PTB tokenizer splits off and pycocoevalcap then drops (its PUNCTUATIONS list).
_PUNCTUATION = re.compile(r"[.?!,:;\-`'()\[\]{}]+")


@dataclass
class CaptionScores:
    metrics: dict[str, float]
    note: str | None = None  # one line when a Java-based part could not run


def java_available() -> bool:
    return shutil.which("java") is not None


def check_installed() -> None:
    """One ValueError line (before any training) when pycocoevalcap is missing."""
    try:
        import pycocoevalcap.bleu.bleu  # noqa: F401
    except ImportError:
        raise ValueError(NO_PACKAGE) from None


def simple_tokenize(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


@contextmanager
def _without_tokenizer_chatter():
    """The PTB tokenizer (a Java process sharing our stderr) reports its speed on every call; drop that
    line and pass anything else it says (an error) on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip() and not line.startswith("PTBTokenizer tokenized"):
                    print(line, file=sys.stderr)


def tokenize(captions: dict[str, list[str]], use_java: bool) -> dict[str, list[str]]:
    if use_java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with _without_tokenizer_chatter():
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}


def score_captions(predictions: dict[str, str], references: dict[str, list[str]]) -> CaptionScores:
    """Corpus scores of one predicted caption per video against all of its references."""
    check_installed()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references):
        raise ValueError(f"captions for {len(predictions)} videos, references for {len(references)}: not the same videos")
    use_java = java_available()
    # Both sides go through one tokenizer call, as in the COCO evaluation.
    both = tokenize({**{f"p{k}": [v] for k, v in predictions.items()}, **{f"r{k}": v for k, v in references.items()}},
                    use_java)
    res = {k: [both[f"p{k}"][0] or "<empty>"] for k in predictions}  # an empty caption still scores (0)
    gts = {k: both[f"r{k}"] for k in predictions}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics = {f"BLEU-{n + 1}": 100.0 * float(b) for n, b in enumerate(bleu)}
    if use_java:
        from pycocoevalcap.meteor.meteor import Meteor

        metrics["METEOR"] = 100.0 * float(Meteor().compute_score(gts, res)[0])
    metrics["ROUGE-L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    metrics["CIDEr"] = 100.0 * float(Cider().compute_score(gts, res)[0])
    return CaptionScores(metrics, None if use_java else NO_JAVA)
