"""benchmarks/bench_prompt_tuning.py: the demo part end to end at a tiny size (8 + 8 videos, 1 epoch), the
export of the pretrained tiny CLIP, and the cost worker at tiny shapes."""
import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_prompt_tuning.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_prompt_tuning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()
ROWS = [bench.ZERO_SHOT, *bench.METHODS]


def parse_table(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--no_cost", "--work_dir", str(work), "--demo_train", "8",
                           "--demo_test", "8", "--pretrain_epochs", "1", "--demo_epochs", "1", "--demo_batch", "4",
                           "--demo_max_frames", "4", "--demo_readers", "0"],
                          capture_output=True, text=True, timeout=300, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc.stdout


def test_demo_table_has_every_method_with_numeric_r1(demo_run):
    work, stdout = demo_run
    rows = parse_table(stdout)
    assert list(rows) == ROWS
    run_dirs = {bench.ZERO_SHOT: "zero_shot", "meanP full fine-tuning": "meanp",
                "seqTransf full fine-tuning": "seqtransf", "DGL-Linear": "dgl_linear",
                "DGL-Transformer": "dgl_transformer", "UMP (reconstruction)": "ump"}
    for name, row in rows.items():
        overall, temporal = float(row["demo T2V R@1"]), float(row["demo temporal R@1"])
        assert 0 <= overall <= 100 and 0 <= temporal <= 100, name
        # The table reports the final test record of that method's own run.
        record = [json.loads(line) for line in (work / run_dirs[name] / "metrics.jsonl").read_text().splitlines()][-1]
        m = record["metrics"]
        assert record["split"] == "test" and m["num_videos"] == 8 and m["temporal/num_captions"] == 4
        assert (overall, temporal) == (round(m["t2v/R1"], 2), round(m["temporal/t2v/R1"], 2)), name
        assert row["step (s)"] == "-"  # --no_cost
    trainable = {name: int(row["tiny: trainable (% of CLIP)"].split()[0].replace(",", "")) for name, row in rows.items()}
    assert trainable[bench.ZERO_SHOT] == 0
    assert trainable["meanP full fine-tuning"] == 3_388_993  # all of the tiny CLIP
    # DGL-Linear: 9,088 built, of which the dead postfix projection (4,160) is frozen without --dgl_postfix.
    assert trainable["DGL-Linear"] == 4_928 and trainable["UMP (reconstruction)"] == 59_264
    assert "1-minute load average" in stdout and "wall time" in stdout


def test_demo_runs_start_from_the_exported_clip_and_use_the_chosen_settings(demo_run):
    work, _ = demo_run
    clip_path = work / "tiny_pretrained.safetensors"
    pre = json.loads((work / "pretrain" / "metrics.jsonl").read_text().splitlines()[-1])
    assert pre["split"] == "test"
    assert json.loads((work / "toy_seed1" / "toy_config.json").read_text())["seed"] == 1
    for run, expected in [("dgl_linear", bench.DEMO_RUNS["DGL-Linear"]), ("meanp", bench.DEMO_RUNS["meanP full fine-tuning"])]:
        args = torch.load(work / run / "model_final.pt", map_location="cpu", weights_only=True)["args"]
        assert args["pretrained_clip_name"] == str(clip_path) and args["clip_init"] == "pretrained"
        assert args["data_path"] == str(work / "toy_seed0") and args["epochs"] == 1 and args["batch_size"] == 4
        assert all(args[k] == v for k, v in expected.items()), run
    assert not (work / "zero_shot" / "model_final.pt").exists()  # the zero-shot run trains nothing


def test_exported_clip_round_trips(demo_run):
    """The safetensors the demo runs load gives the same outputs as the CLIP the pre-training run trained."""
    from main_task_retrieval import get_args
    from modules import build_model
    from modules.clip import load_clip, tokenize

    work, _ = demo_run
    config = bench.demo_config(bench.build_parser().parse_args(["--demo_batch", "4", "--demo_readers", "0"]),
                               work / "toy_seed1", work / "pretrain", sim_header="meanP")
    trained = build_model(get_args(bench.to_argv(config)))
    trained.load_state_dict(torch.load(work / "pretrain" / "model_final.pt", map_location="cpu",
                                       weights_only=True)["model"])
    fresh = build_model(get_args(bench.to_argv(config)))  # random init: differs from the trained CLIP
    loaded = load_clip(work / "tiny_pretrained.safetensors")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids, mask = tokenize(["a red circle moves left", "a blue square goes up"], max_words=24)
    with torch.no_grad():
        want = trained.clip.encode_image(images), trained.clip.encode_text(ids, mask)
        got = loaded.encode_image(images), loaded.encode_text(ids, mask)
        other = fresh.clip.encode_image(images)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    assert not torch.allclose(other, want[0])
    assert torch.equal(loaded.logit_scale, trained.clip.logit_scale)


def test_cost_worker_at_tiny_shapes():
    opts = argparse.Namespace(arch="tiny", batch=2, frames=4, words=24, steps=1, device="cpu")
    rows = {name: bench.worker(name, opts) for name in bench.METHODS}
    clip_total = rows["meanP full fine-tuning"]["clip_total"]
    assert rows["meanP full fine-tuning"]["trainable"] == clip_total == 3_388_993
    assert rows["seqTransf full fine-tuning"]["trainable"] > clip_total  # CLIP plus the temporal transformer
    for name in ("DGL-Linear", "DGL-Transformer", "UMP (reconstruction)"):
        assert 0 < rows[name]["trainable"] < 0.03 * clip_total, name
    # 9,088 built; the dead postfix projection (4,160) is frozen without --dgl_postfix.
    assert rows["DGL-Linear"]["trainable"] == 4_928 and rows["UMP (reconstruction)"]["trainable"] == 59_264
    assert all(r["step_s"] > 0 and r["peak_rss_mib"] > 0 for r in rows.values())
