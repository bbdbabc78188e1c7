"""Video question answering (MSRVTT-QA, MSVD-QA): train and/or evaluate a QA model on any method head.

    python main_task_qa.py --do_train --datatype msrvtt_qa --data_path QA_DIR --features_path VIDEOS ...
    torchrun --nproc_per_node 4 main_task_qa.py --do_train --method t2vlp --init_model STAGE2.pt ...

Every flag of main_task_retrieval.py applies, plus the QA group (``--qa_head``, ``--qa_retrieval_weight``,
the question files); T2VLP's ``main_task_qa_msrvtt.py`` flags (``--msrvtt_qa_train_json`` ...) are
accepted through ``modules/heads/aliases.py``'s table. The model (``modules/qa.py``), the data
(``dataloaders/datasets/qa.py``) and the task (``engine/qa.py``) run in the engine's one loop: selection
on validation accuracy, the test accuracy reported, predictions written per question.
"""
from __future__ import annotations

import sys
from typing import Sequence

from engine.options import build_parser, parse_args
from engine.qa import add_qa_args  # (importing engine.qa registers the QA task)
from main_task_retrieval import report_errors
from modules.heads.aliases import T2VLP_QA_FLAGS, apply_flag_aliases, t2vlp_downstream_command


def get_args(argv: Sequence[str] | None = None):
    """The parsed flags (``--config FILE.yaml`` first, the command line on top), ``task = "qa"``."""
    parser = add_qa_args(build_parser())
    tokens = t2vlp_downstream_command(sys.argv[1:] if argv is None else argv, parser.get_default("lr"))
    args = parse_args(apply_flag_aliases(tokens, T2VLP_QA_FLAGS), parser)
    args.task = "qa"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return report_errors(get_args(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
