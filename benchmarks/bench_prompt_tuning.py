"""Prompt tuning against full fine-tuning: cost at ViT-B/32 shapes and T2V R@1 on the demo dataset, in one run.

    python benchmarks/bench_prompt_tuning.py --steps 2 --threads 2   # both parts, CPU (13 min on 2 cores)
    python benchmarks/bench_prompt_tuning.py --no_demo --device cuda --batch 32   # the cost part only, on a GPU
    python benchmarks/bench_prompt_tuning.py --no_cost                # the demo part only

Methods: CLIP4Clip meanP and seqTransf with all of CLIP trained (full fine-tuning), DGL-Linear,
DGL-Transformer and UMP (docs/prompt_tuning.md).

**Cost** (``--cost``, on by default): trainable parameters, training step time and peak memory, with
random weights at ``--arch`` shapes and the same batch. A step is forward of both towers, the
symmetric InfoNCE loss, backward and an AdamW step. Each method runs in its own process so that peak
memory is its own: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps; on CPU the peak
resident set (ru_maxrss) of the process and how much it grew during training (the part the method's
gradients, optimiser state and activations add on top of the weights). Time is the median of
--steps steps after one warm-up step.

**Demo** (``--demo``, on by default): T2V R@1 on the toy dataset (preprocess/make_toy_dataset.py), over
all test captions and over the captions that only temporal order separates (``temporal_pairs.json``).
Prompt tuning adapts a frozen *pretrained* CLIP, so the protocol first makes one, all on CPU with the
``tiny`` architecture, through ``main_task_retrieval.main`` and configs/demo.yaml:

1. pre-training stand-in: a second toy dataset (``--pretrain_seed``, other videos and captions, the
   same vocabulary) and a tiny CLIP trained on it from random weights with meanP, all of CLIP
   trained; its CLIP is exported with ``modules.clip.save_clip`` to ``WORK/tiny_pretrained.safetensors``;
2. on the demo dataset (``--demo_seed`` 0, the demo's sizes), from that CLIP, every method with the same
   budget (``--demo_epochs``, ``--demo_batch``) and the learning rates of ``DEMO_RUNS`` (chosen on a
   validation split carved out of the training videos, never on test: docs/prompt_tuning.md), plus
   the zero-shot row (the pretrained CLIP evaluated with meanP, no training).

Everything lands in ``--work_dir``; every run is seeded and runs with one intra-op thread, so the
numbers repeat exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modules.clip import build_clip, tokenize  # noqa: E402
from modules.factory import add_model_args, freeze_clip_layers  # noqa: E402
from modules.heads import get_head  # noqa: E402

FULL_FINE_TUNING = ("meanP", "seqTransf")
METHODS = {
    "meanP full fine-tuning": ("meanP", []),
    "seqTransf full fine-tuning": ("seqTransf", []),
    "DGL-Linear": ("dgl", ["--shared_latent_space", "linear"]),
    "DGL-Transformer": ("dgl", ["--shared_latent_space", "transformer"]),
    "UMP (reconstruction)": ("ump", []),
}
ZERO_SHOT = "zero-shot (pretrained tiny CLIP, meanP)"
# Demo runs: flags (configs/demo.yaml keys) on top of the demo config and the pretrained tiny CLIP.
# Learning rates chosen by the final-epoch T2V R@1 on 100 training videos held out with
# --val_from_train, never on test (docs/prompt_tuning.md, "Learning rates"): full fine-tuning keeps
# the demo's lr 1e-3 with CLIP at the full rate (coef_lr 1 beat 0.1 on val for meanP; seqTransf
# takes the same); the prompt heads at the best of {1e-3,} 2e-3, 5e-3, 1e-2{, 2e-2}.
DEMO_RUNS = {
    "meanP full fine-tuning": {"sim_header": "meanP", "lr": 1e-3, "coef_lr": 1.0},
    "seqTransf full fine-tuning": {"sim_header": "seqTransf", "lr": 1e-3, "coef_lr": 1.0},
    "DGL-Linear": {"method": "dgl", "shared_latent_space": "linear", "lr": 1e-2},
    "DGL-Transformer": {"method": "dgl", "shared_latent_space": "transformer", "lr": 5e-3},
    "UMP (reconstruction)": {"method": "ump", "lr": 1e-2},
}
# CLIP B/32 minus token embedding, patch conv and positional embeddings: the papers' "full" 123.54M.
PAPER_FULL_EXCLUDES = ("text.token_embedding.", "visual.conv1.", "visual.positional_embedding",
                       "text.positional_embedding")
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------------------------------
# Cost: parameters, step time and memory at --arch shapes (one process per method)


def worker(name: str, opts) -> dict:
    torch.manual_seed(0)
    device = torch.device(opts.device)
    method, flags = METHODS[name]
    args = add_model_args(argparse.ArgumentParser()).parse_args(["--method", method, *flags])
    args.max_frames = opts.frames
    clip = build_clip(opts.arch, device=device)
    model = get_head(method)(clip, args).to(device)
    full = method in FULL_FINE_TUNING
    if full:
        freeze_clip_layers(model, -1)  # everything trains
    clip_total = sum(p.numel() for p in clip.parameters())
    paper_full = sum(p.numel() for n, p in clip.named_parameters() if not n.startswith(PAPER_FULL_EXCLUDES))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    coef = 1.0 if full else 1e-3
    optimiser = torch.optim.AdamW(model.param_groups(1e-4, coef, 0.2), lr=1e-4)
    captions = [f"a person does thing number {i} in a video" for i in range(opts.batch)]
    ids, mask = (t.to(device) for t in tokenize(captions, max_words=opts.words))
    size = clip.config.vision.image_size
    video = torch.randn(opts.batch, opts.frames, 3, size, size, device=device)
    video_mask = torch.ones(opts.batch, opts.frames, dtype=torch.long, device=device)

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss = model.compute_loss(model.encode_text(ids, mask), model.encode_video(video, video_mask))["loss"]
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    before = rss_mib()
    step()  # warm-up: allocates optimiser state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(opts.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out = {"trainable": trainable, "clip_total": clip_total, "paper_full": paper_full,
           "step_s": statistics.median(times), "peak_rss_mib": rss_mib(), "rss_growth_mib": rss_mib() - before}
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


COST_FLAGS = ("--arch", "--batch", "--frames", "--words", "--steps", "--device", "--threads")


def measure_cost(opts) -> dict[str, dict]:
    passthrough = []
    for flag in COST_FLAGS:
        value = getattr(opts, flag[2:])
        if value is not None:
            passthrough += [flag, str(value)]
    rows = {}
    for name in opts.methods:
        done = subprocess.run([sys.executable, __file__, *passthrough, "--worker", name], capture_output=True,
                              text=True)
        if done.returncode:
            raise RuntimeError(f"cost of {name} failed:\n{done.stderr[-3000:]}")
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  cost: measured {name}", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------
# Demo: pre-training stand-in, then every method on the demo dataset from the pretrained tiny CLIP


def demo_config(opts, data_dir: Path, output_dir: Path, **overrides) -> dict:
    """configs/demo.yaml as a dict, with the data, output and any other keys replaced."""
    import yaml

    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config.update(data_path=str(data_dir), features_path=str(data_dir / "videos"), output_dir=str(output_dir),
                  batch_size=opts.demo_batch, num_thread_reader=opts.demo_readers)
    if opts.demo_max_frames is not None:
        config["max_frames"] = opts.demo_max_frames
    config.update(overrides)
    return config


def to_argv(config: dict) -> list[str]:
    from engine.options import build_parser, config_to_argv

    return config_to_argv(build_parser(), config, "bench_prompt_tuning")


def train_run(name: str, config: dict) -> dict:
    """One main_task_retrieval.main run in this process (its console output goes to
    OUTPUT_DIR/console.txt); returns the final test metrics from its metrics.jsonl."""
    import main_task_retrieval

    out = Path(config["output_dir"])
    shutil.rmtree(out, ignore_errors=True)  # nothing stale: metrics.jsonl is appended to
    out.mkdir(parents=True)
    started = time.perf_counter()
    with open(out / "console.txt", "w") as console, contextlib.redirect_stderr(console), \
            contextlib.redirect_stdout(console):
        code = main_task_retrieval.main(to_argv(config))
    root = logging.getLogger()
    for handler in root.handlers[:]:  # the run's handlers write to the closed console file and its log.txt
        root.removeHandler(handler)
        handler.close()
    if code:
        raise RuntimeError(f"demo run {name!r} failed (exit {code}):\n{(out / 'console.txt').read_text()[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [r for r in records if r["split"] == "test"][-1]["metrics"]
    print(f"  demo: {name}: T2V R@1 {metrics['t2v/R1']:.2f}, temporal {metrics.get('temporal/t2v/R1', float('nan')):.2f} "
          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return metrics


def trainable_parameters(config: dict) -> tuple[int, int]:
    """(trainable parameters, CLIP parameters) of the model a demo run builds."""
    from main_task_retrieval import get_args
    from modules import build_model

    model = build_model(get_args(to_argv(config)))
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.clip.parameters()))


def export_pretrained_clip(config: dict, path: Path) -> Path:
    """The CLIP of a finished run (its model_final.pt) as our safetensors, loadable with
    ``--pretrained_clip_name PATH --clip_init pretrained``."""
    from main_task_retrieval import get_args
    from modules import build_model
    from modules.clip import save_clip

    model = build_model(get_args(to_argv(config)))
    state = torch.load(Path(config["output_dir"]) / "model_final.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return save_clip(model.clip, path)


def run_demo(opts) -> dict[str, dict]:
    from preprocess.make_toy_dataset import make_toy_dataset

    work = Path(opts.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as scripts/demo.sh's OMP_NUM_THREADS=1: the reader takes the other core
    try:
        pre_data = make_toy_dataset(work / f"toy_seed{opts.pretrain_seed}", seed=opts.pretrain_seed,
                                    num_train=opts.demo_train, num_test=opts.demo_test, progress=False)
        demo_data = make_toy_dataset(work / f"toy_seed{opts.demo_seed}", seed=opts.demo_seed,
                                     num_train=opts.demo_train, num_test=opts.demo_test, progress=False)
        # 1. The pre-training stand-in: meanP from random weights, all of CLIP trained (the demo config).
        pre = demo_config(opts, pre_data, work / "pretrain", sim_header="meanP", epochs=opts.pretrain_epochs)
        pre_metrics = train_run("pre-training stand-in (toy seed "
                                f"{opts.pretrain_seed}, its own test split)", pre)
        clip_path = export_pretrained_clip(pre, work / "tiny_pretrained.safetensors")
        pretrained = {"pretrained_clip_name": str(clip_path), "clip_init": "pretrained"}
        # 2. Zero-shot, then every method with the same budget.
        rows = {}
        zero = demo_config(opts, demo_data, work / "zero_shot", **pretrained, sim_header="meanP", do_train=False,
                           do_eval=True)
        rows[ZERO_SHOT] = {"metrics": train_run(ZERO_SHOT, zero), "trainable": 0,
                           "clip_total": trainable_parameters(zero)[1]}
        for name in opts.methods:
            slug = name.split(" ")[0].replace("-", "_").lower()
            config = demo_config(opts, demo_data, work / slug, **pretrained, epochs=opts.demo_epochs,
                                 **DEMO_RUNS[name])
            trainable, clip_total = trainable_parameters(config)
            rows[name] = {"metrics": train_run(name, config), "trainable": trainable, "clip_total": clip_total}
        rows["_pretrain"] = {"metrics": pre_metrics}
        return rows
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------
# The table


def format_table(opts, cost: dict[str, dict] | None, demo: dict[str, dict] | None) -> str:
    lines = []
    if cost:
        first = next(iter(cost.values()))
        lines.append(f"Cost: {opts.arch}, {opts.batch} videos x {opts.frames} frames + {opts.batch} captions x "
                     f"{opts.words} tokens, {opts.device}, fp32, random weights; CLIP has {first['clip_total']:,} "
                     f"parameters ({first['paper_full']:,} in the papers' 'full fine-tuning' convention).")
    if demo:
        pre = demo["_pretrain"]["metrics"]
        lines.append(f"Demo: toy dataset seed {opts.demo_seed} ({opts.demo_train} training videos, "
                     f"{int(demo[ZERO_SHOT]['metrics']['num_captions'])} test captions x "
                     f"{int(demo[ZERO_SHOT]['metrics']['num_videos'])} videos, temporal subset "
                     f"{int(demo[ZERO_SHOT]['metrics'].get('temporal/num_captions', 0))} captions), tiny CLIP "
                     f"pre-trained on toy seed {opts.pretrain_seed} ({opts.pretrain_epochs} epochs, meanP; its own "
                     f"test T2V R@1 {pre['t2v/R1']:.2f}), then {opts.demo_epochs} epochs x batch {opts.demo_batch} "
                     "per method; T2V R@1 of the final epoch.")
    memory = "CUDA peak (MiB)" if opts.device.startswith("cuda") else "peak RSS / growth in training (MiB)"
    lines.append("")
    lines.append(f"| method | trainable | % of CLIP (all / papers') | step (s) | {memory} | tiny: trainable (% of CLIP) "
                 "| demo T2V R@1 | demo temporal R@1 |")
    lines.append("|---|---|---|---|---|---|---|---|")
    names = ([ZERO_SHOT] if demo else []) + list(opts.methods)
    for name in names:
        cells = [name]
        r = (cost or {}).get(name)
        if r:
            mem = (f"{r['cuda_peak_mib']:,.0f}" if "cuda_peak_mib" in r
                   else f"{r['peak_rss_mib']:,.0f} / {r['rss_growth_mib']:,.0f}")
            cells += [f"{r['trainable']:,}", f"{100 * r['trainable'] / r['clip_total']:.2f} / "
                      f"{100 * r['trainable'] / r['paper_full']:.2f}", f"{r['step_s']:.2f}", mem]
        else:
            cells += ["-"] * 4
        d = (demo or {}).get(name)
        if d:
            m = d["metrics"]
            cells += [f"{d['trainable']:,} ({100 * d['trainable'] / d['clip_total']:.2f}%)", f"{m['t2v/R1']:.2f}",
                      f"{m['temporal/t2v/R1']:.2f}" if "temporal/t2v/R1" in m else "-"]
        else:
            cells += ["-"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def switch(parser, name: str, help: str) -> None:
    """--NAME (the default) and --no_NAME."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", dest=name, action="store_true", default=True, help=f"{help} (default)")
    group.add_argument(f"--no_{name}", dest=name, action="store_false", help=f"skip: {help}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    switch(parser, "cost", "measure trainable parameters, step time and memory at --arch shapes")
    g = parser.add_argument_group("cost")
    g.add_argument("--arch", default="ViT-B/32")
    g.add_argument("--batch", type=int, default=4, help="videos (and captions) per step")
    g.add_argument("--frames", type=int, default=12)
    g.add_argument("--words", type=int, default=32)
    g.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    g.add_argument("--device", default="cpu")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    switch(parser, "demo", "train and evaluate every method on the toy demo dataset (the R@1 columns)")
    g = parser.add_argument_group("demo")
    g.add_argument("--work_dir", default=str(ROOT / "outputs" / "bench_prompt_tuning"),
                   help="datasets, runs and the pretrained tiny CLIP")
    g.add_argument("--demo_seed", type=int, default=0, help="toy dataset seed of the evaluated demo dataset")
    g.add_argument("--pretrain_seed", type=int, default=1, help="toy dataset seed of the pre-training stand-in")
    g.add_argument("--demo_train", type=int, default=600, help="training videos of both toy datasets")
    g.add_argument("--demo_test", type=int, default=100, help="test videos of both toy datasets")
    g.add_argument("--pretrain_epochs", type=int, default=6)
    g.add_argument("--demo_epochs", type=int, default=4, help="epochs of every method on the demo dataset")
    g.add_argument("--demo_batch", type=int, default=64)
    g.add_argument("--demo_max_frames", type=int, default=None, help="default: configs/demo.yaml's (8)")
    g.add_argument("--demo_readers", type=int, default=1, help="DataLoader workers (--num_thread_reader)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.worker:
        print(json.dumps(worker(opts.worker, opts)))
        return 0
    if not (opts.cost or opts.demo):
        raise SystemExit("nothing to do: --no_cost and --no_demo")
    started, load = time.perf_counter(), os.getloadavg()[0]
    cost = measure_cost(opts) if opts.cost else None
    demo = run_demo(opts) if opts.demo else None
    seconds = time.perf_counter() - started
    print()
    print(format_table(opts, cost, demo))
    print(f"\nwall time {int(seconds) // 60} min {int(seconds) % 60} s; 1-minute load average {load:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
