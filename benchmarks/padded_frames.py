"""How much --padded_frames changes a method's scores on one short clip: the default (padded slots hidden)
against a parity fill (the clip's own frames in every slot, read by the model as real ones).

    python benchmarks/padded_frames.py --config configs/dgl_msrvtt.yaml --clip_init random \
        --padded_frames last_frame --frames 5
    python benchmarks/padded_frames.py --config configs/hmmc_msrvtt.yaml --clip_init random \
        --hmmc_fixed_logit_scale --padded_frames stretch --frames 5

Any training/evaluation flag or ``--config`` applies (``--init_model`` for trained weights). The clip is ``--video PATH``,
or a synthetic one of ``--frames`` frames (a bar moving over a plain colour), sampled at
``--eval_sample_mode`` into ``--max_frames`` slots. Printed: the cosine between the two video embeddings,
and over a few captions the largest change of the score (cosine units) and of the logit (score x the
model's logit scale), and whether the captions' order changed.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders.video import VideoClipLoader  # noqa: E402
from engine.options import parse_args  # noqa: E402
from modules.clip import tokenize  # noqa: E402
from modules.factory import build_model  # noqa: E402
from preprocess.synthetic import gradient_frames, write_video  # noqa: E402

CAPTIONS = ["a white bar moves from left to right", "a bright stripe slides across a coloured screen",
            "a man is cooking in a kitchen", "a cartoon of a dog playing", "people are dancing on a stage"]


def main(argv=None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--frames", type=int, default=5, help="frames of the synthetic clip")
    own.add_argument("--video", default=None, help="a real clip instead of the synthetic one")
    known, rest = own.parse_known_args(argv)
    args = parse_args(rest)
    if args.padded_frames == "masked":
        print("error: give the parity fill to compare with the default: --padded_frames last_frame or stretch")
        return 2
    torch.manual_seed(args.seed)
    model = build_model(args).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = known.video or write_video(Path(tmp) / "short.mp4",
                                          gradient_frames(known.frames, 256, 256, args.seed), fps=3)
        clips = {}
        for fill in ("masked", args.padded_frames):
            view = copy.copy(args)
            view.padded_frames = fill
            clips[fill] = VideoClipLoader.from_args(view, train=False)(path)
    ids, text_mask = tokenize(CAPTIONS, args.max_words)
    with torch.no_grad():
        text = model.encode_text(ids, text_mask)
        features = {fill: model.encode_video(video[None], mask[None]) for fill, (video, mask) in clips.items()}
        scores = {fill: model.similarity(text, f)[:, 0] for fill, f in features.items()}
    masked, parity = (features[f][0] if isinstance(features[f], tuple) else features[f]
                      for f in ("masked", args.padded_frames))
    change = (scores[args.padded_frames] - scores["masked"]).abs()
    real = int(clips["masked"][1].sum())
    print(f"{args.method or args.sim_header}: {real} real frames in {args.max_frames} slots, "
          f"masked vs --padded_frames {args.padded_frames}")
    print(f"video embedding cosine {float(F.cosine_similarity(masked, parity)):.6f}")
    print(f"largest score change {float(change.max()):.4g} (cosine units), largest logit change "
          f"{float(change.max()) * model.score_scale():.4g} (logit scale {model.score_scale():.4g})")
    same = scores["masked"].argsort(descending=True).tolist() == scores[args.padded_frames].argsort(descending=True).tolist()
    print(f"caption order {'unchanged' if same else 'changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
