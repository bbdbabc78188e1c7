"""Throughput, peak memory and MFU of one training step (meanP by default, ViT-B/32 shapes, 12 frames).

    python benchmarks/bench_train_step.py                       # CPU, fp32, batch 4
    python benchmarks/bench_train_step.py --device cuda         # GPU, bf16 autocast, largest batch that fits
    python benchmarks/bench_train_step.py --head hmmc           # HMMC pre-training step beside meanP (ratio)

With ``--head hmmc`` the step is HMMC's pre-training step (``--hmmc_stage pretrain``: query and momentum
encoders, five queues of K = --queue columns, FAM/VTM/FTM/MLM), and the same benchmark runs meanP's
step in another process (``--compare``) so both peak memories are measured from a clean process.

The step is the engine's own (``engine.trainer.step_losses`` + backward + AdamW), on random
frames and captions so the data pipeline is not measured. FLOPs are counted once with
``torch.utils.flop_counter`` (forward + backward, matmuls/convs/attention); MFU = achieved FLOP/s over
the peak given by --peak_tflops (default: 989 for H100/H200 bf16 dense; none on CPU).
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.distributed import DistEnv  # noqa: E402
from engine.optim import add_optim_args, build_optimizer  # noqa: E402
from engine.trainer import step_losses  # noqa: E402
from modules.clip import tokenize  # noqa: E402
from modules.factory import add_model_args, build_model  # noqa: E402


HEAD_FLAGS = {  # the configuration each head is measured in
    "hmmc": ["--hmmc_stage", "pretrain", "--use_temp", "--use_frame_fea", "--contrast_num_negative", "1024"],
    # SimVTP's pre-training step on its own backbone (VideoMAE ViT-B/16, give --frames 16); --mask_ratio sets
    # the tube masking (0.9 in SimVTP; 0 runs every pass on all 1568 tokens)
    "simvtp": ["--simvtp_stage", "pretrain", "--videomae_arch", "ViT-B-16"],
    # every trained T2VLP piece at once: joint last blocks, tube tokens, alignment, fusion VTM with hard negatives
    "t2vlp": ["--t2vlp_stage", "retrieval"],
}


def make_model(arch: str, head: str, device: torch.device, frames: int = 12, mask_ratio: float | None = None):
    parser = add_optim_args(add_model_args(argparse.ArgumentParser()))
    masking = ["--video_mask_ratio", str(mask_ratio)] if mask_ratio is not None else []
    args = parser.parse_args(["--pretrained_clip_name", arch, "--clip_init", "random", "--method", head,
                              "--freeze_layer_num", "-1", *HEAD_FLAGS.get(head, []), *masking])
    args.max_frames = frames
    torch.manual_seed(0)
    model = build_model(args).to(device)
    optimizer, _ = build_optimizer(model, args, total_steps=1000)
    return model, optimizer


def make_batch(batch: int, frames: int, size: int, device: torch.device) -> dict:
    ids, mask = tokenize([f"a person is doing thing number {i} in a video" for i in range(batch)], 32)
    return {"text_ids": ids.to(device), "text_mask": mask.to(device),
            "video": torch.randn(batch, frames, 3, size, size, device=device),
            "video_mask": torch.ones(batch, frames, dtype=torch.long, device=device)}


STEPS = itertools.count()  # the optimiser step the head sees (HMMC updates its momentum copies once per step)


def train_step(model, optimizer, batch, env, precision):
    losses = step_losses(model, batch, env, precision, next(STEPS))
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses["loss"]


def count_flops(model, optimizer, batch, env, precision) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        losses = step_losses(model, batch, env, precision)
        losses["loss"].backward()
    optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(model, optimizer, batch, env, precision, repeats: int) -> tuple[float, float]:
    """(median seconds per step, peak memory in GiB: CUDA allocator peak, or the process RSS peak on CPU)."""
    device = env.device
    train_step(model, optimizer, batch, env, precision)  # warm-up: allocator, optimiser state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_step(model, optimizer, batch, env, precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB on Linux
    return statistics.median(times), peak


def largest_batch(arch, head, env, precision, frames, size, start: int, limit: int, mask_ratio=None) -> int:
    """Doubling search for the largest global batch whose step fits in GPU memory."""
    best, batch = 0, start
    while batch <= limit:
        model, optimizer = make_model(arch, head, env.device, frames, mask_ratio)
        try:
            train_step(model, optimizer, make_batch(batch, frames, size, env.device), env, precision)
            best, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            del model, optimizer
            gc.collect()
            torch.cuda.empty_cache()
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B/32")
    parser.add_argument("--head", default="meanP")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--batch", type=int, default=0, help="pairs per step (0: 4 on CPU, largest that fits on GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="default: fp32 on CPU, amp_bf16 on GPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="device peak for MFU (default 989 on CUDA = H100/H200 dense bf16; none on CPU)")
    parser.add_argument("--compare", default=None,
                        help="also measure this head in its own process and print both with ratios "
                             "(default: meanP when --head is not meanP)")
    parser.add_argument("--json", action="store_true", help="print one JSON line of results (used by --compare)")
    parser.add_argument("--mask_ratio", type=float, default=None, help="simvtp: tube mask ratio (default 0.9)")
    args = parser.parse_args(argv)
    compare = args.compare if args.compare is not None else ("meanP" if args.head != "meanP" else "")
    if compare and not args.json:
        return compare_heads(args, argv or sys.argv[1:], compare)

    device = torch.device(args.device)
    env = DistEnv(device=device)
    precision = args.precision or ("amp_bf16" if device.type == "cuda" else "fp32")
    peak_tflops = args.peak_tflops if args.peak_tflops is not None else (989.0 if device.type == "cuda" else None)
    size = 224 if "L-14-336" not in args.arch and "L/14@336" not in args.arch else 336
    batch = args.batch or (4 if device.type == "cpu" else largest_batch(args.arch, args.head, env, precision,
                                                                        args.frames, size, 32, 4096, args.mask_ratio))
    model, optimizer = make_model(args.arch, args.head, device, args.frames, args.mask_ratio)
    data = make_batch(batch, args.frames, size, device)
    flops = count_flops(model, optimizer, data, env, precision)
    seconds, peak = measure(model, optimizer, data, env, precision, args.repeats)
    achieved = flops / seconds
    state_mib = {kind: sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20 for kind, tensors in (
        ("trainable", [p for p in model.parameters() if p.requires_grad]),
        ("frozen", [p for p in model.parameters() if not p.requires_grad]),
        ("buffers", list(model.buffers())))}
    if args.json:
        print(json.dumps({"head": args.head, "batch": batch, "seconds": seconds, "flops": flops, "peak_gib": peak,
                          "state_mib": state_mib, "precision": precision}))
        return {}
    mfu = f"{100 * achieved / (peak_tflops * 1e12):.1f}%" if peak_tflops else "n/a (give --peak_tflops)"
    arch = "VideoMAE ViT-B/16 (HEAD_FLAGS)" if args.head == "simvtp" else args.arch  # its own backbone family
    print(f"{args.head}, {arch}, {args.frames} frames x {size}px, 32 tokens, {precision}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    print("| batch (pairs) | step (s) | pairs/s | peak memory (GiB) | TFLOP per step | achieved TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {batch} | {seconds:.3f} | {batch / seconds:.1f} | {peak:.2f} | {flops / 1e12:.3f} | "
          f"{achieved / 1e12:.3f} | {mfu} |")
    return {"batch": batch, "seconds": seconds, "flops": flops, "peak_gib": peak}


def compare_heads(args, argv, other: str) -> dict:
    """Each head in a clean process (peak memory is per process), then one table with the ratios."""
    import subprocess

    rows = {}
    for head in (other, args.head):
        flags = [a for a in argv if a not in ("--json",)]
        flags = _without(_without(flags, "--head"), "--compare")
        out = subprocess.run([sys.executable, __file__, *flags, "--head", head, "--compare", "", "--json"],
                             capture_output=True, text=True, check=True).stdout
        rows[head] = json.loads(out.strip().splitlines()[-1])
    base, new = rows[other], rows[args.head]
    print(f"{args.arch}, {args.frames} frames, 32 tokens, {new['precision']}, batch {new['batch']}, device {args.device}, "
          f"each head in its own process; {args.head}: {' '.join(HEAD_FLAGS.get(args.head, [])) or 'defaults'}")
    print("| head | step (s) | pairs/s | peak memory (GiB) | TFLOP per step | trainable (MiB) | frozen copies (MiB) "
          "| buffers (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for head, r in rows.items():
        m = r["state_mib"]
        print(f"| {head} | {r['seconds']:.3f} | {r['batch'] / r['seconds']:.2f} | {r['peak_gib']:.2f} | "
              f"{r['flops'] / 1e12:.3f} | {m['trainable']:.0f} | {m['frozen']:.0f} | {m['buffers']:.0f} |")
    print(f"| ratio {args.head}/{other} | {new['seconds'] / base['seconds']:.2f} | "
          f"{base['seconds'] / new['seconds']:.2f} | {new['peak_gib'] / base['peak_gib']:.2f} | "
          f"{new['flops'] / base['flops']:.2f} | | | |")
    print(f"{args.head} keeps {new['peak_gib'] - base['peak_gib']:+.2f} GiB more at peak than {other}; its momentum "
          f"copies are {new['state_mib']['frozen']:.0f} MiB and its queues/buffers {new['state_mib']['buffers']:.0f} MiB")
    return rows


def _without(argv, flag):
    """``argv`` without ``flag`` and its value (``--flag v`` or ``--flag=v``)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(flag + "="):
            out.append(token)
    return out


if __name__ == "__main__":
    main()
