"""Text-video retrieval: train and/or evaluate one method on one benchmark.

    python main_task_retrieval.py --do_train --datatype msrvtt --data_path DATA --features_path VIDEOS ...
    torchrun --nproc_per_node 4 main_task_retrieval.py --config configs/NAME.yaml --do_train

Flags follow CLIP4Clip's names (``--help`` lists them); ``--config FILE.yaml`` sets any of them and the
command line wins. Model, data, the loop and evaluation live in ``modules/``, ``dataloaders/`` and
``engine/``; this file only parses flags and reports errors as one line.
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from dataloaders import DataError
from engine.checkpoint import adopt_for_evaluation
from engine.options import parse_args
from engine.preemption import Preempted
from engine.trainer import run
from modules.clip import CheckpointError


def get_args(argv: Sequence[str] | None = None):
    """The parsed flags (``--config FILE.yaml`` first, then the command line on top)."""
    return parse_args(argv)


def report_errors(args, argv: Sequence[str] | None = None) -> int:
    """Run the engine; problems with the user's data, weights or flags are one line, no traceback wall.
    ``--do_eval --init_model`` of a self-contained checkpoint takes the model from it (``argv``: the
    command line, to tell explicit flags from defaults)."""
    try:
        adopt_for_evaluation(args, argv)
        run(args)
    except Preempted as stopped:
        print(f"preempted: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C (the first one checkpoints: engine.preemption)
        print("interrupted: a second Ctrl-C stopped the run at once, without a checkpoint; --resume auto continues "
              "from the last checkpoint_last.pt, if any", file=sys.stderr)
        return 130
    except (DataError, CheckpointError, FloatingPointError, ValueError) as error:
        logging.getLogger("univtr").debug("details", exc_info=True)
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


def one_line(error: Exception) -> str:
    """The message of ``error``; for one raised in a DataLoader worker (re-raised as "Caught DataError in
    DataLoader worker process 0. Original Traceback ...") the original message only."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return text


def main(argv: Sequence[str] | None = None) -> int:
    return report_errors(get_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
