"""Feature-collapse diagnostics (tools/diagnostics.py) on hand-computed cases and on constructed collapsed
and healthy feature sets, with the expectations derived here. Everything runs in float64, so the exact
cases hold to 1e-12 (rounding of a few dozen fp64 operations is ~1e-15)."""
import math

import pytest
import torch

from tools.diagnostics import effective_rank, mean_pairwise_cosine

EXACT = 1e-12


def test_mean_pairwise_cosine_by_hand():
    # (1,0), (0,1), (1,1): cosines 0, 1/sqrt2, 1/sqrt2, each pair counted in both orders -> sqrt2 / 3.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert mean_pairwise_cosine(x) == pytest.approx(math.sqrt(2) / 3, abs=EXACT)
    # Scaling a row changes no cosine; a zero row has cosine 0 with all (6 ordered pairs, 2 of them nonzero).
    assert mean_pairwise_cosine(x * torch.tensor([[2.0], [5.0], [0.5]])) == pytest.approx(math.sqrt(2) / 3, abs=EXACT)
    with_zero = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    assert mean_pairwise_cosine(with_zero) == pytest.approx(2 / 6, abs=EXACT)


def test_mean_pairwise_cosine_equals_the_off_diagonal_mean_of_the_cosine_matrix():
    x = torch.randn(200, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.3
    u = x / x.norm(dim=1, keepdim=True)
    cos = u @ u.T
    off_diagonal = (cos.sum() - cos.diagonal().sum()) / (200 * 199)
    assert mean_pairwise_cosine(x) == pytest.approx(float(off_diagonal), abs=EXACT)


def test_effective_rank_exact_cases():
    # Rows +e_k and -e_k for k < r: centred already, all r singular values sqrt2 -> entropy log r -> r.
    for r, d in ((1, 8), (3, 8), (8, 8)):
        basis = torch.eye(d, dtype=torch.float64)[:r]
        x = torch.cat([basis, -basis])
        assert effective_rank(x) == pytest.approx(r, rel=EXACT)
        # A shared offset and a scale are no new directions.
        assert effective_rank(3.0 * x + torch.arange(d, dtype=torch.float64)) == pytest.approx(r, rel=EXACT)
    # Singular values 2 and 1 (rows +-2e_0, +-e_1, scaled by sqrt2 each): p = (2/3, 1/3).
    x = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    entropy = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert effective_rank(x) == pytest.approx(math.exp(entropy), rel=EXACT)
    assert effective_rank(torch.ones(5, 4)) == 0.0  # no variation at all


def collapsed_set(n=512, d=32, spread=3e-3, noise=1e-8, seed=0):
    """Every row is e_0, moved a little along e_1 only, plus a much smaller isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, generator=g, dtype=torch.float64)
    noise_rows = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = noise * noise_rows
    x[:, 0] += 1.0
    x[:, 1] += spread * s
    return x, s, noise_rows


def test_collapsed_features_have_cosine_near_1_and_effective_rank_near_1():
    n, d, spread, noise = 512, 32, 3e-3, 1e-8
    x, s, noise_rows = collapsed_set(n, d, spread, noise)
    # Cosine: each row is e_0 + a_i with |a_i| <= r = max_i (spread |s_i| + noise |g_i|); for unit v,
    # (v+a).(v+b) >= 1 - 2r - r^2 and |v+a| <= 1 + r, so every cosine is >= (1 - 2r - r^2) / (1 + r)^2.
    r = float((spread * s.abs() + noise * noise_rows.norm(dim=1)).max())
    lower = (1 - 2 * r - r * r) / (1 + r) ** 2
    assert lower > 0.95
    assert lower <= mean_pairwise_cosine(x) <= 1.0
    # Effective rank: centred rows = spread (s - mean s) e_1^T + noise G_c. By Weyl, every singular value
    # but the first is <= |noise G_c|_2 <= noise |G_c|_F, and the first is >= spread |s - mean s| minus that.
    # So the mass off the first, delta, is at most (d - 1) e / (spread |s - mean s| - e), and the entropy is
    # at most h(delta) + delta log(d - 1) (the rest spread evenly): effective rank <= exp of that.
    e = noise * float((noise_rows - noise_rows.mean(0)).norm())
    delta = (d - 1) * e / (spread * float((s - s.mean()).norm()) - e)
    upper = math.exp(-delta * math.log(delta) - (1 - delta) * math.log(1 - delta) + delta * math.log(d - 1))
    assert upper < 1.01
    assert 1.0 <= effective_rank(x) <= upper


def test_isotropic_features_have_cosine_near_0_and_effective_rank_near_the_dimension():
    n, d = 4096, 16
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # Cosine: mean 0; sum_{i != j} u_i.u_j has variance 2 n (n-1) Var(u_i.u_j) = 2 n (n-1) / d, so the mean
    # over n (n-1) pairs has standard deviation sqrt(2 / (d n (n-1))) (5.5e-5 here); allow 6 of them.
    assert abs(mean_pairwise_cosine(x)) < 6 * math.sqrt(2 / (d * n * (n - 1)))
    # Effective rank: the centred n x d Gaussian matrix is an (n-1) x d one in rotated rows, whose singular
    # values lie in sqrt(n-1) -+ (sqrt d + t) with probability >= 1 - 2 exp(-t^2 / 2) (Davidson & Szarek);
    # with t = 4 (failure <= 7e-4) and entropy >= -log max p >= log(d s_min / s_max): >= d s_min / s_max.
    s_min, s_max = math.sqrt(n - 1) - math.sqrt(d) - 4, math.sqrt(n - 1) + math.sqrt(d) + 4
    assert d * s_min / s_max > 12
    assert d * s_min / s_max <= effective_rank(x) <= d


def test_collapsed_and_healthy_sets_are_told_apart_at_equal_size():
    collapsed, _, _ = collapsed_set(n=256, d=16)
    healthy = torch.randn(256, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert mean_pairwise_cosine(collapsed) > 0.9 > 0.1 > abs(mean_pairwise_cosine(healthy))
    assert effective_rank(collapsed) < 1.1 < 10 < effective_rank(healthy)


def test_float32_and_gradient_carrying_input_are_accepted():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert effective_rank(x) == pytest.approx(effective_rank(x.detach().double()), rel=EXACT)
    assert mean_pairwise_cosine(x) == pytest.approx(mean_pairwise_cosine(x.detach().double()), abs=EXACT)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(5), "features must be a (rows, dim) matrix with at least 2 rows, got shape (5,)"),
    (torch.zeros(1, 4), "features must be a (rows, dim) matrix with at least 2 rows, got shape (1, 4)"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "features contain NaN or infinite values"),
])
def test_bad_input_is_one_clear_error(bad, message):
    for function in (mean_pairwise_cosine, effective_rank):
        with pytest.raises(ValueError) as error:
            function(bad)
        assert str(error.value) == message


def write_index(root, features):
    """An index folder as tools.index writes it (header, one shard, one line per video), with ``features``."""
    from tools.store import IndexStore

    store = IndexStore.create_or_open(root, {"model": {"head": "meanP"}, "settings": {}})
    lines = [{"id": i, "path": f"/videos/{i}.mp4", "size": 1, "mtime": 0.0, "duration": 1.0, "fps": 5.0,
              "num_frames": 5, "frames": [0]} for i in range(len(features))]
    store.commit((features,), lines)
    return root


def test_command_line_reports_each_index(tmp_path, capsys):
    from tools.diagnostics import main

    collapsed, _, _ = collapsed_set(n=64, d=16)
    healthy = torch.randn(64, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    first, second = write_index(tmp_path / "a", collapsed.float()), write_index(tmp_path / "b", healthy.float())
    assert main([str(first), str(second)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # The index stores float16: the numbers are those of the stored (rounded) features.
    for line, path, stored in zip(lines, (first, second), (collapsed.half(), healthy.half())):
        assert line == (f"{path}: 64 videos x 16 dims: mean pairwise cosine {mean_pairwise_cosine(stored):.4f}, "
                        f"effective rank {effective_rank(stored):.2f} of 16")
    assert float(lines[0].split("cosine ")[1].split(",")[0]) > 0.99
    assert float(lines[1].split("rank ")[1].split(" of")[0]) > 10


def test_command_line_refuses_a_folder_that_is_no_index_in_one_line(tmp_path, capsys):
    from tools.diagnostics import main

    frames = write_index(tmp_path / "frames", torch.randn(4, 3, 8))  # one (frames, dim) matrix per video
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path}: not a video index (no index.json); build one with python -m tools.index\n"
    assert main([str(frames)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {frames}: its first feature tensor is (4, 3, 8), not one vector per video; these "
                   "diagnostics need (videos, dim)\n")


def test_every_evaluation_reports_the_spread_of_both_towers():
    # engine.evaluate's check: the video side is a collapsed set (rows +-e_0 and +-e_1 around one far offset:
    # cosine near 1, effective rank 2, up to the float32 rounding of the rows), the text side a head's tuple
    # (its first tensor counts); per-frame features (3-D) are no vectors per item and are not judged.
    from engine.evaluate import EncodedSplit, feature_spread_metrics

    basis = torch.eye(16)[:2]
    video = torch.cat([basis, -basis]) * 0.01 + torch.full((16,), 1.0)
    text = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    encoded = EncodedSplit(text=(text, torch.randn(4, 3)), video=video, caption_to_video=torch.arange(4), num_videos=4)
    spread, note = feature_spread_metrics(encoded)
    assert spread["features/video_effective_rank"] == pytest.approx(2.0, rel=1e-6)  # float32 rows
    assert spread["features/video_cosine"] == pytest.approx(mean_pairwise_cosine(video), abs=EXACT)
    assert spread["features/video_cosine"] > 0.999
    assert spread["features/text_cosine"] == pytest.approx(mean_pairwise_cosine(text), abs=EXACT)
    assert spread["features/text_effective_rank"] == pytest.approx(effective_rank(text), abs=EXACT)
    assert note.startswith("features: video mean pairwise cosine 1.000, effective rank 2.0 of 16; text ")
    frames = EncodedSplit(text=text, video=torch.randn(4, 3, 16), caption_to_video=torch.arange(4), num_videos=4)
    assert set(feature_spread_metrics(frames)[0]) == {"features/text_cosine", "features/text_effective_rank"}
