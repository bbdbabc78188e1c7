"""The captioning task of ``main_task_caption.py``: the engine's loop trains a ``CaptionModel``
(``modules/captioning.py``) on a benchmark's (caption, video) training pairs; evaluation decodes one
caption per video of the split (sharded over ranks), scores it against every reference caption of the
video (``modules/caption_metrics.py``: BLEU-4, METEOR, ROUGE-L, CIDEr) and writes the predictions to
``<output_dir>/captions_<split>.json``. CIDEr picks the kept epoch.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from dataloaders import build_parser_for
from engine.distributed import DistEnv
from engine.evaluate import EvalResult, incomplete_note, shard_loader, to_device
from engine.step import autocast_context
from engine.tasks import EvalContext, Task, register_task
from modules.caption_metrics import NO_JAVA, check_installed, java_available, score_captions
from modules.captioning import CaptionModel
from modules.clip.tokenizer import get_tokenizer
from modules.task_model import build_task_model

log = logging.getLogger("univtr")

def max_gen_len(args) -> int:
    return args.max_gen_len or args.max_words - 1


@register_task("caption")
class CaptionTask(Task):
    score_key = "CIDEr"

    def build_model(self, args):
        return build_task_model(args, CaptionModel)

    def build_split(self, args, split: str, env: DistEnv, tokenizer=None):
        dataset = super().build_split(args, split, env, tokenizer)
        if split != "train":
            dataset.references = build_parser_for(args).reference_captions(split, dataset.records)
        return dataset

    def check(self, args, rule, training: bool, eval_sets) -> None:
        check_installed()
        if args.beam_size < 1 or max_gen_len(args) < 1:
            raise ValueError(f"--beam_size ({args.beam_size}) and --max_gen_len ({max_gen_len(args)}) must be >= 1")
        if not java_available():
            log.warning(NO_JAVA)

    @torch.no_grad()
    def evaluate(self, model, dataset, args, env: DistEnv, context: EvalContext):
        precision = args.precision if context.role == "eval" and args.precision != "fp16_weights" else "fp32"
        was_training = model.training
        model.eval()
        try:
            decoded = decode_sharded(model, dataset, args, env, precision)
        finally:
            model.train(was_training)
        if not env.is_main:
            return None
        return score_split(dataset, decoded, args, context.output_dir)


def decode_sharded(model, dataset, args, env: DistEnv, precision: str) -> dict[int, list[int]]:
    """{video index: caption token ids} of every video of ``dataset``, each rank decoding its share
    (on rank 0 all of them; on the others their own)."""
    import torch.distributed as dist

    loader = shard_loader(dataset.video_dataset(), args, env)
    decoded: dict[int, list[int]] = {}
    for batch in loader:
        batch = to_device(batch, env.device)
        with autocast_context(precision, env.device):
            tokens = model.generate(batch["video"], batch["video_mask"], args.beam_size, max_gen_len(args),
                                    args.length_penalty, use_cache=not args.no_kv_cache)
        decoded.update(zip(batch["video_index"].tolist(), tokens))
    if env.distributed:
        parts: list = [None] * env.world_size
        dist.all_gather_object(parts, decoded)
        for part in parts:
            decoded.update(part)
    return decoded


def score_split(dataset, decoded: dict[int, list[int]], args, output_dir):
    """The split's metrics and table (an ``EvalResult``); the captions written to ``output_dir``."""
    tokenizer = get_tokenizer()
    captions = {i: tokenizer.decode(decoded[i]) for i in range(dataset.num_videos)}
    scores = score_captions({str(i): c for i, c in captions.items()},
                            {str(i): refs for i, refs in enumerate(dataset.references)})
    if output_dir is not None:
        rows = [{"video_id": r.video_id, "caption": captions[i]} for i, r in enumerate(dataset.records)]
        path = Path(output_dir) / f"captions_{dataset.split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1) + "\n")
    metrics = {**scores.metrics, "num_videos": float(dataset.num_videos),
               "num_references": float(sum(map(len, dataset.references)))}
    incomplete = incomplete_note(dataset)
    decoding = (f"beam {args.beam_size}, length penalty {args.length_penalty:g}" if args.beam_size > 1 else "greedy")
    notes = [f"{dataset.split}: {dataset.num_videos} videos, {int(metrics['num_references'])} reference captions; "
             f"{decoding}, at most {max_gen_len(args)} tokens"]
    notes += [f"WARNING: {incomplete}; not comparable with published numbers"] if incomplete else []
    notes += [f"WARNING: {scores.note}"] if scores.note else []
    names = [k for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr") if k in scores.metrics]
    table = "\n".join([*notes, "  ".join(f"{k:>8}" for k in names), "  ".join(f"{metrics[k]:8.2f}" for k in names)])
    return EvalResult(metrics, table, incomplete=incomplete)
