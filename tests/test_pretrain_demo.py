"""scripts/demo_pretrain.sh end to end at a tiny size (T2VLP: stage 1, stage 2, retrieval fine-tuning and two
from-scratch arms), and benchmarks/bench_pretrain_payoff.py's verdict against hand computations."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_pretrain_payoff as payoff_bench  # noqa: E402


def flags(run: Path) -> dict:
    line = next(line for line in (run / "log.txt").read_text().splitlines() if " INFO flags: " in line)
    return json.loads(line.split(" INFO flags: ", 1)[1])


def test_t2vlp_pretraining_demo_runs_every_stage_at_a_tiny_size(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "METHOD": "t2vlp", "SEED": "3", "OUTPUT_DIR": str(out),
           "DATA_DIR": str(tmp_path / "small"), "CORPUS_DIR": str(tmp_path / "corpus"), "FINETUNE_VIDEOS": "8",
           "CORPUS_VIDEOS": "8", "NUM_TEST": "4", "TOY_SECONDS": "0.8", "FINETUNE_EPOCHS": "1", "STAGE2_EPOCHS": "1",
           "SCRATCH_LRS": "1e-3 2e-3"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo_pretrain.sh"), "--epochs", "1", "--batch_size", "4",
                           "--batch_size_val", "4", "--max_frames", "4", "--num_thread_reader", "0"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # Stage 2 trains the fusion encoder on the frozen stage-1 model; fine-tuning starts from stage 2; the scratch
    # arms start from nothing, each at its own learning rate, with the fine-tuning's other flags.
    stage1, stage2, finetune = (flags(out / run) for run in ("pretrain", "pretrain_stage2", "finetune"))
    assert (stage1["t2vlp_stage"], stage1["init_model"], stage1["seed"]) == ("1", None, 3)
    assert (stage2["t2vlp_stage"], stage2["freeze_backbone"], stage2["batch_size"]) == ("2", True, 4)
    assert stage2["init_model"] == str(out / "pretrain" / "model_final.pt")
    assert (finetune["t2vlp_stage"], finetune["init_model"]) == ("retrieval", str(out / "pretrain_stage2" / "model_final.pt"))
    for lr in ("1e-3", "2e-3"):
        scratch = flags(out / f"scratch_lr{lr}")
        assert (scratch["init_model"], scratch["lr"], scratch["seed"]) == (None, float(lr), 3)
        assert {k: v for k, v in scratch.items() if k not in ("init_model", "lr", "output_dir")} == \
            {k: v for k, v in finetune.items() if k not in ("init_model", "lr", "output_dir")}
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "t2vlp" and result["seed"] == 3
    assert list(result["t2v_R1"]) == ["zero-shot", "fine-tuned", "scratch, lr 1e-3", "scratch, lr 2e-3"]
    for run in ("pretrain", "finetune"):  # every evaluation judges the spread of both towers' features
        final = json.loads((out / run / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
        assert 0 < final["features/video_effective_rank"] <= 4 and -1 <= final["features/text_cosine"] <= 1
    for arm, run in (("zero-shot", "pretrain"), ("fine-tuned", "finetune"), ("scratch, lr 2e-3", "scratch_lr2e-3")):
        final = json.loads((out / run / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
        assert result["t2v_R1"][arm] == final["t2v/R1"]
    table = proc.stdout[proc.stdout.index("| T2VLP, seed 3 |"):].splitlines()
    assert table[2].startswith(f"| pre-trained, zero-shot | {result['t2v_R1']['zero-shot']:.1f} |")
    assert table[5].startswith(f"| from random weights (lr 2e-3), same fine-tuning | "
                               f"{result['t2v_R1']['scratch, lr 2e-3']:.1f} |")
    assert "4 test videos (chance R@1 25.0%)" in proc.stdout
    spread = payoff_bench.RESULTS
    if spread.exists():  # the committed benchmark's spread is printed beside the single seed
        s = json.loads(spread.read_text())["t2vlp"]
        assert f"Over seeds {' '.join(map(str, s['seeds']))}" in proc.stdout
        assert f"zero-shot {s['t2v_R1']['zero-shot']['mean']:.1f} ± {s['t2v_R1']['zero-shot']['std']:.1f}" in proc.stdout


def test_payoff_against_twice_the_pooled_standard_deviation():
    # fine-tuned 30, 34, 38: mean 34, sd 4; scratch 20, 21, 22: mean 21, sd 1; pooled sd sqrt((16 + 1) / 2).
    verdict = payoff_bench.payoff([30.0, 34.0, 38.0], [20.0, 21.0, 22.0])
    assert verdict["gain"] == 13.0
    assert math.isclose(verdict["threshold"], 2 * math.sqrt(8.5), rel_tol=1e-15) and verdict["pays"]
    assert not payoff_bench.payoff([22.0, 30.0, 38.0], [20.0, 21.0, 22.0])["pays"]  # +9 against 2 x 5.70


def test_summary_compares_against_the_best_scratch_arm_and_resumes_from_result_files(tmp_path):
    rows = {0: (12.0, 30.0, 20.0, 24.0), 1: (14.0, 32.0, 21.0, 25.0), 2: (16.0, 34.0, 22.0, 26.0)}
    for seed, (zero, ft, lr1, lr2) in rows.items():
        folder = tmp_path / "hmmc" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"method": "hmmc", "seed": seed, "seconds": 100 + seed,
            "t2v_R1": {"zero-shot": zero, "fine-tuned": ft, "scratch, lr 1e-3": lr1, "scratch, lr 2e-3": lr2}}))
    assert payoff_bench.main(["--methods", "hmmc", "--seeds", "0", "1", "2", "--work_dir", str(tmp_path)]) == 0
    s = payoff_bench.summarise(tmp_path, ["hmmc"])["hmmc"]
    assert s["seeds"] == [0, 1, 2] and s["best_scratch"] == "scratch, lr 2e-3"
    assert s["t2v_R1"]["fine-tuned"] == {"mean": 32.0, "std": 2.0} and s["gain"] == 7.0
    assert s["threshold"] == 2 * math.sqrt((4.0 + 1.0) / 2) and s["zero_shot_over_chance"] == 14.0
    table = (tmp_path / "pretrain_payoff.md").read_text().splitlines()
    assert table[2] == ("| hmmc | 3 | 14.0 ± 2.0 | 32.0 ± 2.0 | lr 1e-3: 21.0 ± 1.0; lr 2e-3: 25.0 ± 1.0 | +7.0 | 3.2 "
                        "| yes | 14x |")
