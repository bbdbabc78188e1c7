"""The video index: exact neighbours, FAISS agreeing with exact, resumable builds, broken videos listed and
absent, incremental additions, and heads whose score is not a dot product (HMMC)."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tools_fixtures import make_toy, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def checkpoint(toy, tmp_path_factory):
    return save_checkpoint(toy, tmp_path_factory.mktemp("model") / "model_final.pt")


@pytest.fixture
def videos(toy, tmp_path):
    """The 18 toy videos in two folders, plus one truncated file."""
    folder = tmp_path / "videos"
    (folder / "more").mkdir(parents=True)
    for i, f in enumerate(sorted((toy / "videos").glob("*.mp4"))):
        shutil.copy(f, folder / ("more" if i % 2 else "") / f.name)
    data = (toy / "videos" / "video3.mp4").read_bytes()
    (folder / "more" / "broken.mp4").write_bytes(data[: len(data) // 3])
    return folder


def index(checkpoint, videos, out, *extra, env=None, workers=0):
    """python -m tools.index, in a subprocess when ``env`` is given (the kill test), else in this process;
    decoding in ``workers`` DataLoader processes (0: in the calling process)."""
    argv = ["--checkpoint", str(checkpoint), "--videos", str(videos), "--out", str(out), "--batch_size", "4",
            "--chunk", "4", "--workers", str(workers), *extra]
    if env:
        return subprocess.run([sys.executable, "-m", "tools.index", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env})
    from tools.index import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def test_exact_search_is_brute_force_over_the_stored_embeddings(checkpoint, videos, tmp_path):
    from modules.clip import tokenize
    from tools.search import Searcher

    done = index(checkpoint, videos, tmp_path / "idx", workers=2)  # decoded by two worker processes
    assert done.returncode == 0, done.stderr[-2000:]
    searcher = Searcher(tmp_path / "idx")
    assert searcher.mode == "dot" and searcher.ann.kind == "exact" and len(searcher.entries) == 18
    queries = ["a red circle moves to the left", "a blue square slides up", "yellow triangle", "purple cross"]
    hits = searcher.search(queries, 5)
    stored = searcher.store.load_features()[0].float().numpy()
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    ids, mask = tokenize(queries, max_words=32)
    with torch.no_grad():
        text = searcher.model.encode_text(ids, mask).numpy()
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    scores = text @ stored.T
    for q, row in enumerate(hits):
        order = np.argsort(-scores[q], kind="stable")[:5]
        assert [h.entry.path for h in row] == [searcher.entries[i].path for i in order]
        assert np.allclose([h.score for h in row], scores[q][order], atol=1e-5)


def test_exact_index_tiles_merge_to_the_brute_force_top_k():
    from tools.ann import ExactIndex, normalise_rows

    vectors, queries = normalise_rows(torch.randn(1000, 16)), normalise_rows(torch.randn(7, 16))
    scores, ids = ExactIndex(vectors, tile=64).search(queries, 10)
    truth = (queries @ vectors.t()).topk(10)
    assert torch.equal(ids, truth.indices) and torch.allclose(scores, truth.values)


def test_faiss_gives_the_same_top_k_as_exact_search(checkpoint, videos, tmp_path):
    from tools.search import Searcher

    done = index(checkpoint, videos, tmp_path / "idx", "--faiss", "on")
    assert done.returncode == 0, done.stderr[-2000:]
    header = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert header["ann"]["kind"] == "ivf_flat" and (tmp_path / "idx" / "ann.faiss").is_file()
    approximate, exact = Searcher(tmp_path / "idx"), Searcher(tmp_path / "idx", use_faiss=False)
    assert approximate.ann.kind == "faiss" and exact.ann.kind == "exact"
    queries = ["a red circle moves to the left", "a green square", "something falls down", "two shapes"]
    for a, e in zip(approximate.search(queries, 5), exact.search(queries, 5)):
        assert [h.entry.id for h in a] == [h.entry.id for h in e]


def test_an_interrupted_build_resumes_to_the_same_index(checkpoint, videos, tmp_path):
    from tools.store import IndexStore

    straight = index(checkpoint, videos, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = index(checkpoint, videos, tmp_path / "resumed", env={"UNIVTR_INDEX_FAULT_AFTER_CHUNKS": "2"}, workers=1)
    assert killed.returncode == 17
    assert 0 < len(IndexStore(tmp_path / "resumed").entries()) < 18
    resumed = index(checkpoint, videos, tmp_path / "resumed")  # in this process: a fresh start of the tool
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = IndexStore(tmp_path / "straight"), IndexStore(tmp_path / "resumed")
    strip = lambda entries: [(e.id, e.path, e.frames, e.duration) for e in entries]  # noqa: E731
    assert strip(a.entries()) == strip(b.entries())
    assert all(torch.equal(x, y) for x, y in zip(a.load_features(), b.load_features()))
    assert a.unreadable() == b.unreadable()


def test_a_broken_video_is_listed_with_its_reason_and_absent(checkpoint, videos, tmp_path):
    from tools.search import Searcher

    done = index(checkpoint, videos, tmp_path / "idx")
    broken = str((videos / "more" / "broken.mp4").resolve())
    assert f"FAILED {broken}:" in done.stdout and "1 of 19 videos unreadable" in done.stdout
    reasons = dict(line.split("\t") for line in (tmp_path / "idx" / "unreadable.tsv").read_text().splitlines())
    assert list(reasons) == [broken] and reasons[broken]
    searcher = Searcher(tmp_path / "idx")
    assert broken not in {e.path for e in searcher.entries}
    assert all(len(f) == 18 for f in searcher.features)


def test_adding_videos_embeds_only_the_new_ones(checkpoint, videos, toy, tmp_path):
    from tools.store import IndexStore

    first = index(checkpoint, videos / "more", tmp_path / "idx")
    assert first.returncode == 0
    before = IndexStore(tmp_path / "idx").entries()
    again = index(checkpoint, videos / "more", tmp_path / "idx")
    assert "0 videos added" in again.stdout
    more = index(checkpoint, videos, tmp_path / "idx")
    assert "9 videos added; the index" in more.stdout and "holds 18" in more.stdout
    after = IndexStore(tmp_path / "idx").entries()
    assert after[:len(before)] == before
    # Another model cannot fill the same index.
    other = save_checkpoint(toy, tmp_path / "other" / "model_final.pt", "--sim_header", "seqLSTM")
    refused = index(other, videos, tmp_path / "idx")
    assert refused.returncode == 2 and "built with another model" in refused.stderr


def test_hmmc_scores_with_its_own_similarity_over_stored_frame_features(toy, videos, tmp_path):
    from tools.search import Searcher

    ckpt = save_checkpoint(toy, tmp_path / "hmmc" / "model_final.pt", "--method", "hmmc", "--use_frame_fea",
                           "--top_frames", "2")
    assert index(ckpt, videos, tmp_path / "idx").returncode == 0
    searcher = Searcher(tmp_path / "idx")
    assert searcher.mode == "rerank" and [f.ndim for f in searcher.features] == [2, 3, 2]
    queries = ["a red circle moves to the left", "a blue square slides up"]
    with torch.no_grad():
        full = searcher.model.similarity(searcher.encode_text(queries), searcher.features)
        plain = torch.nn.functional.normalize(searcher.encode_text(queries), dim=-1) @ \
            torch.nn.functional.normalize(searcher.features[0], dim=-1).t()
    assert not torch.allclose(full, plain, atol=1e-4)  # the frame term matters: not a dot product
    for q, hits in enumerate(searcher.search(queries, 4)):  # every video a candidate: exact
        top = full[q].topk(4)
        assert [h.entry.id for h in hits] == [searcher.entries[i].id for i in top.indices]
        assert np.allclose([h.score for h in hits], top.values.numpy(), atol=1e-5)
    # With fewer candidates, the head re-scores the best ones by the first embedding.
    searcher.candidates = 3
    for q, hits in enumerate(searcher.search(queries, 2)):
        candidates = plain[q].topk(3).indices
        best = candidates[full[q][candidates].topk(2).indices]
        assert [h.entry.id for h in hits] == [searcher.entries[i].id for i in best]


def test_bad_input_is_one_line(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    done = index(checkpoint, tmp_path / "empty", tmp_path / "idx")
    assert done.returncode == 2 and done.stderr.strip().startswith("error: no video files under")
    done = index(tmp_path / "nope.pt", tmp_path / "empty", tmp_path / "idx")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    from tools.search import main as search

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert search([str(tmp_path / "empty"), "a dog"]) == 2
    assert "not a video index" in err.getvalue() and err.getvalue().count("\n") == 1
