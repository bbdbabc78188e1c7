"""Video question answering: MSRVTT-QA and MSVD-QA in T2VLP's layout (``--datatype msrvtt_qa`` / ``msvd_qa``).

Files (in --data_path, or named by --qa_train_json / --qa_val_json / --qa_test_json / --qa_ans2label_json,
T2VLP's --msrvtt_qa_* flags): ``train.jsonl``, ``val.jsonl``, ``test.jsonl``, one object per line with
``video_id``, ``question``, ``answer`` and (optional) ``answer_type``; and ``train_ans2label.json``,
{answer: label} with the labels 0..N-1. Videos are ``<video_id>.mp4`` (any common extension) under
--features_path, located, reported and excluded as for retrieval.

Each video becomes one :class:`VideoRecord` whose ``captions`` are its questions (so the retrieval
machinery, missing-video and decode-failure handling included, applies unchanged) and whose
``extra["questions"]`` holds, aligned with them, the id, answer, answer type and label (-1: the answer is
outside the vocabulary) of each. :class:`QADataset` adds them to every item.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from dataloaders.base import DataError, RetrievalDataset, VideoRecord
from dataloaders.datasets.common import AnnotationParser
from dataloaders.datasets.registry import register_dataset

SPLIT_FLAGS = {"train": "qa_train_json", "val": "qa_val_json", "test": "qa_test_json"}
ANS2LABEL = "train_ans2label.json"
NO_TYPE = "unknown"  # answer_type of a row without one


class QADataset(RetrievalDataset):
    """The questions of a split, one item each: the retrieval item (question as ``text_ids``, the video)
    plus ``label`` (answer class, -1 outside the vocabulary), ``answer_token`` (the first token of the
    answer after the start token) and ``qa_ids``/``qa_mask`` ("question answer", for a retrieval loss)."""

    def __init__(self, records, **kwargs):
        super().__init__(records, **kwargs)
        self.questions: list[dict] = [q for r in self.records for q in r.extra["questions"]]  # aligned with captions

    @property
    def num_questions(self) -> int:
        return self.num_captions

    def answer_token(self, answer: str) -> int:
        ids, mask = self.tokenize(answer)
        if int(mask.sum()) < 3:
            raise DataError(f"{self.name} {self.split}: the answer {answer!r} has no token")
        return int(ids[1])

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        question = self.questions[item["caption_index"]]
        qa_ids, qa_mask = self.tokenize(f"{self.captions[item['caption_index']]} {question['answer']}")
        item.update(label=question["label"], answer_token=self.answer_token(question["answer"]), qa_ids=qa_ids,
                    qa_mask=qa_mask)
        return item

    def describe(self) -> str:
        outside = sum(q["label"] < 0 for q in self.questions)
        text = (f"{self.name} {self.split}: {self.num_videos} videos, {self.num_questions} questions "
                f"({outside} answers outside the training vocabulary)")
        return f"{text}; videos from {self.video_source}" if self.video_source else text


@register_dataset("msrvtt_qa")
class QAParser(AnnotationParser):
    video_extensions = (".mp4", ".webm", ".avi", ".mkv")
    dataset_class = QADataset
    expected_files = ("train.jsonl, val.jsonl, test.jsonl (one JSON object per line: video_id, question, answer, "
                      f"answer_type) and {ANS2LABEL} ({{answer: label}}), or the files given by --qa_train_json, "
                      "--qa_val_json, --qa_test_json, --qa_ans2label_json")

    def __init__(self, args):
        self.args = args
        train = getattr(args, "qa_train_json", None)
        if not args.data_path and not train:
            raise self.error(f"set --data_path (or --qa_train_json): expected {self.expected_files}")
        self.data_dir = Path(args.data_path) if args.data_path else Path(train).parent
        if self.data_dir.is_file():
            self.data_dir = self.data_dir.parent
        self.features_path = Path(args.features_path) if args.features_path else self.data_dir
        self._labels: dict[str, int] | None = None

    def split_file(self, split: str) -> Path:
        return self.file(getattr(self.args, SPLIT_FLAGS[split], None), f"{split}.jsonl")

    def answer_labels(self) -> dict[str, int]:
        """{answer: label} of train_ans2label.json, checked: labels are exactly 0..N-1."""
        if self._labels is None:
            path = self.file(getattr(self.args, "qa_ans2label_json", None), ANS2LABEL)
            data = self.read_json(path, "{answer: label} with labels 0..N-1")
            if not isinstance(data, dict) or not data:
                raise self.error(f"{path} holds {type(data).__name__ if data else 'nothing'}; expected a non-empty "
                                 "object {answer: label}")
            labels = list(data.values())
            if any(not isinstance(v, int) or isinstance(v, bool) for v in labels) or \
                    sorted(labels) != list(range(len(labels))):
                raise self.error(f"{path}: the labels must be the integers 0..{len(data) - 1}, each once")
            self._labels = {str(answer).strip(): label for answer, label in data.items()}
        return self._labels

    def answer_vocabulary(self) -> list[str]:
        """The answers in label order."""
        return [a for a, _ in sorted(self.answer_labels().items(), key=lambda item: item[1])]

    def vocabulary_digest(self) -> bytes:
        return hashlib.sha1("\n".join(self.answer_vocabulary()).encode("utf-8")).digest()

    def records(self, split: str) -> list[VideoRecord]:
        if getattr(self.args, "task", None) != "qa":
            raise self.error("a question-answering dataset: run main_task_qa.py")
        path = self.require(self.split_file(split), f"{split} questions, one JSON object per line")
        labels = self.answer_labels()
        videos: dict[str, VideoRecord] = {}
        for line, row in self.json_lines(path):
            bad = [k for k in ("question", "answer") if not isinstance(row.get(k), str) or not row[k].strip()]
            if not isinstance(row.get("video_id"), (str, int)) or isinstance(row.get("video_id"), bool) or \
                    str(row.get("video_id", "")).strip() == "":
                bad.insert(0, "video_id")
            if bad:
                raise self.error(f"{path} line {line}: no {', '.join(bad)} (each line needs video_id, question, answer"
                                 f"[, answer_type]); keys: {', '.join(sorted(row)) or 'none'}")
            video_id, answer = str(row["video_id"]).strip(), row["answer"].strip()
            record = videos.get(video_id)
            if record is None:
                record = videos[video_id] = VideoRecord(video_id, self.video_path(video_id + self.video_extensions[0]),
                                                        [], extra={"questions": []})
            record.captions.append(row["question"].strip())
            record.extra["questions"].append({
                "question_id": row.get("question_id", row.get("id", line)), "video_id": video_id, "answer": answer,
                "answer_type": str(row.get("answer_type") or NO_TYPE), "label": labels.get(answer, -1)})
        if not videos:
            raise self.error(f"{path} holds no question")
        return list(videos.values())


@register_dataset("msvd_qa")
class MSVDQAParser(QAParser):
    video_extensions = (".avi", ".mp4", ".webm", ".mkv")
    search_subdirs = True

