"""Flags of the seed repositories' README commands, rewritten onto ours before parsing: one table per seed.

UMP (X-Pool's framework)::

    python main_task_retrieval.py --method ump --exp_name run1 --videos_dir V --batch_size 32 \
        --noclip_lr 3e-5 --transformer_dropout 0.3 --dataset_name MSRVTT --msrvtt_train_file 9k ...

becomes ``--output_dir outputs/run1 --features_path V --lr 3e-5 --ump_pool_dropout 0.3 --datatype msrvtt
--train_csv MSRVTT_train.9k.csv``. HMMC (CLIP4Clip's framework, launched with
``python -m torch.distributed.launch``): ``--dataset msrvtt`` is ``--datatype msrvtt``, ``--frame_sample``
picks our ``--sample_mode``, the launcher's ``--local_rank``/``--local-rank`` and ``--task retrieval``
are dropped (the rank comes from the environment), and HMMC's own flags imply ``--method hmmc``. Both
``--flag value`` and ``--flag=value`` are accepted; every other token passes through unchanged.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

Rewrite = Callable[[str], "str | None"]  # None: drop the flag and its value

UMP_FLAGS: dict[str, tuple[str, Rewrite]] = {
    "--noclip_lr": ("--lr", str),  # X-Pool's rate for everything that is not CLIP = our new-module rate
    "--transformer_dropout": ("--ump_pool_dropout", str),  # only its text-conditioned pooler uses it
    "--videos_dir": ("--features_path", str),
    "--exp_name": ("--output_dir", lambda name: f"outputs/{name}"),
    "--dataset_name": ("--datatype", str.lower),  # MSRVTT, DiDeMo, LSMDC -> our dataset names
    "--msrvtt_train_file": ("--train_csv", lambda split: f"MSRVTT_train.{split}.csv"),  # 9k / 7k
    "--num_frames": ("--max_frames", str),
}


def _task(value: str) -> None:
    if value != "retrieval":
        print(f"error: --task {value}: this entry point does retrieval; captioning and QA have their own scripts",
              file=sys.stderr)
        raise SystemExit(2)
    return None


# HMMC's --frame_sample: 'random' is a sorted random subset of the stored frames, 'uniform_random' one
# random frame per equal segment; our 'rand' is the latter for both (see docs).
HMMC_FRAME_SAMPLE = {"uniform": "uniform", "random": "rand", "uniform_random": "rand"}

HMMC_FLAGS: dict[str, tuple[str, Rewrite]] = {
    "--dataset": ("--datatype", str.lower),  # chvtt / msrvtt / vatex
    "--frame_sample": ("--sample_mode", lambda v: HMMC_FRAME_SAMPLE.get(v, v)),
    "--local_rank": ("", lambda v: None),  # torch.distributed.launch; the rank is read from the environment
    "--local-rank": ("", lambda v: None),
    "--task": ("", _task),
}
# Flags only HMMC has: a command that uses any of them and names no method means --method hmmc.
HMMC_IMPLIED = ("--use_temp", "--use_frame_fea", "--top_frames", "--frame_sample", "--contrast_num_negative",
                "--contrast_momentum")

SEED_FLAGS: dict[str, tuple[str, Rewrite]] = {**UMP_FLAGS, **HMMC_FLAGS}
IMPLIED_METHODS: dict[str, Sequence[str]] = {"hmmc": HMMC_IMPLIED}


def apply_flag_aliases(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    tokens = list(argv)
    flags = {token.partition("=")[0] for token in tokens}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag, has_value, value = token.partition("=")
        if flag in SEED_FLAGS:
            ours, rewrite = SEED_FLAGS[flag]
            if not has_value:
                if i + 1 >= len(tokens):
                    print(f"error: {flag} needs a value", file=sys.stderr)
                    raise SystemExit(2)  # argparse's code for a usage error
                i += 1
                value = tokens[i]
            rewritten = rewrite(value)
            if rewritten is not None:
                out += [ours, rewritten]
        else:
            out.append(token)
        i += 1
    if "--method" not in flags:
        for method, implying in IMPLIED_METHODS.items():
            if flags & set(implying):
                out += ["--method", method]
                break
    return out
