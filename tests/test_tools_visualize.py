"""Pictures of a run: each is written at its expected size, and the retrieval grid marks the right video
(checked on the data behind the picture); the modality-gap projection; the model zoo table;
--tensorboard writes the scalars of metrics.jsonl."""
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import main_task_retrieval
from tests.tools_fixtures import make_toy, model_argv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-epoch run with a validation split, its TensorBoard events and its toy data."""
    root = tmp_path_factory.mktemp("run")
    toy = make_toy(root / "toy")
    argv = model_argv(toy, root / "run", "--epochs", "2", "--val_from_train", "4", "--tensorboard",
                      "--sim_header", "seqTransf", "--cross_num_hidden_layers", "1")
    assert main_task_retrieval.main(argv) == 0
    return root / "run"


def test_retrieval_grid_marks_the_ground_truth(run, tmp_path):
    from tools.visualize import encoded_test_set, main, retrieval_rows, run_checkpoint

    assert main(["retrievals", "--run", str(run), "--n", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (1620, 390)  # (3.2 + 5 x 2.6) x (4 x 0.9 + 0.3) inches at 100 dpi
    rows = json.loads((tmp_path / "grid.json").read_text())
    model, dataset, encoded = encoded_test_set(run_checkpoint(run))
    scores = model.similarity(encoded.text, encoded.video)  # scored independently of the tool
    assert len(rows) == 4
    for row in rows:
        c = row["caption_index"]
        truth = int(encoded.caption_to_video[c])
        assert row["caption"] == dataset.captions[c] and row["ground_truth"] == truth
        assert [hit["video"] for hit in row["top"]] == scores[c].topk(5).indices.tolist()
        assert [hit["is_ground_truth"] for hit in row["top"]] == [v == truth for v in scores[c].topk(5).indices.tolist()]
        assert row["ground_truth_rank"] == 1 + int((scores[c] > scores[c, truth]).sum())
    # Failures only: every shown caption's ground truth is below rank 1.
    failures = retrieval_rows(model, dataset, encoded, n=10, failures=True)
    ranks = 1 + (scores > scores.gather(1, encoded.caption_to_video[:, None])).sum(1)
    assert [r["caption_index"] for r in failures] == [int(c) for c in torch.nonzero(ranks > 1).flatten()]


def test_curves_from_the_log_and_metrics_of_several_runs(run, tmp_path):
    from tools.visualize import main, training_log

    assert main(["curves", "--run", str(run), str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert Image.open(tmp_path / "curves.png").size == (1500, 400)
    data = json.loads((tmp_path / "curves.json").read_text())["runs"][str(run)]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert data["eval"]["val"] == [[r["epoch"], r["metrics"]["t2v/R1"]] for r in records if r["split"] == "val"]
    assert len(data["train"]["steps"]) == 4 and len(data["train"]["epochs"]) == 2  # 8 videos / batch 4, 2 epochs
    assert training_log(run)["steps"][-1][0] == 2.0


def copy_of_run(run, folder, scores: dict[str, list] | None = None):
    """The run's log.txt in another folder; its metrics.jsonl, or records of another task's score
    (as MetricsLog writes them) with values per split: {"val": [(epoch, value), ...], ...}."""
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text((run / "log.txt").read_text())
    if scores is None:
        (folder / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
        return folder
    (key, values), = scores.items()
    lines = [json.dumps({"split": split, "epoch": epoch, "metrics": {key: value, "num_videos": 6.0}})
             for split, points in values.items() for epoch, value in points]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_curves_name_runs_apart_plot_each_task_score_and_mark_single_evaluations(run, tmp_path):
    from tools.visualize import main

    runs = [copy_of_run(run, tmp_path / "a" / "seed1"), copy_of_run(run, tmp_path / "b" / "seed1"),
            copy_of_run(run, tmp_path / "caption" / "seed1",
                        {"CIDEr": {"val": [(1, 10.0), (2, 20.0)], "test": [(2, 18.0)]}}),
            copy_of_run(run, tmp_path / "qa" / "seed1", {"accuracy": {"val": [(1, 30.0), (2, 40.0)]}})]
    assert main(["curves", "--run", *map(str, runs), "--out", str(tmp_path / "curves.png")]) == 0
    assert Image.open(tmp_path / "curves.png").size == (2500, 400)  # 5 panels of 5 x 4 inches at 100 dpi
    panels = json.loads((tmp_path / "curves.json").read_text())["panels"]
    assert [p["title"] for p in panels] == ["training loss", "learning rate", "text-to-video R@1",
                                            "captioning CIDEr", "QA accuracy"]
    # Folders with the same last name are told apart by their parents.
    assert [line["label"] for line in panels[0]["lines"]] == ["a/seed1", "b/seed1", "caption/seed1", "qa/seed1"]
    # The retrieval runs: validation per epoch, the test once at the end (a star, labelled as such).
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [[float(r["epoch"]), r["metrics"]["t2v/R1"]] for r in records if r["split"] == "val"]
    final = [[float(r["epoch"]), r["metrics"]["t2v/R1"]] for r in records if r["split"] == "test"]
    assert len(val) == 2 and len(final) == 1
    assert panels[2]["lines"] == [
        {"label": f"{name} {split}", "marker": marker, "points": points}
        for name in ("a/seed1", "b/seed1")
        for split, marker, points in (("test (evaluated once, epoch 2)", "*", final), ("val", "o", val))]
    assert panels[3]["lines"] == [
        {"label": "caption/seed1 test (evaluated once, epoch 2)", "marker": "*", "points": [[2.0, 18.0]]},
        {"label": "caption/seed1 val", "marker": "o", "points": [[1.0, 10.0], [2.0, 20.0]]}]
    assert panels[4]["ylabel"] == "accuracy (%)"
    assert panels[4]["lines"] == [{"label": "qa/seed1 val", "marker": "o", "points": [[1.0, 30.0], [2.0, 40.0]]}]


def test_run_labels_of_one_folder_given_twice_carry_their_position(tmp_path):
    from tools.visualize import run_labels

    assert run_labels([tmp_path / "x" / "run", tmp_path / "run"]) == ["x/run", f"{tmp_path.name}/run"]
    assert run_labels([tmp_path / "run", tmp_path / "run"]) == ["run (1)", "run (2)"]


def test_gap_figure_of_two_checkpoints_pca_and_umap(run, tmp_path, monkeypatch):
    from tools.visualize import main, project_2d

    monkeypatch.setitem(sys.modules, "umap", None)  # not installed: PCA
    first, final = str(run / "model_best.pt"), str(run / "model_final.pt")
    assert main(["gap", "--checkpoints", first, final, "--out", str(tmp_path / "gap.png")]) == 0
    assert Image.open(tmp_path / "gap.png").size == (1200, 550)
    panels = json.loads((tmp_path / "gap.json").read_text())
    assert [p["projection"] for p in panels] == ["PCA", "PCA"] and all(p["pairs"] == 6 for p in panels)
    assert main(["gap", "--checkpoints", first, "--method", "umap", "--out", str(tmp_path / "u.png")]) == 2
    # With umap-learn present, its projection is used.
    fake = types.SimpleNamespace(UMAP=lambda **kw: types.SimpleNamespace(fit_transform=lambda x: x[:, :2] * 0 + 1))
    monkeypatch.setitem(sys.modules, "umap", fake)
    xy, used = project_2d(np.random.rand(10, 8))
    assert used == "UMAP" and np.all(xy == 1)


def test_tensorboard_events_hold_the_metrics_file_scalars_and_the_loss(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        for name, value in record["metrics"].items():
            if isinstance(value, (int, float)):
                logged = {e.step: e.value for e in events.Scalars(f"{record['split']}/{name}")}
                assert logged[record["epoch"]] == pytest.approx(value, rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert len(events.Scalars("train/lr")) == 4 and len(events.Scalars("train/epoch_loss")) == 2


def test_zoo_lists_every_head_with_counts_that_match_a_built_model():
    from modules import build_model
    from modules.factory import count_parameters
    from modules.heads import list_heads
    from tools.zoo import default_args, main, measure

    tiny = measure("meanP", "tiny", frames=4, words=16)
    args = default_args("meanP", "tiny", 4, 16)
    args.clip_init = "random"
    model = build_model(args)
    assert (tiny["trainable"], tiny["total"]) == (count_parameters(model, True), count_parameters(model))
    double = measure("meanP", "tiny", frames=8, words=16)
    assert double["video_gflops"] == pytest.approx(2 * tiny["video_gflops"], rel=1e-6)  # meanP: frames are independent
    assert measure("seqTransf", "tiny", frames=4, words=16)["video_gflops"] > tiny["video_gflops"]
    import contextlib
    import io

    out = io.StringIO()
    clip_heads = [h for h in list_heads() if h != "simvtp"]  # simvtp runs on its own (large) VideoMAE trunk
    with contextlib.redirect_stdout(out):
        assert main(["--backbone", "tiny", "--frames", "4", "--methods", *clip_heads]) == 0
    rows = [line for line in out.getvalue().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == clip_heads


def test_mae_picture_goes_to_the_run_folder_with_labelled_rows_and_spaced_caption(tmp_path, monkeypatch):
    import main_pretrain
    from engine import checkpoint as ckpt
    from modules import build_model
    from tools.visualize_mae import main, text_font

    toy = make_toy(tmp_path / "toy")
    run = tmp_path / "pretrain"
    args = main_pretrain.get_args([
        "--do_pretrain", "--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos"),
        "--output_dir", str(run), "--method", "simvtp", "--pretrained_clip_name", "tiny", "--clip_init", "random",
        "--max_frames", "4", "--image_resolution", "32", "--num_thread_reader", "0", "--sample_mode", "stride",
        "--eval_sample_mode", "stride", "--frame_stride", "2", "--normalize", "imagenet"])
    torch.manual_seed(0)
    run.mkdir()
    checkpoint = ckpt.save_model(run / "model_final.pt", build_model(args), args, epoch=0)
    caption = "a red cross goes right and afterwards a purple cross goes upward"
    monkeypatch.chdir(tmp_path)
    assert main(["--checkpoint", str(checkpoint), "--videos", str(toy / "videos" / "video0.mp4"),
                 "--captions", caption, "--scale", "2"]) == 0
    assert not (tmp_path / "vis").exists()  # nothing in the working directory: beside the checkpoint
    summary = json.loads((run / "mae_pictures" / "summary.json").read_text())
    assert summary[0]["png"] == str(run / "mae_pictures" / "000_video0.png")
    assert summary[0]["row_labels"] == ["input", "masked: 28 of 32 tubes", "reconstruction"]
    assert summary[0]["lines"][0] == f"caption:   {caption}"

    # A space is as wide as a letter (Pillow's default font drew "afterwards a" as "afterwardsa"), and
    # the picture is wide enough for its longest line.
    font = text_font()
    assert font.getlength(" ") == font.getlength("a") > 0
    image = np.asarray(Image.open(summary[0]["png"]).convert("L"))
    assert image.shape[1] >= max(font.getlength(line) for line in summary[0]["lines"])
    # Each row's label is drawn left of its frames (the frames start after the widest label), and the
    # column left of the first frame is white: the labels and the frames do not overlap.
    left = int(font.getlength("masked: 28 of 32 tubes")) + 8
    side, gap = 64, 4
    for row in range(3):
        top = gap + row * (side + gap)
        assert (image[top:top + side, :left - gap] < 128).any(), row
        assert (image[top:top + side, left - 2] == 255).all() and (image[top:top + side, left] < 255).any()
