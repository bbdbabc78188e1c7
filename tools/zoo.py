"""Every registered method at its default backbone: parameters and compute, as a markdown table.

    python -m tools.zoo [--backbone ViT-B/32] [--frames 12] [--words 32]

Each head is built with its default flags on the meta device (parameters are counted from shapes,
without initialising anything), then run once on zero weights under ``torch.utils.flop_counter``
(the code branches on masks and token positions, so the ops run for real): one video of
``--frames`` frames through ``encode_video``, one caption of ``--words`` tokens through ``encode_text``,
and one (caption, video) score through ``similarity`` (only heads that score pairs jointly spend much
there). FLOPs count a multiply-add as 2, the convention of flop_counter (and of most papers' "GFLOPs"
for ViTs are multiply-adds: halve ours to compare). Trainable parameters follow the default
``--freeze_layer_num 0`` and the head's own freezing.
"""
from __future__ import annotations

import argparse
import sys
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode


def default_args(method: str, backbone: str, frames: int, words: int) -> argparse.Namespace:
    from engine.options import build_parser  # start-up

    args = build_parser().parse_args([])
    args.method, args.pretrained_clip_name, args.max_frames, args.max_words = method, backbone, frames, words
    return args


def _flops(fn) -> float | None:
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            fn()
    except Exception:  # an op without a meta kernel: reported as unknown rather than guessed
        return None
    return counter.get_total_flops() / 1e9


def measure(method: str, backbone: str = "ViT-B/32", frames: int = 12, words: int = 32) -> dict:
    """{method, trainable, total, video_gflops, text_gflops, pair_gflops} of one head."""
    from modules.clip import build_clip, tokenize  # start-up
    from modules.factory import count_parameters, freeze_clip_layers  # start-up
    from modules.heads import get_head  # start-up

    args = default_args(method, backbone, frames, words)
    head_cls = get_head(method)
    family = getattr(head_cls, "backbone_family", "clip")
    # Shapes only (meta device: no initialisation, no memory) where the backbone allows it.
    with warnings.catch_warnings(), torch.device("meta" if family == "clip" else "cpu"):
        warnings.simplefilter("ignore")
        if family == "clip":
            clip = build_clip(backbone)
            size = clip.config.vision.image_size
        else:  # SimVTP's VideoMAE joint trunk, at its own default architecture and clip length
            from modules.videomae import trunk_from_args  # start-up

            args.clip_init, args.videomae_arch = "random", getattr(args, "videomae_arch", None) or "ViT-B-16"
            clip = trunk_from_args(args)
            config = getattr(clip, "config", None)
            size = getattr(getattr(config, "video", config), "image_size", 224)
            frames = args.max_frames = getattr(getattr(config, "video", config), "num_frames", frames)
        model = head_cls(clip, args)
    freeze_clip_layers(model, args.freeze_layer_num)
    trainable, total = count_parameters(model, trainable_only=True), count_parameters(model)
    # Counting FLOPs runs the ops (masks and token positions are data the code branches on), on zero
    # weights: values do not change the count.
    model = model.to_empty(device="cpu").eval().requires_grad_(False)  # no autograd bookkeeping in the count
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.zero_()
    video, video_mask = torch.zeros(1, frames, 3, size, size), torch.ones(1, frames, dtype=torch.long)
    tokenizer = model.tokenizer() or tokenize
    ids, text_mask = tokenizer(["a person is explaining how to cook a meal in a kitchen"], max_words=words)
    features = {}

    def encode_video():
        features["video"] = model.encode_video(video, video_mask)

    def encode_text():
        features["text"] = model.encode_text(ids, text_mask)

    video_gflops, text_gflops = _flops(encode_video), _flops(encode_text)
    pair = None
    if "video" in features and "text" in features:
        pair = _flops(lambda: model.similarity(features["text"], features["video"]))
    return {"method": method, "backbone": backbone if family == "clip" else f"VideoMAE {args.videomae_arch}",
            "frames": frames, "trainable": trainable, "total": total, "video_gflops": video_gflops,
            "text_gflops": text_gflops, "pair_gflops": pair}


def table(rows: list[dict], backbone: str, frames: int, words: int) -> str:
    def g(value):
        return "n/a" if value is None else f"{value:.3f}" if value < 1 else f"{value:.1f}"

    lines = [f"| method | backbone | trainable params | total params | GFLOPs / video | "
             f"GFLOPs / caption ({words} tokens) | GFLOPs / score |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['backbone']}, {r['frames']} frames | {r['trainable'] / 1e6:.2f} M | {r['total'] / 1e6:.2f} M | {g(r['video_gflops'])} "
                     f"| {g(r['text_gflops'])} | {g(r['pair_gflops'])} |")
    return "\n".join(lines) + "\n\nDefault flags of each method; FLOPs count a multiply-add as 2 and only the ops " \
                              "torch.utils.flop_counter knows (matrix products, convolutions, attention: not an " \
                              "LSTM's recurrence); n/a: not countable (python -m tools.zoo)."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.zoo", description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="ViT-B/32")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--words", type=int, default=32)
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered head")
    args = parser.parse_args(argv)
    from modules.heads import list_heads  # start-up

    methods = args.methods or list_heads()
    unknown = sorted(set(methods) - set(list_heads()))
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)}; registered: {', '.join(list_heads())}", file=sys.stderr)
        return 2
    print(table([measure(m, args.backbone, args.frames, args.words) for m in methods], args.backbone, args.frames,
                args.words))
    return 0


if __name__ == "__main__":
    sys.exit(main())
