"""The question-answering task (``main_task_qa.py``): the model of ``modules/qa.py`` on the datasets of
``dataloaders/datasets/qa.py``, selected on validation accuracy, reported on test.

Evaluation decodes every video once (videos sharded over ranks), answers all of its questions from its
visual tokens, gathers the predictions on rank 0 and scores them: accuracy over every question of the
split (an answer outside the training vocabulary is wrong, never dropped) and per answer type, in
percent. Each question's prediction is written to ``<output_dir>/qa_predictions_<split>.jsonl``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from dataloaders import build_parser_for
from engine.distributed import DistEnv
from engine.evaluate import EvalResult, incomplete_note, shard_loader, to_device
from engine.step import autocast_context
from engine.tasks import EvalContext, Task, register_task
from modules.clip import CheckpointError
from modules.clip.tokenizer import get_tokenizer
from modules.qa import QA_HEADS, QAModel
from modules.task_model import build_task_model

log = logging.getLogger("univtr")


def add_qa_args(parser):
    g = parser.add_argument_group("question answering (main_task_qa.py)")
    g.add_argument("--qa_train_json", default=None, help="training questions (default: train.jsonl in --data_path)")
    g.add_argument("--qa_val_json", default=None, help="validation questions, select the kept epoch (default val.jsonl)")
    g.add_argument("--qa_test_json", default=None, help="test questions, the reported numbers (default test.jsonl)")
    g.add_argument("--qa_ans2label_json", default=None,
                   help="{answer: label} of the answer vocabulary (default train_ans2label.json)")
    g.add_argument("--qa_head", choices=QA_HEADS, default="classifier",
                   help="classifier: an MLP over the fused output to the answer vocabulary (answers outside it count "
                        "as wrong); first_token: T2VLP's head, the answer's first BPE token through the tied "
                        "vocabulary head (multi-token answers truncated; parity)")
    g.add_argument("--qa_retrieval_weight", type=float, default=0.0,
                   help="weight of the head's own retrieval loss on (question + answer, video) added to the answer CE "
                        "(T2VLP: 1; default 0: the usual protocol, and no text-tower pass for the answers)")
    parser.set_defaults(datatype="msrvtt_qa")
    return parser


def accuracy_by_type(types: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """Accuracy in percent over every question and per answer type, with the counts."""
    metrics = {"accuracy": 100.0 * sum(correct) / max(len(correct), 1), "num_questions": float(len(correct))}
    for kind in sorted(set(types)):
        hits = [c for t, c in zip(types, correct) if t == kind]
        metrics[f"accuracy/{kind}"] = 100.0 * sum(hits) / len(hits)
        metrics[f"num_questions/{kind}"] = float(len(hits))
    return metrics


@torch.no_grad()
def predict_split(model, dataset, args, env: DistEnv) -> dict[int, int] | None:
    """{question index: predicted id (answer class or token)} on rank 0, None elsewhere. Each rank
    decodes its share of the videos once and answers all their questions."""
    questions_of: list[list[int]] = [[] for _ in range(dataset.num_videos)]
    for question, video in enumerate(dataset.caption_to_video.tolist()):
        questions_of[video].append(question)
    loader = shard_loader(dataset.video_dataset(), args, env)
    precision = args.precision if args.precision.startswith("amp") else "fp32"
    predictions: dict[int, int] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            batch = to_device(batch, env.device)
            with autocast_context(precision, env.device):
                visual, valid = model.head.visual_tokens(batch["video"], batch["video_mask"])
            rows = [(row, q) for row, v in enumerate(batch["video_index"].tolist()) for q in questions_of[v]]
            for start in range(0, len(rows), args.batch_size_val):
                part = rows[start:start + args.batch_size_val]
                index = torch.tensor([row for row, _ in part], device=env.device)
                text = [dataset.tokenize(dataset.captions[q]) for _, q in part]
                ids = torch.stack([t[0] for t in text]).to(env.device)
                mask = torch.stack([t[1] for t in text]).to(env.device)
                with autocast_context(precision, env.device):
                    logits = model.answer_logits(visual[index], valid[index], ids, mask)
                predictions.update(zip((q for _, q in part), logits.argmax(-1).tolist()))
    finally:
        model.train(was_training)
    if env.distributed:
        parts = [None] * env.world_size
        dist.all_gather_object(parts, predictions)
        predictions = {q: p for part in parts for q, p in part.items()}
    return predictions if env.is_main else None


def prediction_rows(model, dataset, predictions: dict[int, int]) -> list[dict]:
    """One row per question: id, video, question, answer, type, prediction (text) and correct."""
    if len(predictions) != dataset.num_questions:
        raise RuntimeError(f"{len(predictions)} predictions for the {dataset.num_questions} questions")
    decode = get_tokenizer().decode
    rows = []
    for index, question in enumerate(dataset.questions):
        predicted = predictions[index]
        if model.kind == "classifier":  # label -1 (outside the vocabulary) never equals a prediction
            text, correct = model.answers[predicted], predicted == question["label"]
        else:
            text, correct = decode([predicted]).strip(), predicted == dataset.answer_token(question["answer"])
        rows.append({"question_id": question["question_id"], "video_id": question["video_id"],
                     "question": dataset.captions[index], "answer": question["answer"],
                     "answer_type": question["answer_type"], "prediction": text, "correct": bool(correct)})
    return rows


def qa_table(split: str, metrics: dict[str, float], outside: int, kind: str) -> str:
    note = (f"{outside} answers outside the training vocabulary count as wrong" if kind == "classifier"
            else "first BPE token of the answer (T2VLP's --qa_head first_token)")
    lines = [f"{split}: {int(metrics['num_questions'])} questions; {note}",
             f"{'accuracy':<16}{metrics['accuracy']:7.2f}"]
    for key in sorted(k for k in metrics if k.startswith("accuracy/")):
        kind_name = key.split("/", 1)[1]
        lines.append(f"  {kind_name:<14}{metrics[key]:7.2f}  ({int(metrics['num_questions/' + kind_name])} questions)")
    return "\n".join(lines)


@register_task("qa")
class QATask(Task):
    score_key = "accuracy"

    def build_model(self, args):
        parser = build_parser_for(args)
        answers, digest = parser.answer_vocabulary(), parser.vocabulary_digest()
        model = build_task_model(args, QAModel, answers=len(answers), digest=digest)
        if model.kind == "classifier" and bytes(model.answer_digest.tolist()) != digest:
            raise CheckpointError(f"{args.init_model}: trained with another answer vocabulary than this data's "
                                  "train_ans2label.json (the classes would not mean the same answers)")
        model.answers = answers
        return model

    def evaluate(self, model, dataset, args, env: DistEnv, context: EvalContext):
        predictions = predict_split(model, dataset, args, env)
        if predictions is None:
            return None
        rows = prediction_rows(model, dataset, predictions)
        metrics = accuracy_by_type([r["answer_type"] for r in rows], [r["correct"] for r in rows])
        outside = sum(q["label"] < 0 for q in dataset.questions)
        metrics["outside_vocabulary"] = float(outside)
        output_dir = context.output_dir or args.output_dir
        if output_dir:
            path = Path(output_dir) / f"qa_predictions_{dataset.split}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        incomplete = incomplete_note(dataset)
        table = qa_table(dataset.split, metrics, outside, model.kind)
        return EvalResult(metrics, f"WARNING: {incomplete}\n{table}" if incomplete else table, incomplete=incomplete)
