"""Video captioning: train and/or evaluate a caption decoder on any method head's video side.

    python main_task_caption.py --do_train --datatype msvd --data_path DATA --features_path VIDEOS ...
    torchrun --nproc_per_node 4 main_task_caption.py --do_train --method t2vlp --init_model STAGE2.pt ...

Every flag of main_task_retrieval.py applies (data, video, model, optimisation, the loop), plus the
captioning group (``--beam_size``, ``--length_penalty``, ``--max_gen_len``, ``--decoder_layers``,
``--caption_retrieval_loss_weight``, ``--no_kv_cache``). T2VLP's ``msvd_captioning.py`` command runs as
it is once its paths are given (its flags imply ``--method t2vlp --t2vlp_stage 2``). Model:
``modules/captioning.py``; data, evaluation and metrics: ``engine/caption.py``. Predictions go to
``<output_dir>/captions_<split>.json``; BLEU-4, METEOR, ROUGE-L and CIDEr to metrics.jsonl.
"""
from __future__ import annotations

import sys
from typing import Sequence

import engine.caption  # noqa: F401  (registers the caption task)
from engine.options import build_parser, parse_args
from main_task_retrieval import report_errors
from modules.captioning import add_caption_args
from modules.heads.aliases import t2vlp_downstream_command


def build_caption_parser():
    parser = add_caption_args(build_parser())
    parser.description = "Video captioning with CLIP"
    return parser


def get_args(argv: Sequence[str] | None = None):
    """The parsed flags (``--config FILE.yaml`` first, then the command line on top), task = caption."""
    parser = build_caption_parser()
    args = parse_args(t2vlp_downstream_command(sys.argv[1:] if argv is None else argv, parser.get_default("lr")),
                      parser)
    args.task = "caption"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return report_errors(get_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
