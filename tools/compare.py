"""Fine-tune every registered retrieval method under one protocol and tabulate mean ± std over seeds.

    python -m tools.compare --output_dir outputs/compare --seeds 0 1 2 -- \
        --config configs/demo.yaml --data_path data/toy --features_path data/toy/videos
    python -m tools.compare --methods meanP seqTransf --seeds 0 1 -- --config ... --epochs 3
    python -m tools.compare --list

Every arm (one method, one seed) is one run of ``main_task_retrieval.py`` with the flags after ``--`` (the
same data, frames, budget and selection for every method), plus the method's own flags, ``--seed K`` and
``--output_dir OUT/<arm>/seed<K>``. The methods are the head registry (``modules.heads.list_heads``): a
newly registered head is an arm without editing this file; ``VARIANTS`` splits a head into its variants
(DGL's two shared-latent-space generators; T2VLP's dual-encoder and re-ranked numbers, read from one run).

An arm runs in a child process, not in this one: its peak memory is its own (CPU: the child's maximal RSS,
workers included, from ``wait4``; GPU: ``torch.cuda.max_memory_allocated`` in the child), and each arm
starts from a fresh interpreter (logging, seeds, compiled graphs, the CUDA allocator). The engine picks
the GPU when there is one (``--device auto``). An arm is done when ``arm.json`` is in its folder (written
last); running the same command again skips done arms and re-runs a half-written one from scratch, so a
killed comparison continues where it stopped. OUT/compare.md, compare.csv and compare.png are rewritten
from every done arm at the end of each invocation.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = "compare.json"  # OUT/compare.json: the flags every arm of this comparison was given
ARM_RECORD = "arm.json"  # OUT/<arm>/seed<K>/arm.json: the arm is done (measurements of the run)
MEASURED = "measured.json"  # written by the child: trained parameters, step times, GPU peak
# Set per arm by this tool; given after "--" they would make the arms differ or collide.
RESERVED_FLAGS = ("--method", "--sim_header", "--seed", "--output_dir", "--resume", "--init_model")
# Table columns: (direction, metric); V2T is "v2t" on one-caption-per-video test sets, else the
# group-max convention (a video is found when any of its captions is).
METRICS = ("R1", "R5", "R10", "MdR")
DIRECTIONS = {"T2V": ("t2v",), "V2T": ("v2t", "v2t_groupmax")}
STEP_RECORD = "epoch %d step %d/%d loss"  # engine.trainer's per-step log line (its arguments are read)
PARAMETERS_RECORD = "model %s: %s trainable"


class CompareError(ValueError):
    """A problem with the comparison's flags or folder: one line, no traceback."""


@dataclass(frozen=True)
class Method:
    """A row of the table: the run it is read from (``arm``, the folder name), that run's flags, and the
    prefix of its metrics ("rerank/": T2VLP's numbers after re-ranking, from the same run as its raw ones)."""
    name: str
    arm: str
    flags: tuple[str, ...]
    prefix: str = ""


T2VLP_RUN = ("--method", "t2vlp", "--t2vlp_stage", "retrieval")  # InfoNCE + alignment + VTM, re-ranks at test
VARIANTS: dict[str, tuple[Method, ...]] = {
    "dgl": (Method("dgl_linear", "dgl_linear", ("--method", "dgl", "--shared_latent_space", "linear")),
            Method("dgl_transformer", "dgl_transformer", ("--method", "dgl", "--shared_latent_space", "transformer"))),
    "t2vlp": (Method("t2vlp", "t2vlp", T2VLP_RUN), Method("t2vlp_rerank", "t2vlp", T2VLP_RUN, prefix="rerank/")),
}


def registered_methods() -> dict[str, Method]:
    """Every registered head as a method, in the registry's order, with ``VARIANTS`` expanded."""
    from modules.heads import list_heads  # start-up

    methods: dict[str, Method] = {}
    for head in list_heads():
        for method in VARIANTS.get(head, (Method(head, head, ("--method", head)),)):
            methods[method.name] = method
    return methods


def select_methods(names: list[str] | None) -> list[Method]:
    known = registered_methods()
    if not names:
        return list(known.values())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise CompareError(f"unknown method {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[name] for name in dict.fromkeys(names)]


def check_flags(flags: list[str]) -> None:
    for token in flags:
        if token.partition("=")[0] in RESERVED_FLAGS:
            raise CompareError(f"{token.partition('=')[0]} after '--' is set per arm by tools.compare; use its "
                               "--methods, --seeds and --output_dir instead")


# ----------------------------------------------------------------------------------------------------
# One arm (child process)


class RunRecorder(logging.Handler):
    """Reads the engine's log records by their arguments (as its TensorBoard handler does): the trained
    parameter count, and the time of every optimiser step's line (the tool sets ``--n_display 1``)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.trained_parameters: int | None = None
        self.step_times: list[tuple[int, float]] = []  # (epoch, perf_counter) per logged step

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith(STEP_RECORD):
            self.step_times.append((int(record.args[0]), time.perf_counter()))
        elif message.startswith(PARAMETERS_RECORD):
            self.trained_parameters = int(str(record.args[1]).replace(",", ""))

    def step_seconds(self) -> list[float]:
        """Seconds between consecutive steps of the same epoch (the first step of an epoch, which waits
        for the data workers to start, has no predecessor and is not counted)."""
        return [t1 - t0 for (e0, t0), (e1, t1) in zip(self.step_times, self.step_times[1:]) if e0 == e1]


def run_arm(argv: list[str]) -> int:
    """Child: ``MEASURED_PATH FLAGS...`` -> run main_task_retrieval.main(FLAGS), write the measurements."""
    measured_path, flags = Path(argv[0]), argv[1:]
    import torch

    import main_task_retrieval  # start-up

    recorder = RunRecorder()
    logging.getLogger("univtr").addHandler(recorder)
    sys.argv = [str(ROOT / "main_task_retrieval.py"), *flags]  # what the run's log.txt records as its command
    code = main_task_retrieval.main(flags)
    steps = recorder.step_seconds()
    measured = {"trained_parameters": recorder.trained_parameters,
                "seconds_per_step": statistics.median(steps) if steps else None, "steps_timed": len(steps)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        measured["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    measured_path.write_text(json.dumps(measured))
    return code


def arm_folder(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed{seed}"


def arm_flags(method: Method, flags: list[str], seed: int, folder: Path) -> list[str]:
    """The method's flags first (the shared flags may tune them, e.g. --fusion_layers), then the shared
    ones, then what this tool sets; --n_display 1 times every step (logging only, same results)."""
    return [*method.flags, *flags, "--do_train", "--seed", str(seed), "--output_dir", str(folder), "--n_display", "1"]


def final_test_metrics(folder: Path) -> dict:
    """The metrics of the run's last test record in its metrics.jsonl."""
    path = folder / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    tests = [r for r in records if r.get("split") == "test"]
    if not tests:
        raise CompareError(f"{path}: no test record; the run did not finish (delete {folder} and run again)")
    return tests[-1]["metrics"]


def run_one(method: Method, flags: list[str], seed: int, out: Path) -> tuple[bool, str]:
    """Run one arm in a child process; (succeeded, one line about it)."""
    folder = arm_folder(out, method.arm, seed)
    if folder.exists():  # a half-written arm (killed or failed): its partial output would mix with the rerun
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    argv = arm_flags(method, flags, seed, folder)
    child = [sys.executable, "-c", "import sys; from tools.compare import run_arm; sys.exit(run_arm(sys.argv[1:]))",
             str(folder / MEASURED), *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with open(folder / "console.txt", "w") as console:
        process = subprocess.Popen(child, stdout=console, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # this child's resource usage (not all children's maximum)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0 or not (folder / MEASURED).is_file():
        lines = [line for line in (folder / "console.txt").read_text(errors="replace").splitlines() if line.strip()]
        return False, (f"{method.arm} seed {seed} failed (exit {process.returncode}): {lines[-1] if lines else ''} "
                       f"[{folder / 'console.txt'}]")
    measured = json.loads((folder / MEASURED).read_text())
    if "peak_gpu_bytes" in measured:
        peak, kind = measured["peak_gpu_bytes"] / 2**20, "gpu"
    else:
        peak, kind = usage.ru_maxrss / 1024, "cpu_rss"  # Linux: KiB
    metrics = final_test_metrics(folder)
    record = {"arm": method.arm, "seed": seed, "flags": argv, "wall_seconds": seconds, "peak_memory_mib": peak,
              "memory_kind": kind, "trained_parameters": measured["trained_parameters"],
              "seconds_per_step": measured["seconds_per_step"], "steps_timed": measured["steps_timed"]}
    (folder / "checkpoint_last.pt").unlink(missing_ok=True)  # only for resuming this run; model_final.pt stays
    temporary = folder / (ARM_RECORD + ".tmp")
    temporary.write_text(json.dumps(record, indent=1))
    os.replace(temporary, folder / ARM_RECORD)  # the arm is done only once this file exists
    return True, f"{method.arm} seed {seed}: {seconds:.0f} s, T2V R@1 {metrics.get('t2v/R1', math.nan):.2f}"


# ----------------------------------------------------------------------------------------------------
# The table


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is NaN."""
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def metric_key(metrics: dict, prefix: str, directions: tuple[str, ...], metric: str) -> str | None:
    return next((f"{prefix}{d}/{metric}" for d in directions if f"{prefix}{d}/{metric}" in metrics), None)


def collect(methods: list[Method], seeds: list[int], out: Path) -> list[dict]:
    """One row per method with at least one done arm: per column the per-seed values, mean and std."""
    rows = []
    for method in methods:
        done = [(seed, arm_folder(out, method.arm, seed)) for seed in seeds
                if (arm_folder(out, method.arm, seed) / ARM_RECORD).is_file()]
        if not done:
            continue
        records = [json.loads((folder / ARM_RECORD).read_text()) for _, folder in done]
        metrics = [final_test_metrics(folder) for _, folder in done]
        row = {"method": method.name, "seeds": [seed for seed, _ in done], "values": {}}
        for direction, keys in DIRECTIONS.items():
            for metric in METRICS:
                found = [metric_key(m, method.prefix, keys, metric) for m in metrics]
                if None in found:
                    raise CompareError(f"{done[found.index(None)][1] / 'metrics.jsonl'}: no {method.prefix}"
                                       f"{keys[0]}/{metric} for {method.name}; was the run given other flags?")
                row["values"][f"{direction}_{metric}"] = [m[k] for m, k in zip(metrics, found)]
        for name in ("trained_parameters", "seconds_per_step", "peak_memory_mib"):
            row["values"][name] = [r[name] for r in records]
        row["memory_kind"] = "/".join(sorted({r["memory_kind"] for r in records}))
        rows.append(row)
    return rows


COLUMNS = [f"{d}_{m}" for d in DIRECTIONS for m in METRICS] + ["trained_parameters", "seconds_per_step",
                                                               "peak_memory_mib"]
MEMORY_KINDS = {"gpu": "GPU: torch.cuda.max_memory_allocated", "cpu_rss": "CPU: max RSS of the run and its workers"}


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "n_seeds", "seeds", *[f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")],
                         "memory_kind"])
        for row in rows:
            cells = []
            for column in COLUMNS:
                mean, std = mean_std(row["values"][column])
                cells += [repr(mean), "" if math.isnan(std) else repr(std)]
            writer.writerow([row["method"], len(row["seeds"]), " ".join(map(str, row["seeds"])), *cells,
                             row["memory_kind"]])


def _cell(values: list[float], digits: int) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(rows: list[dict], command: str, flags: list[str]) -> str:
    kinds = sorted({kind for row in rows for kind in row["memory_kind"].split("/")})
    memory = "; ".join(MEMORY_KINDS[k] for k in kinds)
    lines = [f"Made by: `{command}`", "",
             f"Every arm: `main_task_retrieval.py {shlex.join(flags)}` plus the method's flags, `--seed K` and its "
             "`--output_dir`. Cells: mean ± sample standard deviation over the seeds (n). s/step: median time of "
             f"an optimiser step (data loading included). Peak memory in MiB ({memory}).", "",
             "| method | n | T2V R@1 | T2V R@5 | T2V R@10 | T2V MdR | V2T R@1 | V2T R@5 | V2T R@10 | V2T MdR "
             "| trained params | s/step | peak memory (MiB) |",
             "|---|---|" + "---:|" * 11]
    for row in rows:
        v = row["values"]
        recall = [_cell(v[f"{d}_{m}"], 1 if m == "MdR" else 2) for d in DIRECTIONS for m in METRICS]
        params = f"{int(statistics.fmean(v['trained_parameters'])):,}" if None not in v["trained_parameters"] else "n/a"
        lines.append(f"| {row['method']} | {len(row['seeds'])} | " + " | ".join(recall) +
                     f" | {params} | {_cell(v['seconds_per_step'], 3)} | {_cell(v['peak_memory_mib'], 0)} |")
    return "\n".join(lines) + "\n"


def write_chart(rows: list[dict], path: Path) -> None:
    """Bars of T2V and V2T R@1 per method, error bars one sample standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4))
    for offset, direction in ((-0.2, "T2V"), (0.2, "V2T")):
        stats = [mean_std(row["values"][f"{direction}_R1"]) for row in rows]
        ax.bar(x + offset, [m for m, _ in stats], width=0.4, label=f"{direction} R@1",
               yerr=[0.0 if math.isnan(s) else s for _, s in stats], capsize=3)
    ax.set_xticks(x, [f"{row['method']}\n(n={len(row['seeds'])})" for row in rows], rotation=30, ha="right")
    ax.set_ylabel("R@1 (%)")
    ax.set_title("R@1, mean ± std over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# Command line


def check_settings(out: Path, flags: list[str]) -> None:
    """A comparison with a done arm continues only with the flags it started with (else its arms would
    differ); before any arm is done (say every run failed on a typo) the new flags replace the old."""
    path = out / SETTINGS
    if path.is_file() and any(out.glob(f"*/seed*/{ARM_RECORD}")):
        before = json.loads(path.read_text())["flags"]
        if before != flags:
            raise CompareError(f"{out} holds a comparison run with other flags ({shlex.join(before)}); give the same "
                               "flags after '--' to continue it, or another --output_dir")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"flags": flags}, indent=1))


def build_parser():
    from engine.options import ArgumentParser  # start-up

    parser = ArgumentParser(prog="python -m tools.compare", allow_abbrev=False,
                            description="fine-tune every method with the same flags and seeds; flags after '--' "
                                        "go to every run of main_task_retrieval.py")
    parser.add_argument("--output_dir", default="outputs/compare", help="OUT: arms in OUT/<method>/seed<K>/, tables")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method (--list)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--list", action="store_true", help="print the methods and their flags, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(own)
    try:
        methods = select_methods(args.methods)
        if args.list:
            for method in methods:
                suffix = f" (metrics {method.prefix}*)" if method.prefix else ""
                print(f"{method.name}: {shlex.join(method.flags)}{suffix}")
            return 0
        check_flags(flags)
        out = Path(args.output_dir)
        check_settings(out, flags)
        arms = list(dict.fromkeys((m.arm, seed) for m in methods for seed in args.seeds))
        by_arm = {m.arm: m for m in methods}
        failures = []
        for i, (arm, seed) in enumerate(arms, 1):
            if (arm_folder(out, arm, seed) / ARM_RECORD).is_file():
                print(f"[{i}/{len(arms)}] {arm} seed {seed}: done already", flush=True)
                continue
            succeeded, line = run_one(by_arm[arm], flags, seed, out)
            print(f"[{i}/{len(arms)}] {line}", flush=True)
            if not succeeded:
                failures.append(line)
        rows = collect(methods, args.seeds, out)
        command = shlex.join(["python", "-m", "tools.compare", *argv])
        (out / "compare.md").write_text(markdown(rows, command, flags))
        write_csv(rows, out / "compare.csv")
        if rows:
            try:
                write_chart(rows, out / "compare.png")
            except ImportError:
                print("compare.png not written: matplotlib is not installed (pip install -r requirements-tools.txt)",
                      file=sys.stderr)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((out / "compare.md").read_text())
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
