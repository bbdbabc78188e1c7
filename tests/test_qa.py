"""Video question answering (main_task_qa.py): scoring (answers outside the vocabulary, per-type accuracy),
one-line data errors, T2VLP's QA command, a train + eval run on the toy QA data, 2 gloo ranks against one
process, the first-token head's target, and a saved QA checkpoint restored exactly by --do_eval."""
import argparse
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import main_task_qa
from dataloaders.base import VideoRecord
from dataloaders.datasets.qa import QADataset
from engine.distributed import DistEnv
from engine.qa import QATask, accuracy_by_type, prediction_rows
from gloo import FP32_REORDER_TOLERANCE, assert_close_to_scale, local_rows, run_on_ranks
from modules.clip import tokenize
from modules.factory import add_model_args, build_model
from modules.qa import QAModel
from test_distributed import loss_and_grads


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from preprocess.make_toy_dataset import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, num_train=12, num_test=6, size=32, fps=5,
                            seconds=1.6, workers=1, progress=False)


def run_args(qa_dir, videos, out, *extra):
    return ["--do_train", "--data_path", str(qa_dir), "--features_path", str(videos), "--output_dir", str(out),
            "--pretrained_clip_name", "tiny", "--clip_init", "random", "--freeze_layer_num", "-1", "--batch_size", "8",
            "--batch_size_val", "8", "--max_frames", "4", "--image_resolution", "32", "--num_thread_reader", "0",
            "--lr", "1e-3", "--epochs", "2", "--n_display", "1", "--seed", "7", "--fusion_layers", "2",
            "--max_words", "16", *extra]


def questions_dataset(rows, answers=("red", "blue", "left")):
    """A QADataset over ``rows`` (video_id, question, answer, type), no video read."""
    labels = {a: i for i, a in enumerate(answers)}
    records: dict[str, VideoRecord] = {}
    for n, (video, question, answer, kind) in enumerate(rows):
        record = records.setdefault(video, VideoRecord(video, f"{video}.mp4", [], extra={"questions": []}))
        record.captions.append(question)
        record.extra["questions"].append({"question_id": n, "video_id": video, "answer": answer, "answer_type": kind,
                                          "label": labels.get(answer, -1)})
    return QADataset(list(records.values()), split="test", video_loader=None, max_words=16, name="qa")


# -- scoring ------------------------------------------------------------------------------------------


def test_an_answer_outside_the_vocabulary_is_wrong_and_stays_in_the_denominator():
    dataset = questions_dataset([("v0", "what colour?", "red", "colour"), ("v0", "which way?", "left", "direction"),
                                 ("v1", "what colour?", "purple", "colour"), ("v1", "what shape?", "blue", "colour")])
    model = SimpleNamespace(kind="classifier", answers=["red", "blue", "left"])
    # The out-of-vocabulary question's prediction is any class: it can never be right.
    rows = prediction_rows(model, dataset, {0: 0, 1: 2, 2: 0, 3: 0})
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert rows[2]["answer"] == "purple" and rows[2]["prediction"] == "red"
    metrics = accuracy_by_type([r["answer_type"] for r in rows], [r["correct"] for r in rows])
    assert metrics["accuracy"] == pytest.approx(50.0) and metrics["num_questions"] == 4
    assert metrics["accuracy/colour"] == pytest.approx(100 / 3) and metrics["num_questions/colour"] == 3


def test_per_type_accuracy_against_a_hand_count():
    types = ["what", "what", "who", "what", "how", "who", "what"]
    correct = [True, False, True, True, False, False, True]
    metrics = accuracy_by_type(types, correct)
    # what: 3 of 4, who: 1 of 2, how: 0 of 1; overall 4 of 7.
    assert metrics == pytest.approx({"accuracy": 400 / 7, "num_questions": 7.0, "accuracy/what": 75.0,
                                     "num_questions/what": 4.0, "accuracy/who": 50.0, "num_questions/who": 2.0,
                                     "accuracy/how": 0.0, "num_questions/how": 1.0})


def test_first_token_target_is_the_first_bpe_id_and_multi_token_answers_are_truncated():
    dataset = questions_dataset([("v0", "who plays?", "basketball player", "who"), ("v0", "what colour?", "red", "what")])
    first = int(tokenize(["basketball"], 8)[0][0, 1])
    assert dataset.answer_token("basketball player") == first == int(tokenize(["basketball player"], 8)[0][0, 1])
    assert dataset.answer_token("red") == int(tokenize(["red"], 8)[0][0, 1])
    model = SimpleNamespace(kind="first_token")
    rows = prediction_rows(model, dataset, {0: first, 1: first})
    assert [r["correct"] for r in rows] == [True, False]  # the first token alone counts (T2VLP's accuracy)
    batch = {"label": torch.tensor([-1, 0]), "answer_token": torch.tensor([first, 7])}
    assert QAModel.targets(SimpleNamespace(kind="first_token"), batch).tolist() == [first, 7]
    assert QAModel.targets(SimpleNamespace(kind="classifier"), batch).tolist() == [-1, 0]


# -- data errors --------------------------------------------------------------------------------------


def break_files(qa_dir: Path, how: str) -> str:
    """Make the QA folder bad in one way; returns what the error line must name."""
    if how == "missing_val":
        (qa_dir / "val.jsonl").unlink()
        return "val.jsonl"
    if how == "missing_ans2label":
        (qa_dir / "train_ans2label.json").unlink()
        return "train_ans2label.json"
    if how == "bad_json_line":
        (qa_dir / "test.jsonl").write_text('{"video_id": "video12", "question": "q?", "answer": "red"}\n{oops\n')
        return "test.jsonl line 2 is not a JSON object"
    if how == "row_without_answer":
        (qa_dir / "train.jsonl").write_text('{"video_id": "video0", "question": "q?", "answer": "red"}\n'
                                            '{"video_id": "video0", "question": "q?"}\n')
        return "train.jsonl line 2: no answer"
    (qa_dir / "train_ans2label.json").write_text('{"red": 0, "blue": 2}')
    return "the labels must be the integers 0..1"


@pytest.mark.parametrize("how", ["missing_val", "missing_ans2label", "bad_json_line", "row_without_answer",
                                 "bad_labels"])
def test_missing_or_malformed_files_are_one_line(toy, tmp_path, capsys, how):
    qa_dir = tmp_path / "qa"
    qa_dir.mkdir()
    for f in (toy / "qa").iterdir():
        (qa_dir / f.name).write_text(f.read_text())
    expected = break_files(qa_dir, how)
    code = main_task_qa.main(run_args(qa_dir, toy / "videos", tmp_path / "out"))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: msrvtt_qa: ") and "Traceback" not in err
    err = errors[0]
    assert expected in err, err
    if how.startswith("missing"):
        assert "train.jsonl, val.jsonl, test.jsonl" in err  # the expected files are named


# -- T2VLP's command ----------------------------------------------------------------------------------

SEED_QA = """--do_train --num_thread_reader=4 --epochs=5 --batch_size=32 --n_display=50 --cross_config_path ../CLIP-modules
--msrvtt_train_csv D/MSRVTT_train.9k.csv --msrvtt_val_csv D/MSRVTT_JSFUSION_test.csv --msrvtt_train_json D/MSRVTT_data.json
--msrvtt_qa_train_json D/train.jsonl --msrvtt_qa_val_json D/val.jsonl --msrvtt_qa_test_json D/test.jsonl
--msrvtt_qa_anslabel_json D/train_ans2label.json --msrvtt_features_path D/MSRVTT_Videos
--webvid_train_json D/frozen_train.json --webvid_tfrecord D/WebVid_TFRecord --warmup_proportion 0.1 --output_dir out/qa
--lr 2e-4 --max_words 32 --max_frames 12 --batch_size_val 32 --expand_msrvtt_sentences --feature_framerate 1
--coef_lr 1e-3 --freeze_layer_num 0 --slice_framepos 2 --loose_type --linear_patch 2d --sim_header meanP
--init_model ckpts/t2vlp_stage2/model_final.pt"""


def test_seed_qa_command_parses():
    args = main_task_qa.get_args(["--local_rank", "0", *shlex.split(SEED_QA)])  # torch.distributed.launch adds it
    assert (args.task, args.datatype, args.method, args.t2vlp_stage) == ("qa", "msrvtt_qa", "t2vlp", "2")
    assert (args.qa_train_json, args.qa_val_json, args.qa_test_json, args.qa_ans2label_json) == (
        "D/train.jsonl", "D/val.jsonl", "D/test.jsonl", "D/train_ans2label.json")
    assert args.features_path == "D/MSRVTT_Videos" and args.data_path is None and args.train_csv is None
    assert (args.lr, args.fusion_lr, args.coef_lr, args.epochs, args.batch_size) == (2e-4, 2e-4, 1e-3, 5, 32)
    assert args.pretrained_dir == "../CLIP-modules" and args.init_model == "ckpts/t2vlp_stage2/model_final.pt"
    assert not args.freeze_backbone and args.qa_head == "classifier"


# -- a run on the toy QA data, and its checkpoint -----------------------------------------------------


def test_train_eval_writes_predictions_and_metrics_and_the_checkpoint_restores_exactly(toy, tmp_path):
    out = tmp_path / "run"
    assert main_task_qa.main(run_args(toy / "qa", toy / "videos", out)) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["val", "val", "test"]
    test = records[-1]["metrics"]
    questions = [json.loads(line) for line in (toy / "qa" / "test.jsonl").read_text().splitlines()]
    predictions = [json.loads(line) for line in (out / "qa_predictions_test.jsonl").read_text().splitlines()]
    assert [p["question_id"] for p in predictions] == [q["question_id"] for q in questions]
    assert set(predictions[0]) == {"question_id", "video_id", "question", "answer", "answer_type", "prediction",
                                   "correct"}
    assert test["num_questions"] == len(questions)
    assert test["accuracy"] == pytest.approx(100 * sum(p["correct"] for p in predictions) / len(predictions))
    assert {"accuracy/colour", "accuracy/shape", "accuracy/direction"} <= set(test)
    assert (out / "qa_predictions_val.jsonl").is_file()

    # --do_eval of the kept weights: the same model, tensor for tensor, and the same test numbers.
    evaluated = tmp_path / "eval"
    argv = ["--do_eval", "--init_model", str(out / "model_best.pt"), "--data_path", str(toy / "qa"),
            "--features_path", str(toy / "videos"), "--output_dir", str(evaluated), "--num_thread_reader", "0",
            "--batch_size_val", "8"]
    assert main_task_qa.main(argv) == 0
    again = [json.loads(line) for line in (evaluated / "metrics.jsonl").read_text().splitlines()][-1]["metrics"]
    assert again == test
    from engine.checkpoint import adopt_for_evaluation

    args = main_task_qa.get_args(argv)
    adopt_for_evaluation(args, argv)
    model = QATask().build_model(args)
    saved = torch.load(out / "model_best.pt", map_location="cpu", weights_only=True)["model"]
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)


# -- 2 gloo ranks = 1 process -------------------------------------------------------------------------

GLOBAL_BATCH = 4


def make_qa_model():
    args = add_model_args(argparse.ArgumentParser()).parse_args(
        ["--pretrained_clip_name", "tiny", "--clip_init", "random", "--sim_header", "seqTransf", "--freeze_layer_num",
         "-1", "--fusion_layers", "2"])
    args.max_frames, args.max_words, args.qa_retrieval_weight = 3, 12, 0.5
    torch.manual_seed(0)
    return QAModel(build_model(args), args, answers=5)


def make_qa_batch():
    g = torch.Generator().manual_seed(1)
    ids, mask = tokenize([f"what colour is ball {i}?" for i in range(GLOBAL_BATCH)], 12)
    qa_ids, qa_mask = tokenize([f"what colour is ball {i}? {c}" for i, c in enumerate("red blue gray pink".split())], 12)
    video_mask = torch.ones(GLOBAL_BATCH, 3, dtype=torch.long)
    video_mask[1, 2] = 0
    # The last answer is outside the vocabulary: rank 1 has one CE term, rank 0 two; the mean is over 3.
    return {"text_ids": ids, "text_mask": mask, "qa_ids": qa_ids, "qa_mask": qa_mask,
            "video": torch.randn(GLOBAL_BATCH, 3, 3, 32, 32, generator=g), "video_mask": video_mask,
            "label": torch.tensor([1, 4, 0, -1]), "answer_token": torch.tensor([10, 11, 12, 13])}


def _work(env, out_dir):
    model = torch.nn.parallel.DistributedDataParallel(make_qa_model(), find_unused_parameters=True)
    loss, grads = loss_and_grads(model, local_rows(make_qa_batch(), env), env)
    torch.save({"loss": loss, "grads": grads}, f"{out_dir}/rank{env.rank}.pt")


def test_two_gloo_ranks_equal_one_process(tmp_path):
    model = make_qa_model()
    single_loss, single_grads = loss_and_grads(model, make_qa_batch(), DistEnv())
    assert any(n.startswith("classifier.") for n in single_grads) and any(n.startswith("fusion.") for n in single_grads)
    run_on_ranks(_work, tmp_path)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert abs(result["loss"] - single_loss) <= FP32_REORDER_TOLERANCE * max(1.0, abs(single_loss))
        for name, grad in single_grads.items():
            assert_close_to_scale(result["grads"][name], grad, FP32_REORDER_TOLERANCE, name)
        # Parameters the step does not reach (if any) get zeros from DDP, never another value.
        assert all(not result["grads"][n].any() for n in set(result["grads"]) - set(single_grads))


# -- recipes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script,datatype", [("qa_msrvtt.sh", "msrvtt_qa"), ("qa_msvd.sh", "msvd_qa")])
def test_qa_recipes_parse_and_name_missing_locations(script, datatype, tmp_path):
    from test_scripts import fake_torchrun, run

    missing = run(script, {}, tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "set DATA_DIR" in missing.stderr
    env = {"DATA_DIR": str(tmp_path), "VIDEO_DIR": str(tmp_path), "PATH": fake_torchrun(tmp_path)}
    parsed = run(script, env, tmp_path)
    assert parsed.returncode == 0, parsed.stderr[-1500:]
    assert parsed.stdout.split() == ["PARSED", datatype, "t2vlp", "32", "12", "None", "main_task_qa.py"]
