"""Caption decoding with the key/value cache against re-encoding the whole prefix at every step (T2VLP's
way, ``--no_kv_cache``), on the same weights and the same videos: both must give the same captions.

    python benchmarks/bench_caption_decode.py                                  # ViT-B/32 shapes, random weights, CPU
    python benchmarks/bench_caption_decode.py --checkpoint out/model_final.pt  # a trained caption model
    python benchmarks/bench_caption_decode.py --device cuda --batch 64

Only decoding is timed (the videos' visual tokens are computed once, outside the clock, and shared by both
ways): prefix encoding, every step's decoder pass, vocabulary logits and the search. A randomly initialised
model never emits the end token, so every caption runs the full --max_len steps in both ways.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.components.decoder import beam_search, make_stepper  # noqa: E402


def build(args):
    import main_task_caption
    from engine.caption import CaptionTask
    from engine.checkpoint import adopt_for_evaluation

    if args.checkpoint:
        argv = ["--do_eval", "--init_model", args.checkpoint]
        flags = main_task_caption.get_args(argv)
        adopt_for_evaluation(flags, argv)
    else:
        flags = main_task_caption.get_args(["--pretrained_clip_name", args.arch, "--clip_init", "random",
                                            "--max_frames", str(args.frames), "--decoder_layers", str(args.layers)])
    torch.manual_seed(0)
    return CaptionTask().build_model(flags).to(args.device).eval(), flags


@torch.no_grad()
def decode(model, visual, valid, beams, max_len, use_cache):
    prefix = model.prefix(visual)
    stepper = make_stepper(model.caption_decoder(), prefix, valid, use_cache)
    return beam_search(stepper, lambda ids: model.embed(ids, prefix),
                       lambda h: model.vocab_logits(h[:, -1]).float().log_softmax(-1), visual.shape[0], model.sot,
                       model.eot, max_len, visual.device, beams)


def timed(fn, repeats, device):
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="a caption model_final.pt (default: random weights)")
    p.add_argument("--arch", default="ViT-B/32", help="architecture of the random model")
    p.add_argument("--layers", type=int, default=6, help="decoder blocks of the random model")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--batch", type=int, default=8, help="videos decoded together")
    p.add_argument("--max_len", type=int, default=31, help="tokens per caption, end token included (T2VLP: 31)")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    torch.set_grad_enabled(False)
    model, flags = build(args)
    size = model.clip.config.vision.image_size
    video = torch.randn(args.batch, flags.max_frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(args.batch, flags.max_frames, dtype=torch.long)
    video, mask = video.to(args.device), mask.to(args.device)
    visual, valid = model.head.visual_tokens(video, mask)
    source = args.checkpoint or f"random {args.arch}, {args.layers}-block decoder"
    print(f"{source}; {args.batch} videos x {flags.max_frames} frames, prefix {visual.shape[1]} tokens, at most "
          f"{args.max_len} tokens per caption; {args.device}, {torch.get_num_threads()} threads; median of "
          f"{args.repeats}")
    print(f"{'search':>8} {'tokens':>7} {'KV cache ms':>12} {'re-encode ms':>13} {'speed-up':>9}  same captions")
    for beams in args.beams:
        cached, with_cache = timed(lambda: decode(model, visual, valid, beams, args.max_len, True), args.repeats,
                                   args.device)
        full, without = timed(lambda: decode(model, visual, valid, beams, args.max_len, False), args.repeats,
                              args.device)
        tokens = sum(len(c) for c in with_cache) + len(with_cache)  # + the end token where emitted (or cut)
        name = "greedy" if beams == 1 else f"beam {beams}"
        print(f"{name:>8} {tokens:>7} {cached * 1e3:>12.1f} {full * 1e3:>13.1f} {full / cached:>8.2f}x  "
              f"{'yes' if with_cache == without else 'NO'}")


if __name__ == "__main__":
    main()
