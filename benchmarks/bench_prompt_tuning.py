"""Prompt tuning against full fine-tuning: trainable parameters, training step time and peak memory.

    python benchmarks/bench_prompt_tuning.py                      # ViT-B/32, 4 videos x 12 frames, CPU
    python benchmarks/bench_prompt_tuning.py --device cuda --batch 32

Methods: CLIP4Clip meanP with all of CLIP trained (full fine-tuning), DGL-Linear, DGL-Transformer and
UMP, with random weights at the same shapes and the same batch. A step is forward of both towers,
the symmetric InfoNCE loss, backward and an AdamW step. Each method runs in its own process so that
peak memory is its own: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps; on CPU the
peak resident set (ru_maxrss) of the process and how much it grew during training (the part the
method's gradients, optimiser state and activations add on top of the weights). Time is the median
of --steps steps after one warm-up step.

The R@1 columns (demo dataset, overall and on the captions that only temporal order separates) need
the training engine and the toy dataset; they are printed as "pending" until those are wired in.
"""
from __future__ import annotations

import argparse
import json
import resource
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

METHODS = {
    "meanP full fine-tuning": ("meanP", []),
    "DGL-Linear": ("dgl", ["--shared_latent_space", "linear"]),
    "DGL-Transformer": ("dgl", ["--shared_latent_space", "transformer"]),
    "UMP (reconstruction)": ("ump", []),
}
# CLIP B/32 minus token embedding, patch conv and positional embeddings: the papers' "full" 123.54M.
PAPER_FULL_EXCLUDES = ("text.token_embedding.", "visual.conv1.", "visual.positional_embedding",
                       "text.positional_embedding")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(name: str, opts) -> dict:
    torch.manual_seed(0)
    device = torch.device(opts.device)
    method, flags = METHODS[name]
    args = add_model_args(argparse.ArgumentParser()).parse_args(["--method", method, *flags])
    args.max_frames = opts.frames
    clip = build_clip(opts.arch, device=device)
    model = get_head(method)(clip, args).to(device)
    if method == "meanP":
        freeze_clip_layers(model, -1)  # everything trains
    clip_total = sum(p.numel() for p in clip.parameters())
    paper_full = sum(p.numel() for n, p in clip.named_parameters() if not n.startswith(PAPER_FULL_EXCLUDES))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    coef = 1.0 if method == "meanP" else 1e-3
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B/32")
    parser.add_argument("--batch", type=int, default=4, help="videos (and captions) per step")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--words", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.worker:
        print(json.dumps(worker(opts.worker, opts)))
        return 0
    passthrough = [a for a in sys.argv[1:] if a != "--methods" and a not in METHODS]
    rows = {}
    for name in opts.methods:
        done = subprocess.run([sys.executable, __file__, *passthrough, "--worker", name], capture_output=True,
                              text=True, check=True)
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  measured {name}", file=sys.stderr)
    first = next(iter(rows.values()))
    memory = "CUDA peak (MiB)" if opts.device.startswith("cuda") else "peak RSS / growth in training (MiB)"
    print(f"\n{opts.arch}, {opts.batch} videos x {opts.frames} frames + {opts.batch} captions x {opts.words} tokens, "
          f"{opts.device}, fp32; CLIP has {first['clip_total']:,} parameters ({first['paper_full']:,} in the papers' "
          "'full fine-tuning' convention)\n")
    print(f"| method | trainable | % of CLIP (all / papers') | step (s) | {memory} | R@1 demo | R@1 temporal-only |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        share = f"{100 * r['trainable'] / r['clip_total']:.2f} / {100 * r['trainable'] / r['paper_full']:.2f}"
        mem = (f"{r['cuda_peak_mib']:,.0f}" if "cuda_peak_mib" in r
               else f"{r['peak_rss_mib']:,.0f} / {r['rss_growth_mib']:,.0f}")
        print(f"| {name} | {r['trainable']:,} | {share} | {r['step_s']:.2f} | {mem} | pending | pending |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
