"""Pictures of SimVTP's masked autoencoding (SimVTP's ``vis.sh``): one PNG per clip.

    python -m tools.visualize_mae --checkpoint ckpts/simvtp_pretrain/model_final.pt \\
        --videos a.mp4 b.mp4 --captions "a man is cooking" "a dog runs on grass" [--out DIR]

The PNGs and summary.json go to --out (default: mae_pictures/ beside the checkpoint, i.e. in its run's
folder). Rows of the picture, each labelled on its left: the input frames, the same frames with the masked
tubes greyed out, and the reconstruction (visible tubes as given, masked tubes predicted by the pixel decoder, each predicted tube
de-standardised with its own input tube's mean and std, as MAE's pictures do). Below them the caption,
the caption as the model saw it ([MASK] at the masked words) and the caption with the predicted words
filled in (in brackets).

``--checkpoint``: a pre-training checkpoint of main_pretrain.py (model_final.pt, model_best.pt: the model
is rebuilt from it alone), or SimVTP's released pre-training .pth (then ``--bert_path`` gives the
vocabulary). Masks are drawn from ``--seed``; ``--mask_ratio`` / ``--text_mask_ratio`` override the model's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def load_pretraining_model(checkpoint: str, bert_path: str | None = None, device: str = "cpu"):
    """(SimVTP pre-training head in eval mode, its flags) from our checkpoint or SimVTP's .pth."""
    from engine.checkpoint import load_model, read_model_record  # start-up

    overrides = {"simvtp_stage": "pretrain"} | ({"bert_path": bert_path} if bert_path else {})
    if read_model_record(checkpoint) is not None:
        model, args = load_model(checkpoint, device, **overrides)
    else:
        from engine.options import build_parser  # start-up
        from modules import build_model  # start-up

        args = build_parser().parse_args(["--method", "simvtp", "--videomae_checkpoint", checkpoint])
        for key, value in overrides.items():
            setattr(args, key, value)
        model = build_model(args).to(device).eval()
    if getattr(model, "head_name", None) != "simvtp" or not hasattr(model, "decoder"):
        raise ValueError(f"{checkpoint}: not a SimVTP pre-training model (it has no pixel decoder)")
    return model, args


@torch.no_grad()
def reconstruct(model, video: torch.Tensor, video_mask: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor,
                generator: torch.Generator) -> dict:
    """One clip through the joint pass: masks, reconstructed pixels in [0, 1], masked and predicted ids."""
    from modules.components.pixels import patchify, tube_statistics, unnormalise, unpatchify  # start-up
    from modules.videomae.transformer import complete_tubelets  # start-up

    config = model.clip.config
    video, video_mask = complete_tubelets(video, video_mask, config.tubelet_size)
    frames = video.shape[1]
    masked = model.tube_mask(1, frames // config.tubelet_size, generator=generator)
    corrupted = model.text_masker(ids, text_mask, generator=generator)
    out = model.masked_autoencode(video, video_mask, masked, corrupted.ids, text_mask.bool())
    pixels = unnormalise(video, model.statistics).clamp(0, 1)
    tubes = patchify(pixels, config.tubelet_size, config.patch_size)  # (1, N, P, 3)
    predicted = out["predicted"].float().view(1, -1, tubes.shape[2], 3)
    if model.normalise_targets:
        mean, std = tube_statistics(tubes)
        index = out["masked_index"][..., None, None].expand(-1, -1, 1, 3)
        predicted = predicted * std.gather(1, index) + mean.gather(1, index)
    rebuilt, greyed = tubes.clone(), tubes.clone()
    rows = out["masked_index"][..., None, None].expand(-1, -1, tubes.shape[2], 3)
    rebuilt.scatter_(1, rows, predicted.clamp(0, 1))
    greyed.scatter_(1, rows, torch.full_like(predicted, 0.5))
    size = config.image_size
    logits = model.mlm_head(out["text_out"][corrupted.selected])
    filled = corrupted.ids.clone()
    filled[corrupted.selected] = logits.argmax(-1)
    return {"input": pixels[0], "masked": unpatchify(greyed, frames, size, config.tubelet_size, config.patch_size)[0],
            "reconstruction": unpatchify(rebuilt, frames, size, config.tubelet_size, config.patch_size)[0],
            "mask": masked[0], "ids": ids[0], "masked_ids": corrupted.ids[0], "predicted_ids": filled[0],
            "selected": corrupted.selected[0], "real_frames": int(video_mask[0].sum())}


def caption_lines(model, result: dict, caption: str) -> list[str]:
    vocab = model.vocabulary
    length = int(result["ids"].ne(vocab.pad_id).sum())
    special = set(vocab.special_ids) - {vocab.mask_id}
    shown = [i for i in range(length) if int(result["ids"][i]) not in special]
    original = vocab.decode([int(result["ids"][i]) for i in shown])
    masked = vocab.decode([int(result["masked_ids"][i]) for i in shown])
    predicted = vocab.decode([int(result["predicted_ids"][i]) for i in shown])
    filled = [f"[{p}]" if bool(result["selected"][i]) else w for i, w, p in zip(shown, original, predicted)]
    return [f"caption:   {caption}", f"masked:    {' '.join(masked)}", f"predicted: {' '.join(filled)}"]


def row_labels(result: dict) -> list[str]:
    masked, tubes = int(result["mask"].sum()), int(result["mask"].numel())
    return ["input", f"masked: {masked} of {tubes} tubes", "reconstruction"]


def text_font(size: int = 12):
    """A monospaced TrueType font (matplotlib's DejaVu Sans Mono): Pillow's default font draws a space
    a third as wide as a letter, which runs the words of a caption together ("afterwardsa")."""
    from matplotlib import font_manager
    from PIL import ImageFont

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans Mono"))
    return ImageFont.truetype(path, size)


def picture(result: dict, lines: list[str], scale: int):
    """One PNG: 3 labelled rows (input, masked, reconstruction) x frames, the caption lines below, the
    canvas as wide as its longest text."""
    from PIL import Image, ImageDraw

    rows = [result["input"], result["masked"], result["reconstruction"]]
    frames = result["real_frames"]
    tiles = [[Image.fromarray((row[t].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for t in range(frames)]
             for row in rows]
    font, labels = text_font(), row_labels(result)
    side = tiles[0][0].width * scale
    gap, line_height = 4, 16
    left = int(max(font.getlength(label) for label in labels)) + 2 * gap  # the row labels' column
    width = max(left + frames * (side + gap), int(max(font.getlength(line) for line in lines)) + 2 * gap)
    canvas = Image.new("RGB", (width, 3 * (side + gap) + gap + line_height * len(lines) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        top = gap + r * (side + gap)
        draw.text((gap, top + side // 2), labels[r], fill="black", font=font, anchor="lm")
        for t, tile in enumerate(row):
            canvas.paste(tile.resize((side, side), Image.NEAREST), (left + t * (side + gap), top))
    for i, line in enumerate(lines):
        draw.text((gap, 3 * (side + gap) + gap + line_height * i), line, fill="black", font=font)
    return canvas


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--videos", nargs="+", required=True)
    parser.add_argument("--captions", nargs="*", default=None, help="one per video (default: none)")
    parser.add_argument("--out", "--output_dir", dest="output_dir", default=None,
                        help="folder of the PNGs and summary.json (default: mae_pictures/ beside the checkpoint)")
    parser.add_argument("--bert_path", default=None, help="the vocabulary (SimVTP's .pth, or a moved BERT folder)")
    parser.add_argument("--mask_ratio", type=float, default=None, help="video tube mask ratio (default: the model's)")
    parser.add_argument("--text_mask_ratio", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=0, help="tile magnification (default: up to ~128 px)")
    args = parser.parse_args(argv)
    captions = args.captions or [""] * len(args.videos)
    if len(captions) != len(args.videos):
        print(f"error: {len(args.videos)} videos but {len(captions)} captions", file=sys.stderr)
        return 2
    try:
        model, flags = load_pretraining_model(args.checkpoint, args.bert_path)
    except (ValueError, RuntimeError) as error:  # CheckpointError is a RuntimeError
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.mask_ratio is not None:
        from modules.components.tube_mask import masked_count  # start-up

        model.tube_mask.ratio = args.mask_ratio
        model.tube_mask.num_masked = masked_count(args.mask_ratio, model.tube_mask.positions)
    if args.text_mask_ratio is not None:
        model.text_masker.rate = args.text_mask_ratio
    from dataloaders.video import VideoClipLoader  # start-up

    loader = VideoClipLoader.from_args(flags, train=False)
    tokenize = model.tokenizer() or __import__("modules.clip", fromlist=["tokenize"]).tokenize
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).resolve().parent / "mae_pictures"
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = args.scale or max(1, 128 // model.clip.config.image_size)
    summary = []
    for i, (path, caption) in enumerate(zip(args.videos, captions)):
        video, video_mask = loader(path)
        ids, text_mask = tokenize([caption], getattr(flags, "max_words", 32))
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + i)
        result = reconstruct(model, video[None], video_mask[None], ids, text_mask, generator)
        lines = caption_lines(model, result, caption)
        target = out_dir / f"{i:03d}_{Path(path).stem}.png"
        picture(result, lines, scale).save(target)
        summary.append({"video": str(path), "png": str(target), "lines": lines, "row_labels": row_labels(result),
                        "masked_tubes": int(result["mask"].sum()), "tubes": int(result["mask"].numel())})
        print(target)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
