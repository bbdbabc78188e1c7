"""--eval_query_subset: T2V metrics over a subset of the queries, ranked against the whole gallery,
checked on hand-computed score matrices; the subset file formats; the flag."""
import json
from types import SimpleNamespace

import pytest
import torch

from engine.evaluate import (EncodedSplit, evaluate_encoded, find_subset_file, read_subset_entries,
                             subset_query_indices)
from engine.options import parse_args


class MatrixModel:
    """similarity() reads a fixed (captions x videos) matrix; a feature row holds its own index."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def similarity(self, text, video):
        return self.scores[text[:, 0].long()][:, video[:, 0].long()]


def encoded_for(scores, caption_to_video):
    n_text, n_video = len(scores), len(scores[0])
    return EncodedSplit(torch.arange(n_text, dtype=torch.float32)[:, None],
                        torch.arange(n_video, dtype=torch.float32)[:, None],
                        torch.tensor(caption_to_video), n_video)


def fake_dataset(video_ids, captions, caption_to_video, missing=()):
    return SimpleNamespace(records=[SimpleNamespace(video_id=v) for v in video_ids], captions=list(captions),
                           caption_to_video=torch.tensor(caption_to_video), num_videos=len(video_ids),
                           num_captions=len(captions), missing_videos=[SimpleNamespace(video_id=v) for v in missing])


def eval_args(subsets, **extra):
    base = dict(eval_tile_elements=4, legacy_metrics=False, dsl=False, dsl_temperature=1.0, qb_norm=False,
                eval_query_subset=subsets, data_path=None)
    return SimpleNamespace(**{**base, **extra})


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


# Square set. Ground truth on the diagonal; strict ranks: c0 1, c1 3 (0.8 and 0.7 above 0.5), c2 2 (0.4
# above 0.3), c3 1 (all four scores tie at 0.6: nothing strictly higher).
SQUARE = [[0.9, 0.1, 0.2, 0.3],
          [0.8, 0.5, 0.7, 0.1],
          [0.1, 0.2, 0.3, 0.4],
          [0.6, 0.6, 0.6, 0.6]]
SQUARE_IDS = ["v0", "v1", "v2", "v3"]
SQUARE_CAPTIONS = ["caption zero", "caption one", "caption two", "caption three"]


def run_square(tmp_path, entries, name="sub", **extra):
    args = eval_args([(name, write_json(tmp_path / f"{name}.json", entries))], **extra)
    dataset = fake_dataset(SQUARE_IDS, SQUARE_CAPTIONS, [0, 1, 2, 3])
    return evaluate_encoded(MatrixModel(SQUARE), encoded_for(SQUARE, [0, 1, 2, 3]), args, dataset=dataset)


def test_square_subset_by_video_ids_against_the_whole_gallery(tmp_path):
    result = run_square(tmp_path, ["v1", "v3"])
    m = result.metrics
    # Overall: ranks 1, 3, 2, 1 (unchanged by the subset).
    assert (m["t2v/R1"], m["t2v/R5"], m["t2v/MdR"], m["t2v/MnR"]) == (50.0, 100.0, 1.5, 1.75)
    # Subset: captions 1 and 3, ranks 3 and 1, still against all four videos.
    assert (m["sub/t2v/R1"], m["sub/t2v/R5"], m["sub/t2v/R10"], m["sub/t2v/MdR"], m["sub/t2v/MnR"]) == (
        50.0, 100.0, 100.0, 2.0, 2.0)
    assert m["sub/num_captions"] == 2.0
    assert "v2t/R1" in m and not any(k.startswith("sub/v2t") for k in m)
    rows = [line.split()[0] for line in result.table.splitlines()[-3:]]
    assert rows == ["t2v", "v2t", "sub/t2v"]
    assert "sub/t2v: the 2 captions selected by" in result.table and "against all 4 videos" in result.table


def test_other_subset_and_caption_strings(tmp_path):
    m = run_square(tmp_path, ["v0", "v2"]).metrics
    assert (m["sub/t2v/R1"], m["sub/t2v/MdR"], m["sub/t2v/MnR"]) == (50.0, 1.5, 1.5)  # ranks 1, 2
    m = run_square(tmp_path, ["caption two"]).metrics  # a caption selects itself: rank 2
    assert (m["sub/t2v/R1"], m["sub/t2v/R5"], m["sub/t2v/MdR"], m["sub/num_captions"]) == (0.0, 100.0, 2.0, 1.0)


def test_legacy_ties_apply_to_the_subset_too(tmp_path):
    m = run_square(tmp_path, ["v1", "v3"], legacy_metrics=True).metrics
    # CLIP4Clip's equality search: caption 3 ties with all 4 videos -> entries 1, 2, 3, 4; caption 1 -> 3.
    # Entries 3, 1, 2, 3, 4: R1 = 1/5, median 3, mean 13/5.
    assert m["sub/t2v/R1"] == pytest.approx(20.0)
    assert (m["sub/t2v/MdR"], m["sub/t2v/MnR"]) == (3.0, pytest.approx(2.6))


def test_multi_caption_subset_and_post_processing(tmp_path):
    scores = [[0.9, 0.1, 0.0],   # c0 -> v0: rank 1
              [0.2, 0.5, 0.3],   # c1 -> v0: rank 3
              [0.1, 0.7, 0.8],   # c2 -> v1: rank 2
              [0.3, 0.2, 0.4],   # c3 -> v2: rank 1
              [0.5, 0.6, 0.1]]   # c4 -> v2: rank 3
    owners = [0, 0, 1, 2, 2]
    captions = ["a", "b", "c", "d", "e"]
    dataset = fake_dataset(["x0", "x1", "x2"], captions, owners)
    args = eval_args([("first", write_json(tmp_path / "first.json", {"video_ids": ["x0"]})),
                      ("mixed", write_json(tmp_path / "mixed.json", {"video_ids": ["x2"], "captions": ["c"]}))],
                     dsl=True)
    m = evaluate_encoded(MatrixModel(scores), encoded_for(scores, owners), args, dataset=dataset).metrics
    assert (m["first/t2v/R1"], m["first/t2v/MdR"], m["first/t2v/MnR"]) == (50.0, 2.0, 2.0)  # ranks 1, 3
    assert m["mixed/t2v/R1"] == pytest.approx(100 / 3)  # captions 2, 3, 4: ranks 2, 1, 3
    assert (m["mixed/t2v/MdR"], m["mixed/t2v/MnR"], m["mixed/num_captions"]) == (2.0, 2.0, 3.0)
    # DSL subsets are the DSL ranks of the same captions: check against a direct computation.
    s = torch.tensor(scores)
    dsl = s * torch.softmax(s, dim=0) * len(captions)
    gt = dsl[torch.arange(5), torch.tensor(owners)]
    ranks = 1 + (dsl > gt[:, None]).sum(1)
    assert m["dsl/first/t2v/MnR"] == pytest.approx(ranks[[0, 1]].float().mean().item())
    assert m["dsl/mixed/t2v/MnR"] == pytest.approx(ranks[[2, 3, 4]].float().mean().item())


def test_no_subset_flag_leaves_the_metrics_unchanged(tmp_path):
    args = eval_args(None)
    m = evaluate_encoded(MatrixModel(SQUARE), encoded_for(SQUARE, [0, 1, 2, 3]), args).metrics
    # Only the overall rankings (and the feature-spread check every evaluation adds), no subset rows.
    assert sorted(k.split("/")[0] for k in m if "/" in k and not k.startswith("features/")) == ["t2v"] * 5 + ["v2t"] * 5


def test_temporal_pairs_format_is_read_directly(tmp_path):
    pairs = {"description": "...", "video_ids": ["video600", "video601"],
             "pairs": [{"kind": "direction", "video_ids": ["video600", "video601"],
                        "captions": ["red circle moves left", "red circle moves right"]}]}
    path = tmp_path / "temporal_pairs.json"
    path.write_text(json.dumps(pairs))
    assert read_subset_entries(path) == ["video600", "video601"]
    path.write_text(json.dumps(["a", "b"]))
    assert read_subset_entries(path) == ["a", "b"]
    for bad, message in (({"pairs": []}, "without a 'video_ids'"), ([1, 2], "must be a string"),
                         ("video1", "holds a JSON str"), ({"video_ids": "video1"}, "must be a string")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            read_subset_entries(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        read_subset_entries(path)


def test_entries_resolve_to_captions_or_fail_clearly():
    owners = torch.tensor([0, 0, 1, 2])
    captions = ["a", "b", "c", "d"]
    assert subset_query_indices(["v0", "d"], ["v0", "v1", "v2"], captions, owners).tolist() == [0, 1, 3]
    assert subset_query_indices(["v2", "v2", "d"], ["v0", "v1", "v2"], captions, owners).tolist() == [3]
    # A video missing on disk (excluded from the split) is skipped; anything else unknown is an error.
    assert subset_query_indices(["v1", "gone"], ["v0", "v1", "v2"], captions, owners, skip=["gone"]).tolist() == [2]
    with pytest.raises(ValueError, match="1 entries are neither.*'v9'"):
        subset_query_indices(["v0", "v9"], ["v0", "v1", "v2"], captions, owners)
    with pytest.raises(ValueError, match="selects no caption"):
        subset_query_indices(["gone"], ["v0", "v1", "v2"], captions, owners, skip=["gone"])


def test_subset_file_is_found_as_given_or_in_data_path(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.json").write_text("[]")
    monkeypatch.chdir(tmp_path)
    assert find_subset_file("pairs.json", SimpleNamespace(data_path=str(data))) == data / "pairs.json"
    (data / "MSRVTT_data.json").write_text("{}")  # msrvtt's --data_path may name the json file
    assert find_subset_file("pairs.json", SimpleNamespace(data_path=str(data / "MSRVTT_data.json"))) == data / "pairs.json"
    assert find_subset_file(str(data / "pairs.json"), SimpleNamespace(data_path=None)) == data / "pairs.json"
    with pytest.raises(ValueError, match="no such file other.json"):
        find_subset_file("other.json", SimpleNamespace(data_path=str(data)))


def test_flag_parsing_repeatable_and_checked(tmp_path, capsys):
    args = parse_args(["--eval_query_subset", "temporal=t.json", "--eval_query_subset", "b-2=dir/x=y.json"])
    assert args.eval_query_subset == [("temporal", "t.json"), ("b-2", "dir/x=y.json")]
    assert parse_args([]).eval_query_subset is None
    config = tmp_path / "c.yaml"
    config.write_text("eval_query_subset: temporal=temporal_pairs.json\n")
    assert parse_args(["--config", str(config)]).eval_query_subset == [("temporal", "temporal_pairs.json")]
    for bad in ("temporal", "=x.json", "a/b=x.json", "t2v=x.json", "dsl=x.json"):
        with pytest.raises(SystemExit):
            parse_args(["--eval_query_subset", bad])
    assert "NAME=FILE.json" in capsys.readouterr().err


def test_name_given_twice_is_refused(tmp_path):
    path = write_json(tmp_path / "s.json", ["v1"])
    args = eval_args([("s", path), ("s", path)])
    with pytest.raises(ValueError, match="given twice"):
        evaluate_encoded(MatrixModel(SQUARE), encoded_for(SQUARE, [0, 1, 2, 3]), args,
                         dataset=fake_dataset(SQUARE_IDS, SQUARE_CAPTIONS, [0, 1, 2, 3]))


# DSL acts on logits: with cosines in [-1, 1] and T = 1 the column softmax is nearly flat. Caption 0
# ranks video 1 (0.58) above its own video 0 (0.50); video 1 is caption 1's by far (0.60 vs 0.58 at
# T = 100), so DSL at the model's logit scale restores rank 1, while T = 1 keeps it at rank 2.
# Hand computation (T2V, softmax over each video's captions, times 2 captions):
#   T = 1:   S'[0,0] = 0.50*2*softmax(0.50, 0.30)[0] = 0.5498 < S'[0,1] = 0.58*2*softmax(0.58, 0.60)[0] = 0.5742
#   T = 100: S'[0,0] = 0.50*2*0.99999998 = 1.0000       > S'[0,1] = 0.58*2*0.1192 = 0.1383
DSL_SCORES = [[0.50, 0.58],
              [0.30, 0.60]]


class ScaledMatrixModel(MatrixModel):
    def score_scale(self):
        return 100.0  # a trained CLIP's exp(logit_scale)


def test_dsl_temperature_defaults_to_the_models_logit_scale():
    encoded = encoded_for(DSL_SCORES, [0, 1])
    by_default = evaluate_encoded(ScaledMatrixModel(DSL_SCORES), encoded, eval_args(None, dsl=True, dsl_temperature=None))
    at_one = evaluate_encoded(ScaledMatrixModel(DSL_SCORES), encoded, eval_args(None, dsl=True, dsl_temperature=1.0))
    assert by_default.metrics["t2v/R1"] == 50.0  # raw: caption 0 at rank 2
    assert by_default.metrics["dsl/temperature"] == 100.0 and by_default.metrics["dsl/t2v/R1"] == 100.0
    assert at_one.metrics["dsl/temperature"] == 1.0 and at_one.metrics["dsl/t2v/R1"] == 50.0
    assert "logit scale" in by_default.table and "--dsl_temperature" in at_one.table


def test_dsl_temperature_default_per_head():
    from tests.test_heads import tiny_args
    from modules.factory import build_model

    assert parse_args([]).dsl_temperature is None
    mean_p = build_model(tiny_args(sim_header="meanP"))
    assert mean_p.score_scale() == pytest.approx(float(mean_p.clip.logit_scale.detach().exp()))
    assert build_model(tiny_args(sim_header="tightTransf")).score_scale() == 1.0  # trained on raw pair scores
