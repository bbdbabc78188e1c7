"""Flags of the UMP README command (X-Pool's framework), rewritten onto ours before parsing.

    python main_task_retrieval.py --method ump --exp_name run1 --videos_dir V --batch_size 32 \
        --noclip_lr 3e-5 --transformer_dropout 0.3 --dataset_name MSRVTT --msrvtt_train_file 9k ...

becomes ``--output_dir outputs/run1 --features_path V --lr 3e-5 --ump_pool_dropout 0.3 --datatype msrvtt
--train_csv MSRVTT_train.9k.csv``. Both ``--flag value`` and ``--flag=value`` are accepted; every other
token passes through unchanged (DGL's ``--unified_prompt_layers`` is an ordinary alias of its flag).
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

# their flag -> (our flag, value rewrite)
SEED_FLAGS: dict[str, tuple[str, Callable[[str], str]]] = {
    "--noclip_lr": ("--lr", str),  # X-Pool's rate for everything that is not CLIP = our new-module rate
    "--transformer_dropout": ("--ump_pool_dropout", str),  # only its text-conditioned pooler uses it
    "--videos_dir": ("--features_path", str),
    "--exp_name": ("--output_dir", lambda name: f"outputs/{name}"),
    "--dataset_name": ("--datatype", str.lower),  # MSRVTT, DiDeMo, LSMDC -> our dataset names
    "--msrvtt_train_file": ("--train_csv", lambda split: f"MSRVTT_train.{split}.csv"),  # 9k / 7k
    "--num_frames": ("--max_frames", str),
}


def apply_flag_aliases(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    tokens = list(argv)
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
            out += [ours, rewrite(value)]
        else:
            out.append(token)
        i += 1
    return out
