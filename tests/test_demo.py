"""scripts/demo.sh end to end at a tiny size: generate the toy dataset into an empty folder, train
through main_task_retrieval.py with configs/demo.yaml plus overrides, print the metrics table with the
temporal-order subset beside the overall numbers. (The full 5-minute demo is docs/demo.md's.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("t2v", "v2t", "temporal/t2v")


def test_demo_script_end_to_end_with_overrides(tmp_path):
    data, out = tmp_path / "toy", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(data), "OUTPUT_DIR": str(out),
           "NUM_TRAIN": "8", "NUM_TEST": "8", "TOY_SECONDS": "1.2", "SIM_HEADER": "meanP"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--epochs", "1", "--batch_size", "4",
                           "--batch_size_val", "8", "--max_frames", "4", "--num_thread_reader", "0"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The dataset was generated where asked, with its temporal pairs (8 test videos -> 2 pairs).
    assert (data / "MSRVTT_data.json").is_file() and len(list((data / "videos").glob("*.mp4"))) == 16
    assert len(json.loads((data / "temporal_pairs.json").read_text())["video_ids"]) == 4
    # The environment override reached the model; the config's flags did too.
    log = (out / "log.txt").read_text()
    assert "model meanP" in log and "msrvtt train: 8 videos, 80 captions" in log

    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("UniVTR demo"))
    assert "8 test captions x 8 videos (chance R@1 = 12.50%)" in lines[start]
    header = lines[start + 1].split()
    assert header == ["R1", "R5", "R10", "MdR", "MnR"]
    table = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[start + 2:start + 2 + len(ROWS)]}
    assert list(table) == list(ROWS)

    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    m = record["metrics"]
    assert record["split"] == "test" and m["temporal/num_captions"] == 4.0 and m["num_videos"] == 8.0
    for row, values in table.items():
        assert values == [round(m[f"{row}/{c}"], 2) for c in header], row
        assert all(0 <= v <= 100 for v in values[:3]) and 1 <= values[3] <= 8
    summary = lines[start + 2 + len(ROWS)]
    assert summary.startswith(f"T2V R@1 {m['t2v/R1']:.2f}% overall") and "on the 4 temporal-order captions" in summary


def test_data_dir_made_with_other_settings_is_one_line_naming_data_dir(tmp_path):
    from preprocess.make_toy_dataset import make_toy_dataset

    data = make_toy_dataset(tmp_path / "toy", num_train=2, num_test=2, size=16, fps=5, seconds=0.8, workers=1,
                            progress=False)
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(data), "OUTPUT_DIR": str(tmp_path / "out"),
           "NUM_TRAIN": "50"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: {data} was generated with other settings (num_train 2 there, 50 now")
    assert proc.stderr.rstrip().endswith("delete it or set DATA_DIR=another/folder")
    assert not (tmp_path / "out").exists()  # stopped before training


def test_caption_demo_shows_the_training_progress(tmp_path):
    # The training's own lines reach the terminal (they were cut to the last 4 lines, leaving minutes of
    # silence); the untrained evaluation stays short.
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(tmp_path / "toy"), "OUTPUT_DIR": str(tmp_path / "out"),
           "NUM_TRAIN": "4", "NUM_TEST": "4", "TOY_SECONDS": "1.2"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo_caption.sh"), "--epochs", "1", "--batch_size", "2",
                           "--batch_size_val", "4", "--max_frames", "4", "--num_thread_reader", "0", "--n_display", "1"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = proc.stdout + proc.stderr
    assert "epoch 1 step 1/2 loss" in shown and "epoch 1 step 2/2 loss" in shown and "epoch 1/1 done" in shown
    assert "UniVTR captioning demo" in proc.stdout


def test_demo_is_bit_reproducible_with_dataloader_workers(tmp_path):
    # Two runs of the demo script (its fixed thread count, seeded sampler and per-item draws) with two
    # DataLoader workers and dropout give identical weights and metrics, bit for bit.
    import torch

    runs = []
    for name in ("first", "second"):
        env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(tmp_path / "toy"),
               "OUTPUT_DIR": str(tmp_path / name), "NUM_TRAIN": "16", "NUM_TEST": "8", "TOY_SECONDS": "1.2"}
        env.pop("OMP_NUM_THREADS", None)  # the script's own default
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--epochs", "2", "--batch_size", "8",
                               "--batch_size_val", "8", "--max_frames", "4", "--num_thread_reader", "2"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        final = torch.load(tmp_path / name / "model_final.pt", weights_only=True)["model"]
        test = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()][-1]
        runs.append((final, test["metrics"]))
    (first, first_metrics), (second, second_metrics) = runs
    assert first.keys() == second.keys()
    assert [key for key in first if not torch.equal(first[key], second[key])] == []
    assert first_metrics == second_metrics
