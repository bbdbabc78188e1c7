"""What differs between the entry scripts' tasks: the model, the data, the evaluation and the metric
that selects the kept epoch. The loop (engine/trainer.py) is the same for all of them.

``main_task_retrieval.py`` and ``main_pretrain.py`` run :class:`RetrievalTask`; ``main_task_caption.py``
and ``main_task_qa.py`` import ``engine.caption`` / ``engine.qa`` (each registers its task with
:func:`register_task`) and set ``args.task`` to ``"caption"`` / ``"qa"``.
A task's ``evaluate`` returns, on rank 0, an object with ``metrics`` (a flat dict of floats) and
``table`` (text for the log); None on the other ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from dataloaders import build_parser_for, selection_rule
from engine.distributed import DistEnv
from engine.evaluate import check_query_subsets, evaluate_split, qb_norm_inputs
from engine.train_data import build_split, build_train_data
from modules import build_model

_TASKS: dict[str, Callable[[], "Task"]] = {}


def register_task(name: str):
    def add(cls):
        _TASKS[name] = cls
        cls.name = name
        return cls

    return add


def get_task(args) -> "Task":
    """The task ``args.task`` names (default retrieval). Caption and QA register when their modules are
    imported (``engine.caption``, ``engine.qa``: their entry scripts do), so retrieval's start-up never
    loads them and this registry never imports a task back."""
    name = getattr(args, "task", None) or "retrieval"
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(sorted(_TASKS))} (a task registers when "
                         "its module is imported: engine.caption, engine.qa)")
    return _TASKS[name]()


@dataclass
class EvalContext:
    """What an evaluation may need besides the split: the training split (QB-Norm's bank), the
    validation split, and why it runs ("select": the selection split after an epoch, "report": the
    reported test numbers, "epoch": an unselected per-epoch test, "eval": evaluation only)."""
    role: str = "report"
    train_set: Any = None
    val_set: Any = None
    output_dir: Any = None
    extra: dict = field(default_factory=dict)


class Task:
    name = "task"
    score_key = ""  # the metric (higher is better) that picks the kept epoch

    def build_model(self, args):
        return build_model(args)

    def selection_rule(self, args):
        return selection_rule(args)

    def has_split(self, args, split: str) -> bool:
        return build_parser_for(args).has_split(split)

    def build_train_data(self, args, env: DistEnv, tokenizer=None):
        return build_train_data(args, env, tokenizer)

    def build_split(self, args, split: str, env: DistEnv, tokenizer=None):
        return build_split(args, split, env, tokenizer)

    def check(self, args, rule, training: bool, eval_sets) -> None:
        """Flag combinations that could only fail after training: one ValueError line before any work."""

    def evaluate(self, model, dataset, args, env: DistEnv, context: EvalContext):
        raise NotImplementedError


@register_task("retrieval")
class RetrievalTask(Task):
    score_key = "t2v/R1"

    def check(self, args, rule, training: bool, eval_sets) -> None:
        if args.qb_norm and getattr(args, "do_pretrain", False):
            raise ValueError("--qb_norm needs the evaluation benchmark's training captions and validation split: "
                             "use it when fine-tuning or evaluating with main_task_retrieval.py")
        if args.qb_norm and rule.split != "val" and not self.has_split(args, "val"):
            raise ValueError(f"--qb_norm chooses its beta and k on a validation split, and {args.datatype} has none: "
                             "add --val_from_train N (hold out N training videos) or drop --qb_norm")
        check_query_subsets([s for s in eval_sets if s is not None], args)

    def evaluate(self, model, dataset, args, env: DistEnv, context: EvalContext):
        if context.role == "epoch":
            return evaluate_split(model, dataset, args, env)
        if context.role == "select" and dataset.split == "val":  # QB-Norm's beta and k chosen on this very split
            return evaluate_split(model, dataset, args, env, qb_norm_bank_set=context.train_set)
        train_set, val_set = context.train_set, context.val_set
        if context.role == "eval" and args.qb_norm:
            train_set = self.build_split(args, "train", env, model.tokenizer())
            val_set = self.build_split(args, "val", env, model.tokenizer())
        qb_norm = qb_norm_inputs(model, args, env, train_set, val_set)
        precision = args.precision if context.role == "eval" and args.precision != "fp16_weights" else "fp32"
        return evaluate_split(model, dataset, args, env, precision, qb_norm=qb_norm)
