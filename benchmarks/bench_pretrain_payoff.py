"""Does pre-training pay? The pre-training demo over several seeds, with the verdict, in one run.

    python benchmarks/bench_pretrain_payoff.py                                   # HMMC, T2VLP, SimVTP; seeds 0 1 2
    python benchmarks/bench_pretrain_payoff.py --methods hmmc --seeds 0 1 2 3 4 --scratch_lrs 1e-3 2e-3
    python benchmarks/bench_pretrain_payoff.py --write_results                  # also benchmarks/results/

For every method and seed it runs ``scripts/demo_pretrain.sh`` (METHOD, SEED, SCRATCH_LRS, OUTPUT_DIR =
``WORK/<method>/seed<k>``): pre-training from random weights on 3000 toy videos, zero-shot on the
fine-tuning set's 100 test videos, fine-tuning on its 150 training videos, and the same fine-tuning from
random weights at every learning rate of ``--scratch_lrs`` (the control is not tuned down: the verdict
compares against the best of them). A seed whose ``result.json`` exists is not run again, so an
interrupted benchmark resumes; ``--summary_only`` just tabulates what is there.

The table gives T2V R@1 as mean ± sample standard deviation over the seeds, and the two targets of the
pre-training demo: zero-shot R@1 at least 10x chance, and fine-tuned R@1 above the best from-scratch arm
by more than twice the pooled standard deviation (sqrt of the mean of the two variances).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pretrain_payoff.json"
CHANCE_R1 = 1.0  # 100 test videos


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def payoff(finetuned: list[float], scratch: list[float]) -> dict[str, float | bool]:
    """Gain of the pre-trained arm over a from-scratch arm and the bar it must clear: twice the pooled
    standard deviation of the two arms (equal seed counts: the root of the mean of the two variances)."""
    ft, sc = mean_std(finetuned), mean_std(scratch)
    gain = ft["mean"] - sc["mean"]
    threshold = 2 * ((ft["std"] ** 2 + sc["std"] ** 2) / 2) ** 0.5
    return {"gain": gain, "threshold": threshold, "pays": gain > threshold}


def summarise(work: Path, methods: list[str]) -> dict:
    """Per method, from ``WORK/<method>/seed*/result.json``: the seeds, mean ± std of every arm, and the
    verdict against the best from-scratch arm."""
    summary = {}
    for method in methods:
        results = [json.loads(p.read_text()) for p in sorted((work / method).glob("seed*/result.json"))]
        if not results:
            continue
        arms = list(results[0]["t2v_R1"])
        values = {arm: [r["t2v_R1"][arm] for r in results] for arm in arms}
        scratch_arms = [arm for arm in arms if arm.startswith("scratch")]
        best = max(scratch_arms, key=lambda arm: statistics.fmean(values[arm]))
        summary[method] = {
            "seeds": [r["seed"] for r in results],
            "t2v_R1": {arm: mean_std(v) for arm, v in values.items()},
            "zero_shot_over_chance": statistics.fmean(values["zero-shot"]) / CHANCE_R1,
            "best_scratch": best,
            **payoff(values["fine-tuned"], values[best]),
            "seconds_per_demo": statistics.fmean(r["seconds"] for r in results),
        }
    return summary


def markdown(summary: dict) -> str:
    lines = ["| method | seeds | zero-shot | pre-trained, fine-tuned | from scratch (each lr) | gain over best scratch "
             "| 2 x pooled sd | pays | zero-shot / chance |", "|---" * 9 + "|"]
    for method, s in summary.items():
        cell = {arm: f"{v['mean']:.1f} ± {v['std']:.1f}" for arm, v in s["t2v_R1"].items()}
        scratch = "; ".join(f"{arm[len('scratch, '):]}: {c}" for arm, c in cell.items() if arm.startswith("scratch"))
        lines.append(f"| {method} | {len(s['seeds'])} | {cell['zero-shot']} | {cell['fine-tuned']} | {scratch} | "
                     f"{s['gain']:+.1f} | {s['threshold']:.1f} | {'yes' if s['pays'] else 'no'} | "
                     f"{s['zero_shot_over_chance']:.0f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["hmmc", "t2vlp", "simvtp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--scratch_lrs", nargs="+", default=["1e-3", "2e-3"])
    parser.add_argument("--work_dir", type=Path, default=ROOT / "outputs" / "pretrain_payoff")
    parser.add_argument("--summary_only", action="store_true", help="tabulate the finished seeds, run nothing")
    parser.add_argument("--write_results", action="store_true", help=f"also write {RESULTS.relative_to(ROOT)}, "
                        "whose spread the demo prints")
    args = parser.parse_args(argv)
    failed = 0
    for method in [] if args.summary_only else args.methods:
        for seed in args.seeds:
            out = args.work_dir / method / f"seed{seed}"
            if (out / "result.json").exists():
                print(f"{method} seed {seed}: done already", flush=True)
                continue
            console = out.with_name(f"seed{seed}.console.txt")
            console.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "METHOD": method, "SEED": str(seed), "OUTPUT_DIR": str(out),
                   "SCRATCH_LRS": " ".join(args.scratch_lrs)}
            with console.open("w") as stream:
                rc = subprocess.run(["bash", str(ROOT / "scripts" / "demo_pretrain.sh")], env=env, stdout=stream,
                                    stderr=subprocess.STDOUT).returncode
            if rc:
                failed += 1
                print(f"{method} seed {seed}: failed (exit {rc}), see {console}", flush=True)
                continue
            result = json.loads((out / "result.json").read_text())
            print(f"{method} seed {seed}: {result['seconds']} s, T2V R@1 "
                  + ", ".join(f"{arm} {r1:.1f}" for arm, r1 in result["t2v_R1"].items()), flush=True)
    summary = summarise(args.work_dir, args.methods)
    table = markdown(summary)
    print(f"\nT2V R@1 on 100 test videos (chance {CHANCE_R1:.0f}), mean ± sample sd over seeds\n\n{table}")
    (args.work_dir / "pretrain_payoff.md").write_text(table + "\n")
    if args.write_results and summary:
        measured = (f"{datetime.date.today()}, {os.cpu_count()}-core {platform.machine()} CPU, "
                    f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({m: {**s, "measured": measured} for m, s in summary.items()}, indent=1) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
