"""Training throughput end to end: the loader, the step and the engine's own loop, side by side on the same data.

    python benchmarks/bench_e2e.py                          # CPU: tiny random CLIP, 4 frames x 32 px, batch 4
    python benchmarks/bench_e2e.py --device cuda            # GPU: ViT-B/32, 12 frames x 224 px, batch 128, bf16,
                                                            #      one DataLoader worker per core
    python benchmarks/bench_e2e.py --data lmdb --workers 8 --batch 256 --jpeg_decode device   # any engine flag
    python benchmarks/bench_e2e.py --datatype msrvtt --data_path DATA --features_path VIDEOS  # your own data

For each data path one row, every figure from this one run:

* loader: pairs/s of the engine's training DataLoader (``engine.train_data.build_train_data``) iterated
  with no model, after its first batch (reported apart: worker start-up), and per worker (per core);
* compute: pairs/s of the training step (``to_device``, the engine's loss, backward, clipping, AdamW)
  on one batch of that loader kept on the device, after a warm-up step (torch.compile, allocator);
* e2e: pairs/s of ``engine.trainer.run`` itself, from the times of its per-step log lines after the
  first step; time from the start of the run to its first step and to the end of its first evaluation
  (the validation split after epoch 1), and how long that evaluation took;
* the bottleneck, and e2e / compute (1.0: the loader is never waited for).

Data: clips generated like raw MSR-VTT (320x240, 30 fps, H.264; ``preprocess.synthetic.make_clips``),
the same after ``preprocess/compress_video.py`` (3 fps, short side 224) and the same in a frame LMDB
(``preprocess/frames_to_lmdb.py``, 1 frame per second, short side 224), as a CSV dataset of N captions
per clip (train) and one caption per clip (val and test). With ``--data_path`` the user's data is
measured instead. Flags this script does not know go to ``main_task_retrieval.py``'s parser.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import train_step  # noqa: E402  (the step bench_train_step times)
from engine.distributed import DistEnv  # noqa: E402
from engine.evaluate import to_device  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.perf import compile_model, configure_backends, wants_compile  # noqa: E402
from engine.train_data import build_train_data  # noqa: E402
from engine.trainer import TensorBoardScalars, run  # noqa: E402
from main_task_retrieval import get_args  # noqa: E402
from preprocess.synthetic import make_clips  # noqa: E402

DATA_PATHS = ("raw", "compressed", "lmdb")
DEFAULTS = {  # per device; every one can be given
    "cpu": dict(arch="tiny", frames=4, size=32, batch=4, workers=1, precision="fp32", clips=10, val_clips=2,
                seconds=4, captions=8, steps=8),
    "cuda": dict(arch="ViT-B/32", frames=12, size=224, batch=128, workers=os.cpu_count() or 1, precision="amp_bf16",
                 clips=128, val_clips=16, seconds=15, captions=40, steps=20),
}


@dataclass
class Row:
    data: str
    loader: float = 0.0
    loader_first: float = 0.0
    compute: float | None = None  # None: not measured (--loader_only)
    e2e: float | None = None
    e2e_steps: int = 0
    first_step: float | None = None
    first_eval_at: float | None = None
    first_eval_took: float | None = None


# ----------------------------------------------------------------------------------------------------
# Data


def write_csv(path: Path, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_path", "caption"])
        writer.writerows(rows)


def prepare_data(opts, cache: Path) -> dict[str, list[str]]:
    """Engine flags of each generated data path (clips, annotations, compressed copies, LMDB)."""
    from preprocess import compress_video, frames_to_lmdb

    raw = cache / "raw"
    clips = make_clips(raw, opts.clips, opts.seconds, opts.gop)
    train, val = clips[:opts.clips - opts.val_clips], clips[opts.clips - opts.val_clips:]
    annotations = cache / f"annotations_{opts.clips}x{opts.captions}_val{opts.val_clips}"
    annotations.mkdir(parents=True, exist_ok=True)
    write_csv(annotations / "train.csv", [(c.name, f"clip {i} described in words, take {k}")
                                          for i, c in enumerate(train) for k in range(opts.captions)])
    for split in ("val", "test"):
        write_csv(annotations / f"{split}.csv", [(c.name, f"clip {len(train) + i} described in words")
                                                 for i, c in enumerate(val)])
    base = ["--datatype", "csv", "--data_path", str(annotations)]
    flags = {"raw": [*base, "--features_path", str(raw)]}
    workers = str(max(1, opts.prep_workers))
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the table
        if "compressed" in opts.data:
            compressed = cache / "compressed_3fps_224"
            if compress_video.main(["--input_root", str(raw), "--output_root", str(compressed), "--fps", "3",
                                    "--size", "224", "--workers", workers]):
                raise SystemExit("error: compress_video.py failed on the generated clips")
            flags["compressed"] = [*base, "--features_path", str(compressed)]
        if "lmdb" in opts.data:
            lmdb = cache / "frames_fps1_224.lmdb"
            if frames_to_lmdb.main(["--input_root", str(raw), "--lmdb_path", str(lmdb), "--fps", "1", "--size", "224",
                                    "--workers", workers, "--extensions", ".mp4"]):
                raise SystemExit("error: frames_to_lmdb.py failed on the generated clips")
            flags["lmdb"] = [*base, "--features_path", str(raw), "--video_backend", "lmdb", "--lmdb_path", str(lmdb)]
    return flags


def engine_argv(opts, data_flags: list[str], output_dir: Path, extra: list[str]) -> list[str]:
    return ["--do_train", "--epochs", "1", "--output_dir", str(output_dir), "--device", opts.device,
            "--pretrained_clip_name", opts.arch, "--clip_init", "random", "--freeze_layer_num", "-1",
            "--batch_size", str(opts.batch), "--batch_size_val", str(opts.batch), "--max_frames", str(opts.frames),
            "--image_resolution", str(opts.size), "--num_thread_reader", str(opts.workers), "--precision",
            opts.precision, "--n_display", "1", "--lr", "1e-4", *data_flags, *extra]


# ----------------------------------------------------------------------------------------------------
# The three measurements


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_loader(args, env: DistEnv, steps: int) -> tuple[float, float, dict, int]:
    """(pairs/s after the first batch, seconds to the first batch, that batch, batches timed)."""
    started = time.perf_counter()
    data = build_train_data(args, env)
    batches, available = data.epoch(0, 0)
    first = next(batches)
    first_at = time.perf_counter() - started
    count = min(steps, available - 1)
    if count < 1:
        raise SystemExit(f"error: {available} training steps per epoch; give more --clips or --captions, or a "
                         "smaller --batch, for at least 2")
    started = time.perf_counter()
    pairs = sum(next(batches)["video_mask"].shape[0] for _ in range(count))
    rate = pairs / (time.perf_counter() - started)
    del batches, data  # persistent workers end with their DataLoader
    gc.collect()
    return rate, first_at, first, count


def measure_compute(args, env: DistEnv, batch: dict, steps: int) -> float:
    """pairs/s of the training step on ``batch`` kept on the device (converted there every step)."""
    from modules import build_model

    torch.manual_seed(args.seed)
    configure_backends(args, env)
    model = build_model(args).to(env.device).train()
    compile_model(model, args, env)
    optimizer, _ = build_optimizer(model, args, total_steps=1000)
    resident = {k: v.to(env.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    pairs = resident["video_mask"].shape[0]
    train_step(model, optimizer, to_device(resident, env.device), env, args.precision)  # warm-up
    synchronize(env.device)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, to_device(resident, env.device), env, args.precision)
    synchronize(env.device)
    rate = pairs * steps / (time.perf_counter() - started)
    del model, optimizer, resident
    torch._dynamo.reset()  # the engine's run compiles its own model from scratch, as a real run does
    gc.collect()
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
    return rate


class RunTimes(logging.Handler):
    """Times of the engine's own log lines: each training step, the end of the epoch, each evaluation."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.steps: list[tuple[float, int]] = []  # (time, step in epoch)
        self.epoch_done: list[float] = []
        self.evaluations: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith(TensorBoardScalars.STEP):
            self.steps.append((record.created, record.args[1]))
        elif message.startswith(TensorBoardScalars.EPOCH):
            self.epoch_done.append(record.created)
        elif message.startswith(("epoch %d, %s:", "test, ")):  # an evaluation's table
            self.evaluations.append(record.created)


def measure_e2e(args, row: Row) -> None:
    """Run ``engine.trainer.run`` (1 epoch, then evaluation) and read its log lines' times."""
    times = RunTimes()
    logger = logging.getLogger("univtr")
    logger.addHandler(times)
    started = time.time()
    try:
        run(args)
    finally:
        logger.removeHandler(times)
    if len(times.steps) < 2:
        raise SystemExit("error: the run took fewer than 2 steps; give more --clips or --captions")
    (first, _), (last, _) = times.steps[0], times.steps[-1]
    row.first_step = first - started
    row.e2e_steps = len(times.steps) - 1
    row.e2e = row.e2e_steps * args.batch_size / (last - first)
    if times.evaluations:
        row.first_eval_at = times.evaluations[0] - started
        row.first_eval_took = times.evaluations[0] - (times.epoch_done[0] if times.epoch_done else last)


def bottleneck(row: Row, opts) -> str:
    """What limits the engine's loop: the slower of loader and step when the loop runs within 10% of
    it, else what lies between them."""
    if row.compute is None or row.e2e is None:
        return "not measured (--loader_only)"
    slower, limit = ("loader", row.loader) if row.loader < row.compute else ("compute", row.compute)
    if row.e2e >= 0.9 * limit:
        return slower
    if opts.device == "cpu":
        return "shared CPU cores (loader and step each faster alone than together)"
    return "the loop around the step (hand-over, per-step syncs and logging)"


# ----------------------------------------------------------------------------------------------------


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data", default=",".join(DATA_PATHS), help=f"comma-separated, of {', '.join(DATA_PATHS)}")
    parser.add_argument("--arch", default=None, help="CLIP architecture, random weights (cpu: tiny, cuda: ViT-B/32)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (cpu 4, cuda 12)")
    parser.add_argument("--size", type=int, default=None, help="frame side (cpu 32, the tiny CLIP's; cuda 224)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (cpu 4, cuda 128)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (cpu 1, cuda: every core)")
    parser.add_argument("--precision", default=None, help="cpu fp32, cuda amp_bf16")
    parser.add_argument("--clips", type=int, default=None, help="generated clips, train + val (cpu 10, cuda 128)")
    parser.add_argument("--val_clips", type=int, default=None, help="of those, the val/test split (cpu 2, cuda 16)")
    parser.add_argument("--seconds", type=int, default=None, help="length of a generated clip (cpu 4, cuda 15)")
    parser.add_argument("--captions", type=int, default=None, help="training captions per clip (cpu 8, cuda 40)")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the generated clips")
    parser.add_argument("--steps", type=int, default=None,
                        help="batches / steps timed for loader and compute (cpu 8, cuda 20)")
    parser.add_argument("--prep_workers", type=int, default=os.cpu_count() or 1,
                        help="processes for compress_video.py and frames_to_lmdb.py")
    parser.add_argument("--loader_only", action="store_true",
                        help="measure the loader alone (no model: any --size and --frames, e.g. 224 and 12 on CPU)")
    parser.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "univtr_bench_e2e"),
                        help="generated data is kept here and reused")
    opts, extra = parser.parse_known_args(argv)
    for name, value in DEFAULTS[opts.device].items():
        if getattr(opts, name) is None:
            setattr(opts, name, value)
    opts.data = [d for d in opts.data.split(",") if d]
    unknown = set(opts.data) - set(DATA_PATHS)
    if unknown:
        parser.error(f"--data: unknown {', '.join(sorted(unknown))}; choose from {', '.join(DATA_PATHS)}")
    return opts, extra


def main(argv=None) -> list[Row]:
    opts, extra = parse(sys.argv[1:] if argv is None else argv)
    cache = Path(opts.cache_dir)
    user_data = any(a == "--data_path" or a.startswith("--data_path=") for a in extra)
    started = time.perf_counter()
    flags = {"user": []} if user_data else prepare_data(opts, cache)
    names = list(flags) if user_data else opts.data
    print(f"data ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    rows = []
    for name in names:
        row = Row(name)
        with tempfile.TemporaryDirectory(dir=cache if cache.exists() else None) as out:
            args = get_args(engine_argv(opts, flags[name], Path(out) / "run", extra))
            env = DistEnv(device=torch.device(opts.device))
            row.loader, row.loader_first, batch, timed = measure_loader(args, env, opts.steps)
            if not opts.loader_only:
                row.compute = measure_compute(args, env, batch, min(opts.steps, timed))
                del batch
                measure_e2e(args, row)
        rows.append(row)
        print(f"{name}: loader {row.loader:.1f}, compute {number(row.compute, 1)}, e2e {number(row.e2e, 1)} pairs/s",
              file=sys.stderr)
    print_table(opts, args, rows)
    return rows


def number(value: float | None, digits: int) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def print_table(opts, args, rows: list[Row]) -> None:
    env = DistEnv(device=torch.device(opts.device))
    workers = max(1, opts.workers)
    model = "no model (--loader_only)" if opts.loader_only else f"{opts.arch} (random weights), {args.sim_header}"
    print(f"\n{model}, {opts.frames} frames x {opts.size} px, "
          f"{args.max_words} tokens, batch {opts.batch}, {args.precision}, device {opts.device}, "
          f"{opts.workers} DataLoader workers (per-worker column: / {workers}), torch.compile "
          f"{'on' if wants_compile(args, env) else 'off'}, frames handed over as {args.loader_frames}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print("\n| data | loader pairs/s | loader per worker | loader first batch (s) | compute pairs/s | e2e pairs/s "
          "| e2e / compute | first step at (s) | first evaluation at (s) | first evaluation took (s) | bottleneck |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ratio = r.e2e / r.compute if r.e2e is not None else None
        print(f"| {r.data} | {r.loader:.1f} | {r.loader / workers:.1f} | {r.loader_first:.2f} | "
              f"{number(r.compute, 1)} | {number(r.e2e, 1)} | {number(ratio, 2)} | {number(r.first_step, 2)} | "
              f"{number(r.first_eval_at, 2)} | {number(r.first_eval_took, 2)} | {bottleneck(r, opts)} |")
    e2e = "" if opts.loader_only else f"; e2e: the run's {rows[0].e2e_steps if rows else 0} steps after its first"
    print(f"\nloader and compute: {opts.steps} timed batches/steps at most after the first{e2e}. "
          f"raw = {opts.seconds} s 320x240 30 fps clips, compressed = 3 fps short side 224, lmdb = JPEG frames at "
          "1 fps short side 224")


if __name__ == "__main__":
    main()
