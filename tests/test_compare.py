"""tools/compare.py: every registered method under one protocol, mean ± std over seeds, resumable.
End to end on a tiny generated toy set: 2 methods x 2 seeds x 1 epoch of a tiny random CLIP (4 runs of
main_task_retrieval.py, plus one re-run of an arm left half-written)."""
import csv
import json
import math
import statistics

import pytest

from tools import compare

METHODS = ("meanP", "seqTransf")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from preprocess.make_toy_dataset import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, num_train=8, num_test=6, size=32, fps=5,
                            seconds=1.6, workers=1, progress=False)


def shared_flags(toy):
    # 8 training videos (one caption each per epoch) in batches of 4: 2 optimiser steps per epoch.
    return ["--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos"),
            "--pretrained_clip_name", "tiny", "--clip_init", "random", "--freeze_layer_num", "-1",
            "--image_resolution", "32", "--max_frames", "2", "--max_words", "24", "--cross_num_hidden_layers", "1",
            "--epochs", "1", "--batch_size", "4", "--batch_size_val", "6", "--num_thread_reader", "0",
            "--video_backend", "cv2"]


def final_metrics(folder):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "test"][-1]["metrics"]


def test_two_methods_two_seeds_table_arithmetic_and_resume(toy, tmp_path, capsys):
    from engine.options import parse_args
    from modules.factory import build_model, count_parameters

    out = tmp_path / "cmp"
    argv = ["--output_dir", str(out), "--methods", *METHODS, "--seeds", *map(str, SEEDS), "--", *shared_flags(toy)]
    assert compare.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert [line.split("] ")[1].split(":")[0] for line in printed.splitlines() if line.startswith("[")] == \
        ["meanP seed 0", "meanP seed 1", "seqTransf seed 0", "seqTransf seed 1"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    metric_columns = [f"{d}_{m}" for d in ("T2V", "V2T") for m in ("R1", "R5", "R10", "MdR")]
    measured = ["trained_parameters", "seconds_per_step", "peak_memory_mib"]
    assert list(rows[0]) == ["method", "n_seeds", "seeds", *[f"{c}_{s}" for c in metric_columns + measured
                                                             for s in ("mean", "std")], "memory_kind"]
    assert [r["method"] for r in rows] == list(METHODS)
    markdown = (out / "compare.md").read_text()
    differing = 0  # columns where the seeds disagree: there the std check tells n - 1 from n
    for row in rows:
        method = row["method"]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1" and row["memory_kind"] == "cpu_rss"
        folders = [out / method / f"seed{seed}" for seed in SEEDS]
        metrics = [final_metrics(folder) for folder in folders]
        for column in metric_columns:
            direction, name = column.split("_")
            a, b = (m[f"{direction.lower()}/{name}"] for m in metrics)
            differing += a != b
            # Two seeds: mean (a + b) / 2, sample standard deviation |a - b| / sqrt 2.
            assert float(row[f"{column}_mean"]) == pytest.approx((a + b) / 2, rel=1e-12)
            assert float(row[f"{column}_std"]) == pytest.approx(abs(a - b) / math.sqrt(2), rel=1e-12, abs=1e-12)
        t2v = [m["t2v/R1"] for m in metrics]
        assert f"| {method} | 2 | {statistics.fmean(t2v):.2f} ± {statistics.stdev(t2v):.2f} |" in markdown

        arms = [json.loads((folder / "arm.json").read_text()) for folder in folders]
        model = build_model(parse_args(arms[0]["flags"]))
        assert model.head_name == method
        assert float(row["trained_parameters_mean"]) == count_parameters(model, trainable_only=True)
        for arm in arms:
            assert arm["steps_timed"] == 1  # the 2 steps of the epoch: one interval
            assert arm["seconds_per_step"] > 0 and arm["memory_kind"] == "cpu_rss"
            assert arm["peak_memory_mib"] > 4 * count_parameters(model) / 2**20  # at least the fp32 weights
        assert all(not (folder / "checkpoint_last.pt").exists() and (folder / "model_final.pt").is_file()
                   for folder in folders)
    assert differing > 0

    # Resume: finished arms are skipped; an arm without arm.json (killed half-way) is re-run from scratch.
    logs = {(m, s): out / m / f"seed{s}" / "log.txt" for m in METHODS for s in SEEDS}
    before = {arm: path.stat().st_mtime_ns for arm, path in logs.items()}
    half = out / "seqTransf" / "seed1"
    (half / "arm.json").unlink()
    (half / "partial.txt").write_text("left by a killed run")
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("done already") == 3 and "[4/4] seqTransf seed 1: " in printed
    assert all(logs[arm].stat().st_mtime_ns == before[arm] for arm in logs if arm != ("seqTransf", 1))
    assert logs[("seqTransf", 1)].stat().st_mtime_ns != before[("seqTransf", 1)]
    assert (half / "arm.json").is_file() and not (half / "partial.txt").exists()

    # The same folder with other shared flags would mix protocols: one line, nothing run.
    assert compare.main([*argv, "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out} holds a comparison run with other flags")


def test_registry_is_the_head_registry_with_variants():
    from modules.heads import HEADS, get_head, list_heads, register_head

    methods = compare.registered_methods()
    assert {"dgl_linear", "dgl_transformer", "t2vlp", "t2vlp_rerank"} <= set(methods)
    assert set(list_heads()) - {"dgl"} <= set(methods) and "dgl" not in methods
    assert methods["dgl_linear"].flags == ("--method", "dgl", "--shared_latent_space", "linear")
    # T2VLP's raw and re-ranked rows come from one run, read under two metric prefixes.
    assert methods["t2vlp"].arm == methods["t2vlp_rerank"].arm == "t2vlp"
    assert (methods["t2vlp"].prefix, methods["t2vlp_rerank"].prefix) == ("", "rerank/")
    # A newly registered head is a method without editing the tool.
    register_head("toyhead_for_compare")(type("ToyHead", (get_head("meanP"),), {}))
    try:
        assert compare.select_methods(["toyhead_for_compare"])[0].flags == ("--method", "toyhead_for_compare")
    finally:
        del HEADS["toyhead_for_compare"]


def test_arm_flags_method_first_then_shared_then_the_tools(tmp_path):
    method = compare.registered_methods()["dgl_linear"]
    flags = compare.arm_flags(method, ["--epochs", "3", "--shared_latent_space", "transformer"], 2, tmp_path / "a")
    assert flags == ["--method", "dgl", "--shared_latent_space", "linear", "--epochs", "3", "--shared_latent_space",
                     "transformer", "--do_train", "--seed", "2", "--output_dir", str(tmp_path / "a"), "--n_display", "1"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "meanP", "nosuch"], "error: unknown method nosuch; known: "),
    (["--methods", "meanP", "--", "--seed", "3"], "error: --seed after '--' is set per arm by tools.compare"),
    (["--", "--method=ump"], "error: --method after '--' is set per arm by tools.compare"),
    (["--seeds", "x"], "error: argument --seeds: invalid int value: 'x'"),
])
def test_bad_command_is_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) if "--seeds" in argv else _nothing():
        code = compare.main(["--output_dir", str(tmp_path / "o"), *argv])
        assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    if "unknown method" in message:
        assert err.rstrip().endswith(", ".join(compare.registered_methods()))
    assert not (tmp_path / "o").exists()


def test_other_flags_are_refused_only_once_an_arm_is_done(tmp_path):
    out = tmp_path / "cmp"
    compare.check_settings(out, ["--epochs", "1"])
    compare.check_settings(out, ["--epochs", "2"])  # nothing done yet (e.g. every run failed): the new flags win
    assert json.loads((out / "compare.json").read_text())["flags"] == ["--epochs", "2"]
    (out / "meanP" / "seed0").mkdir(parents=True)
    (out / "meanP" / "seed0" / "arm.json").write_text("{}")
    compare.check_settings(out, ["--epochs", "2"])
    with pytest.raises(compare.CompareError, match="holds a comparison run with other flags"):
        compare.check_settings(out, ["--epochs", "3"])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
