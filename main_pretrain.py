"""Video-text pre-training: pre-train a method head, evaluating zero-shot retrieval after every epoch.

    python main_pretrain.py --do_pretrain --method hmmc --datatype webdataset --train_shards "shards/{000000..000099}.tar" \
        --eval_datatype msrvtt --eval_data_path data/msrvtt --output_dir ckpts/pretrain ...
    torchrun --nproc_per_node 8 main_pretrain.py --config configs/hmmc_pretrain.yaml ...

The corpus is any registered dataset of (video, caption) pairs (``--datatype``/``--data_path``) or
WebDataset shards (``preprocess/make_shards.py``). The loop, checkpoints, ``--resume`` and precision
modes are the same engine as ``main_task_retrieval.py``; the head owns what a pre-training step
computes. ``main_task_retrieval.py --init_model`` then fine-tunes from the checkpoint.
"""
from __future__ import annotations

import sys
from typing import Sequence

from engine.options import add_pretrain_args, build_parser, parse_args
from main_task_retrieval import report_errors


def get_args(argv: Sequence[str] | None = None):
    """The parsed flags (``--config FILE.yaml`` first, then the command line on top)."""
    return parse_args(argv, add_pretrain_args(build_parser()))


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args(argv)
    if not (args.do_pretrain or args.do_eval):
        print("error: nothing to do: pass --do_pretrain (and/or --do_eval for zero-shot evaluation)", file=sys.stderr)
        return 2
    return report_errors(args, argv)


if __name__ == "__main__":
    sys.exit(main())
