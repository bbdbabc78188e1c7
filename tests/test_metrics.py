import math

import numpy as np
import pytest
import torch

from modules import metrics as M


def reference_legacy(sim: np.ndarray) -> dict:
    """CLIP4Clip's square metric re-stated from its metrics.py: sort each row descending, take every 0-based
    position whose value equals the diagonal value, then R@K = % of positions < K, MdR / MnR =
    median / mean position + 1."""
    positions = []
    for i, row in enumerate(sim):
        descending = np.sort(row)[::-1]
        positions.extend(np.flatnonzero(descending == row[i]).tolist())
    positions = np.asarray(positions, dtype=np.float64)
    out = {f"R{k}": 100.0 * np.mean(positions < k) for k in (1, 5, 10)}
    out["MdR"] = float(np.median(positions) + 1)
    out["MnR"] = float(np.mean(positions) + 1)
    return out


def assert_metrics_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert math.isclose(a[key], b[key], rel_tol=0, abs_tol=1e-9), (key, a[key], b[key])


SQUARE = torch.tensor([[0.9, 0.1, 0.5],
                       [0.8, 0.7, 0.2],
                       [0.1, 0.2, 0.3]])


def test_square_by_hand_both_directions():
    # rows: ranks 1, 2 (0.8 > 0.7), 1
    assert_metrics_equal(M.retrieval_metrics(SQUARE), {"R1": 200 / 3, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 4 / 3})
    # columns: [0.9,0.8,0.1] -> 1, [0.1,0.7,0.2] -> 1, [0.5,0.2,0.3] -> 2
    assert_metrics_equal(M.retrieval_metrics(SQUARE.T), {"R1": 200 / 3, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 4 / 3})
    both = M.multi_caption_metrics(SQUARE, [0, 1, 2])
    assert set(k.split("/")[0] for k in both) == {"t2v", "v2t"}
    assert both["v2t/MnR"] == pytest.approx(4 / 3)


def test_ties_strict_versus_legacy_by_hand():
    sim = torch.tensor([[0.5, 0.5, 0.1],
                        [0.5, 0.5, 0.5],
                        [0.1, 0.2, 0.3]])
    # Strict: nothing is strictly above any diagonal value.
    assert_metrics_equal(M.retrieval_metrics(sim), {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0})
    # Legacy: row 0 gives positions 1,2; row 1 gives 1,2,3; row 2 gives 1 -> six entries.
    legacy = M.retrieval_metrics(sim, legacy_ties=True)
    assert_metrics_equal(legacy, {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 1.5, "MnR": 10 / 6})
    assert_metrics_equal(legacy, reference_legacy(sim.numpy()))


@pytest.mark.parametrize("seed", range(4))
def test_legacy_matches_reference_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    tie_free = rng.standard_normal((n, n)).astype(np.float32)
    tied = np.round(rng.standard_normal((n, n)) * 2).astype(np.float32)  # few distinct values: many ties
    assert_metrics_equal(M.retrieval_metrics(tie_free), reference_legacy(tie_free))
    assert_metrics_equal(M.retrieval_metrics(tie_free, legacy_ties=True), reference_legacy(tie_free))
    assert_metrics_equal(M.retrieval_metrics(tied, legacy_ties=True, tile_elements=64), reference_legacy(tied))
    assert M.retrieval_metrics(tied)["R1"] > reference_legacy(tied)["R1"]  # ties no longer count against a query


def test_recall_uses_rank_at_most_k():
    ranks = torch.tensor([1, 5, 6, 10, 11])
    out = M.metrics_from_ranks(ranks)
    assert out == {"R1": 20.0, "R5": 40.0, "R10": 80.0, "MdR": 6.0, "MnR": 6.6}


# captions -> videos [0, 0, 1, 2, 2]
MULTI = torch.tensor([[0.9, 0.2, 0.35],   # c0 (v0): rank 1
                      [0.3, 0.6, 0.4],    # c1 (v0): 0.6, 0.4 above -> rank 3
                      [0.5, 0.7, 0.8],    # c2 (v1): 0.8 above -> rank 2
                      [0.1, 0.2, 0.3],    # c3 (v2): rank 1
                      [0.95, 0.1, 0.05]])  # c4 (v2): rank 3
OWNER = torch.tensor([0, 0, 1, 2, 2])


def test_multi_caption_by_hand():
    counts = M.count_ranks(M.matrix_tile_fn(MULTI), OWNER, 3)
    ranks = counts.ranks()
    assert ranks["t2v"].tolist() == [1, 3, 2, 1, 3]
    # group maxima: g0 = [0.9, 0.6, 0.4], g1 = [0.5, 0.7, 0.8], g2 = [0.95, 0.2, 0.3]
    # v0: 0.95 > 0.9 -> 2; v1: own 0.7 is top -> 1; v2: 0.4 and 0.8 > 0.3 -> 3
    assert ranks["v2t_groupmax"].tolist() == [2, 1, 3]
    # among captions, v2's column [0.35, 0.4, 0.8, 0.3, 0.05]: three captions above its best 0.3 -> 4
    assert ranks["v2t_allcaps"].tolist() == [2, 1, 4]
    flat = M.multi_caption_metrics(MULTI, OWNER)
    assert flat["t2v/R1"] == pytest.approx(40.0) and flat["t2v/MnR"] == pytest.approx(2.0)
    assert flat["v2t_groupmax/MnR"] == pytest.approx(2.0) and flat["v2t_allcaps/MnR"] == pytest.approx(7 / 3)
    assert "v2t/R1" not in flat


@pytest.mark.parametrize("quantised", [False, True])
def test_chunked_equals_single_tile(quantised):
    rng = np.random.default_rng(7)
    owner = torch.tensor(np.repeat(np.arange(23), rng.integers(1, 5, size=23)))
    sim = torch.tensor(rng.standard_normal((owner.numel(), 23)), dtype=torch.float32)
    if quantised:
        sim = torch.round(sim * 2) / 2
    whole = M.count_ranks(M.matrix_tile_fn(sim), owner, 23, tile_elements=1 << 20).ranks()
    for tile_elements in (1, 9, 50):
        tiled = M.count_ranks(M.matrix_tile_fn(sim), owner, 23, tile_elements=tile_elements).ranks()
        for key in whole:
            assert torch.equal(whole[key], tiled[key]), (tile_elements, key)
    # and against a direct full-matrix statement of the definitions
    gt = sim[torch.arange(owner.numel()), owner]
    assert torch.equal(whole["t2v"], (sim > gt[:, None]).sum(1) + 1)
    own_best = torch.stack([sim[owner == v, v].max() for v in range(23)])
    assert torch.equal(whole["v2t_allcaps"], (sim > own_best[None]).sum(0) + 1)
    group = torch.stack([sim[owner == g].max(0).values for g in range(23)])
    assert torch.equal(whole["v2t_groupmax"], (group > own_best[None]).sum(0) + 1)


def test_legacy_chunked_equals_single_tile():
    rng = np.random.default_rng(3)
    sim = np.round(rng.standard_normal((30, 30)) * 1.5).astype(np.float32)
    assert_metrics_equal(M.retrieval_metrics(sim, legacy_ties=True, tile_elements=1 << 20),
                         M.retrieval_metrics(sim, legacy_ties=True, tile_elements=25))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="square"):
        M.retrieval_metrics(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="outside"):
        M.count_ranks(M.matrix_tile_fn(torch.zeros(2, 2)), torch.tensor([0, 2]), 2)


# DSL: captions c0 -> v0, c1 -> v1; video 0 is a hub for caption 1.
DSL_SIM = torch.tensor([[0.8, 0.7],
                        [0.9, 0.85]])


def test_dsl_by_hand():
    t2v, v2t = M.dsl_transforms(M.matrix_tile_fn(DSL_SIM), 2, 2, temperature=10.0)
    rows, cols = torch.arange(2), torch.arange(2)
    # T2V: softmax over captions in each column: col0 softmax([8, 9]), col1 softmax([7, 8.5])
    p0 = torch.softmax(torch.tensor([8.0, 9.0]), 0)
    p1 = torch.softmax(torch.tensor([7.0, 8.5]), 0)
    expected_t2v = DSL_SIM * torch.stack([p0, p1], 1) * 2
    assert torch.allclose(t2v(DSL_SIM, rows, cols), expected_t2v, atol=1e-6)
    # V2T: softmax over videos in each row
    expected_v2t = DSL_SIM * torch.softmax(10 * DSL_SIM, 1) * 2
    assert torch.allclose(v2t(DSL_SIM, rows, cols), expected_v2t, atol=1e-6)
    raw = M.count_ranks(M.matrix_tile_fn(DSL_SIM), torch.arange(2), 2).ranks()
    dsl = M.count_ranks(M.matrix_tile_fn(DSL_SIM), torch.arange(2), 2, t2v_transform=t2v, v2t_transform=v2t).ranks()
    # raw: c1's own 0.85 < 0.9 (rank 2); v0's own 0.8 < 0.9 (rank 2). DSL: 1.39 > 1.32 and 1.17 > 1.12.
    assert raw["t2v"].tolist() == [1, 2] and raw["v2t"].tolist() == [2, 1]
    assert dsl["t2v"].tolist() == [1, 1] and dsl["v2t"].tolist() == [1, 1]


def test_dsl_statistics_are_tile_independent():
    rng = np.random.default_rng(0)
    sim = torch.tensor(rng.standard_normal((9, 7)), dtype=torch.float32)
    t_big, v_big = M.dsl_transforms(M.matrix_tile_fn(sim), 9, 7, 3.0, tile_elements=1 << 20)
    t_small, v_small = M.dsl_transforms(M.matrix_tile_fn(sim), 9, 7, 3.0, tile_elements=4)
    rows, cols = torch.arange(9), torch.arange(7)
    assert torch.allclose(t_big(sim, rows, cols), t_small(sim, rows, cols), atol=1e-6)
    assert torch.allclose(v_big(sim, rows, cols), v_small(sim, rows, cols), atol=1e-6)
    assert torch.allclose(t_big(sim, rows, cols), sim * torch.softmax(3 * sim, 0) * 9, atol=1e-6)


# QB-Norm: video 0 is every bank query's top-1 -> the only active video.
QB_TEST = torch.tensor([[0.1, 0.2, 0.9],   # c0 -> v2; top-1 v2 not active: raw, rank 1
                        [0.9, 0.8, 0.1],   # c1 -> v1; top-1 v0 active: normalised
                        [0.5, 0.3, 0.2]])  # c2 -> v0; top-1 v0 active: normalised
QB_BANK = torch.tensor([[2.0, 0.0, 0.0],
                        [2.0, 0.0, 0.0]])
QB_OWNER = torch.tensor([2, 1, 0])


def test_qb_norm_by_hand():
    # log Z (beta 1) = [2 + ln 2, ln 2, ln 2]
    # c1: [0.9 - 2.693, 0.8 - 0.693, 0.1 - 0.693] = [-1.79, 0.107, -0.59] -> own v1 first
    # c2: [0.5 - 2.693, 0.3 - 0.693, 0.2 - 0.693] = [-2.19, -0.39, -0.49] -> own v0 third
    ranks, stats = M.qb_norm_t2v_ranks(M.matrix_tile_fn(QB_TEST), QB_OWNER, 3, M.matrix_tile_fn(QB_BANK), 2,
                                       beta=1.0, k=1)
    assert stats.active.tolist() == [True, False, False]
    assert torch.allclose(stats.log_normaliser, torch.tensor([2 + math.log(2), math.log(2), math.log(2)]))
    assert ranks.tolist() == [1, 1, 3]
    raw = M.count_ranks(M.matrix_tile_fn(QB_TEST), QB_OWNER, 3, with_v2t=False).ranks()["t2v"]
    assert raw.tolist() == [1, 2, 1]
    # Needing 3 bank hits leaves no active video: nothing is normalised.
    unchanged, stats = M.qb_norm_t2v_ranks(M.matrix_tile_fn(QB_TEST), QB_OWNER, 3, M.matrix_tile_fn(QB_BANK), 2,
                                           beta=1.0, k=1, min_hits=3)
    assert not stats.active.any() and unchanged.tolist() == [1, 2, 1]
    # k = 2: each bank query's top 2 is v0 plus one of the tied v1 / v2, so v0 gets both hits
    hits = M.bank_top_hits(M.matrix_tile_fn(QB_BANK), 2, 3, k=2, tile_elements=1)
    assert hits[0] == 2 and hits.sum() == 4


def test_select_qb_norm_uses_the_grid_and_returns_best():
    beta, k, grid = M.select_qb_norm(M.matrix_tile_fn(QB_TEST), QB_OWNER, 3, M.matrix_tile_fn(QB_BANK), 2,
                                     betas=[0.01, 1.0], ks=[1])
    assert [row["beta"] for row in grid] == [0.01, 1.0]
    best = max(grid, key=lambda r: (r["R1"], r["R5"], r["R10"]))
    assert (beta, k) == (best["beta"], best["k"])


def test_format_table_lists_every_label():
    flat = M.multi_caption_metrics(MULTI, OWNER)
    flat.update(M.summarise({"t2v": torch.tensor([1, 1, 1, 1, 1])}, prefix="dsl/"))
    table = M.format_table(flat)
    for label in ("t2v", "v2t_groupmax", "v2t_allcaps", "dsl/t2v"):
        assert any(line.startswith(label + " ") for line in table.splitlines()), label


def test_legacy_flag_leaves_multi_caption_sets_strict():
    tied = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.2, 0.2]])  # captions 0, 1 -> video 0; caption 2 -> video 1
    counts = M.count_ranks(M.matrix_tile_fn(tied), torch.tensor([0, 0, 1]), 2, count_ties=True)
    assert counts.ranks(legacy_ties=True)["t2v"].tolist() == counts.ranks()["t2v"].tolist() == [1, 1, 1]
    assert counts.ranks(legacy_ties=True)["v2t_allcaps"].tolist() == [1, 3]
