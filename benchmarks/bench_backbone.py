"""Forward time of UniVTR's CLIP against transformers.CLIPModel on the same weights.

    python benchmarks/bench_backbone.py                 # ViT-B/32, 12 frames + 32 captions, fp32 on CPU
    python benchmarks/bench_backbone.py --device cuda   # also bf16 autocast on a GPU

Both models get identical random weights (ours exported through the Hugging Face name mapping), the
outputs are checked equal before timing, and each figure is the median of --repeats runs taken
alternately with the other model's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.clip import build_clip, tokenize  # noqa: E402
from modules.clip.loading import to_hf  # noqa: E402


def hf_twin(model):
    import transformers

    cfg = model.config
    hf_cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=cfg.text.width, intermediate_size=int(cfg.text.width * cfg.text.mlp_ratio),
                         num_hidden_layers=cfg.text.layers, num_attention_heads=cfg.text.heads,
                         max_position_embeddings=cfg.text.context_length, vocab_size=cfg.text.vocab_size,
                         eos_token_id=49407, bos_token_id=49406, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=cfg.vision.width, intermediate_size=int(cfg.vision.width * cfg.vision.mlp_ratio),
                           num_hidden_layers=cfg.vision.layers, num_attention_heads=cfg.vision.heads,
                           image_size=cfg.vision.image_size, patch_size=cfg.vision.patch_size, hidden_act="quick_gelu"),
        projection_dim=cfg.embed_dim,
    )
    hf = transformers.CLIPModel(hf_cfg)
    hf.load_state_dict(to_hf(model.state_dict()), strict=False)
    return hf


def features(out):
    return out if torch.is_tensor(out) else out.pooler_output


def timed_pair(fn_a, fn_b, repeats, device):
    """Median seconds of two functions measured alternately, so load changes on a shared machine hit
    both equally."""
    def once(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once(fn_a), once(fn_b)  # warm-up (allocator, kernels, caches)
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(once(fn_a))
        times_b.append(once(fn_b))
    return statistics.median(times_a), statistics.median(times_b)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B/32")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--captions", type=int, default=32)
    parser.add_argument("--max_words", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    ours = build_clip(args.arch).eval()
    theirs = hf_twin(ours).eval()
    ours.to(device), theirs.to(device)
    size = ours.image_size
    images = torch.randn(args.frames, 3, size, size, device=device)
    words = "a man is playing a guitar on a stage while people watch and dance in the rain at night".split()
    ids, mask = tokenize([" ".join(words[: 3 + i % len(words)]) for i in range(args.captions)], args.max_words)
    ids, mask = ids.to(device), mask.to(device)

    settings = [("fp32", nullcontext)]
    if device.type == "cuda":
        settings.append(("bf16 autocast", lambda: torch.autocast("cuda", dtype=torch.bfloat16)))
    rows = []
    with torch.inference_mode():
        ours_out = (ours.encode_image(images), ours.encode_text(ids, mask))
        theirs_out = (features(theirs.get_image_features(pixel_values=images)),
                      features(theirs.get_text_features(input_ids=ids, attention_mask=mask)))
        max_diff = max((a - b).abs().max().item() for a, b in zip(ours_out, theirs_out))
        for label, ctx in settings:
            def run_ours():
                with ctx():
                    ours.encode_image(images), ours.encode_text(ids, mask)

            def run_theirs():
                with ctx():
                    theirs.get_image_features(pixel_values=images)
                    theirs.get_text_features(input_ids=ids, attention_mask=mask)

            t_ours, t_theirs = timed_pair(run_ours, run_theirs, args.repeats, device)
            rows.append((label, t_ours, t_theirs))

    print(f"{args.arch}, {args.frames} frames + {args.captions} captions x {args.max_words} tokens, device {device}, "
          f"torch threads {torch.get_num_threads()}, max |ours - transformers| = {max_diff:.2e}")
    print(f"| precision | UniVTR CLIP (ms) | transformers CLIPModel (ms) | ratio ours/theirs |")
    print(f"|---|---|---|---|")
    for label, t_ours, t_theirs in rows:
        print(f"| {label} | {t_ours * 1e3:.1f} | {t_theirs * 1e3:.1f} | {t_ours / t_theirs:.2f} |")
    return rows


if __name__ == "__main__":
    main()
