"""Our BPE tokenizer against OpenAI's reference tokenizer (the one CLIP was trained with, shipped by
clip-anytorch) and against transformers' CLIPTokenizer built from the same vocabulary."""
import gzip
import importlib.util
import random
from pathlib import Path

import pytest
import torch

from modules.clip import tokenize
from modules.clip.tokenizer import NUM_MERGES, VOCAB_FILE, get_tokenizer

WORDS = ("a man woman child dog cat is are playing singing running cooking in on at the of with stage kitchen "
         "football guitar video clip people car street night while who then after before red blue green").split()
ODDITIES = [
    "!", "!!", "?", "...", ",", ";", ":-)", "'s", "'ll", "n't", "&amp;", "&amp;amp;", "&lt;b&gt;", "&quot;hi&quot;",
    "&#39;", "café", "naïve", "Ünïcödé", "ß", "Straße", "你好", "视频", "日本語", "한국어", "Привет", "مرحبا", "🎉", "👍🏽",
    "🤖🤖", "°C", "½", "№5", "3.14", "2021", "1st", "x²", "e-mail", "co-op", "U.S.A.", "http://x.y/z?q=1", "#tag",
    "@user", "C++", "100%", "$5", "—", "–", "…", "“quoted”", "‘single’", "\u00a0", "\t", "\n", "  ", "ﬁ", "Ａｂｃ",
    "<|endoftext|>", "<|startoftext|>", "MiXeD CaSe", "ALLCAPS", "don't", "we're", "I'M", "they'VE",
]


def varied_captions(count=520, seed=0):
    rng = random.Random(seed)
    captions = []
    for i in range(count):
        length = rng.choice([1, 3, 8, 15, 40]) if i % 50 else 200  # every 50th caption is very long
        parts = [rng.choice(WORDS) if rng.random() < 0.7 else rng.choice(ODDITIES) for _ in range(length)]
        sep = rng.choice([" ", " ", " ", "", "  "])
        text = sep.join(parts)
        if rng.random() < 0.3:
            text = text.capitalize() + rng.choice([".", "!", "?", ""])
        captions.append(text)
    return captions + ["", " ", "a", "A" * 300, "🎉" * 50, "你" * 40]


def openai_reference():
    """OpenAI's SimpleTokenizer from clip-anytorch, loaded without its package __init__ (which needs
    pkg_resources, gone from recent setuptools)."""
    spec = importlib.util.find_spec("clip")
    assert spec is not None, "clip-anytorch (requirements-test.txt) is needed as the reference tokenizer"
    path = Path(spec.submodule_search_locations[0]) / "simple_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


@pytest.fixture(scope="module")
def reference():
    return openai_reference()


def test_vocabulary_layout():
    tok = get_tokenizer()
    assert tok.vocab_size == 49408
    assert (tok.sot_id, tok.eot_id) == (49406, 49407)
    assert tok.encoder["!"] == 0 and tok.encoder["a</w>"] == 320


def test_ids_equal_openai_reference(reference):
    tok = get_tokenizer()
    captions = varied_captions()
    assert len(captions) >= 500
    mismatches = [(c, tok.encode(c), reference.encode(c)) for c in captions if tok.encode(c) != reference.encode(c)]
    assert not mismatches, f"{len(mismatches)} captions differ, first: {mismatches[0]}"


def test_ids_equal_transformers_where_references_agree(reference):
    transformers = pytest.importorskip("transformers")
    tok = get_tokenizer()
    with gzip.open(VOCAB_FILE, "rt", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:NUM_MERGES + 1]]
    hf = transformers.CLIPTokenizer(vocab=dict(tok.encoder), merges=merges)
    agreed = 0
    for caption in varied_captions(seed=1):
        hf_ids = hf(caption)["input_ids"][1:-1]
        if hf_ids == reference.encode(caption):  # HF skips ftfy/HTML unescaping, so they differ on some
            agreed += 1
            assert tok.encode(caption) == hf_ids, caption
    assert agreed >= 300  # the comparison must cover most captions to mean anything


def test_tokenize_shapes_padding_and_mask():
    ids, mask = tokenize(["a dog", "the cat is on the mat"], max_words=10)
    assert ids.shape == mask.shape == (2, 10) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [49406, 320, 1929, 49407]
    assert ids[0, 4:].eq(0).all() and mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert mask[1].sum() == 8


def test_truncation_keeps_eot():
    ids, mask = tokenize(["word " * 100], max_words=12)
    assert mask.sum() == 12
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert ids[0].argmax() == 11  # CLIP reads the sentence at the largest id: EOT must survive truncation


def test_decode_roundtrip():
    tok = get_tokenizer()
    assert tok.decode(tok.encode("A Man, playing guitar!")) == "a man , playing guitar !"
