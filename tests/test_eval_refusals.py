"""Evaluation-only runs refuse modules their --init_model never trained, and start-up problems are one line
naming the real cause, through the entry scripts' main(): a QA or captioning evaluation of a retrieval
checkpoint, a retrieval head the file has no weights for, a read-only existing --output_dir, a missing
--data_path before the CLIP weights, a text file or a truncated checkpoint as --init_model, an empty shard
folder, and --do_eval taking the data a checkpoint records (a recorded path missing here is one line)."""
import json
import os
from pathlib import Path

import pytest
import torch

import main_pretrain
import main_task_caption
import main_task_qa
import main_task_retrieval

TINY = ["--pretrained_clip_name", "tiny", "--clip_init", "random", "--max_frames", "4", "--image_resolution", "32",
        "--max_words", "16", "--num_thread_reader", "0", "--batch_size_val", "8"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from preprocess.make_toy_dataset import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, num_train=12, num_test=6, size=32, fps=5,
                            seconds=1.6, workers=1, progress=False)


@pytest.fixture(scope="module")
def retrieval_run(toy, tmp_path_factory):
    """A meanP retrieval run of one epoch on the toy data: its output folder (model_final.pt, metrics.jsonl)."""
    out = tmp_path_factory.mktemp("meanP")
    argv = ["--do_train", "--data_path", str(toy), "--features_path", str(toy / "videos"), "--output_dir", str(out),
            "--sim_header", "meanP", "--freeze_layer_num", "-1", "--batch_size", "8", "--epochs", "1", *TINY]
    assert main_task_retrieval.main(argv) == 0
    return out


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_qa_and_caption_evaluation_of_a_retrieval_checkpoint_name_the_untrained_modules(toy, retrieval_run, tmp_path,
                                                                                         capsys):
    ckpt = retrieval_run / "model_final.pt"
    qa = ["--do_eval", "--init_model", str(ckpt), "--data_path", str(toy / "qa"), "--features_path",
          str(toy / "videos"), "--output_dir", str(tmp_path / "qa"), "--num_thread_reader", "0"]
    assert main_task_qa.main(qa) == 2
    assert error_lines(capsys) == [
        f"error: --init_model {ckpt} has no trained weights for fusion, classifier of the qa/meanP model, and "
        f"--do_eval would score them untrained: train them with python main_task_qa.py --do_train --init_model "
        f"{ckpt} ..., then evaluate the model_final.pt (or model_best.pt) that run writes"]
    assert not (tmp_path / "qa" / "metrics.jsonl").exists()  # nothing was scored

    caption = ["--do_eval", "--init_model", str(ckpt), "--data_path", str(toy), "--features_path", str(toy / "videos"),
               "--output_dir", str(tmp_path / "caption"), "--num_thread_reader", "0"]
    assert main_task_caption.main(caption) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: --init_model {ckpt} has no trained weights for decoder, vocab_head of the "
                           "caption/meanP model")
    assert f"python main_task_caption.py --do_train --init_model {ckpt} ..." in line
    assert not (tmp_path / "caption" / "metrics.jsonl").exists()


def test_retrieval_evaluation_refuses_a_head_the_file_has_no_weights_for(toy, retrieval_run, tmp_path, capsys):
    # The meanP weights without their record: a CLIP-only file to the loader, which lets seqTransf's
    # temporal modules start fresh (right for training, wrong for an evaluation).
    plain = tmp_path / "weights.pt"
    torch.save(torch.load(retrieval_run / "model_final.pt", weights_only=True)["model"], plain)
    argv = ["--do_eval", "--init_model", str(plain), "--sim_header", "seqTransf", "--data_path", str(toy),
            "--features_path", str(toy / "videos"), "--output_dir", str(tmp_path / "eval"), *TINY]
    assert main_task_retrieval.main(argv) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: --init_model {plain} has no trained weights for frame_position_embeddings, "
                           "transformerClip of the seqTransf model")
    assert f"python main_task_retrieval.py --do_train --init_model {plain} ..." in line
    # main_pretrain.py's zero-shot evaluation names pre-training as the run that makes them.
    assert main_pretrain.main(argv) == 2
    (line,) = error_lines(capsys)
    assert f"python main_pretrain.py --do_pretrain --init_model {plain} ..." in line
    # T2VLP's whole modules a file may lack (tube, fusion encoder, matching head) count too: the re-ranking
    # scored captions with a random matching head.
    t2vlp = [*argv[:3], "--method", "t2vlp", "--t2vlp_stage", "retrieval", "--fusion_layers", "2", *argv[5:]]
    assert main_task_retrieval.main(t2vlp) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: --init_model {plain} has no trained weights for fusion, match, tube of the t2vlp "
                           "model")
    # The meanP head has nothing the file lacks: evaluated.
    meanp = [a if a != "seqTransf" else "meanP" for a in argv]
    assert main_task_retrieval.main(meanp) == 0


def test_evaluation_without_init_model_says_which_modules_are_untrained(toy, tmp_path, capsys):
    # The demos' untrained rows: the initial weights asked for on purpose are scored, with a warning.
    argv = ["--do_eval", "--sim_header", "seqTransf", "--data_path", str(toy), "--features_path", str(toy / "videos"),
            "--output_dir", str(tmp_path / "eval"), *TINY]
    assert main_task_retrieval.main(argv) == 0
    assert ("WARNING --do_eval without --init_model: scoring untrained clip (--clip_init random), "
            "frame_position_embeddings, transformerClip as initialised") in capsys.readouterr().err


def test_read_only_existing_output_folder_is_one_line_before_any_work(toy, tmp_path, capsys, monkeypatch):
    # Root writes through chmod: the folder is made unwritable for os.access, which is what a read-only
    # mount answers (EROFS) for root too.
    folder = tmp_path / "results"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != folder and real_access(path, mode, **kw))
    argv = ["--do_eval", "--data_path", str(toy), "--features_path", str(toy / "videos"), "--output_dir", str(folder),
            *TINY]
    assert main_task_retrieval.main(argv) == 2
    assert error_lines(capsys) == [f"error: --output_dir {folder} is not writable (no write permission); choose "
                                   "another folder"]
    assert list(folder.iterdir()) == []  # no log.txt


def test_missing_data_path_is_reported_before_the_missing_clip_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIP_HOME", str(tmp_path / "no_weights"))
    missing = tmp_path / "no_such_folder"
    assert main_task_retrieval.main(["--do_eval", "--data_path", str(missing)]) == 2  # default ViT-B/32
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: msrvtt: missing annotation file {missing / 'MSRVTT_JSFUSION_test.csv'}")


def test_text_file_is_not_a_checkpoint_and_a_truncated_one_is_re_download_advice(toy, retrieval_run, tmp_path,
                                                                               capsys):
    text = tmp_path / "model.pt"
    text.write_text("<html>Sign in to download</html>\n")
    argv = ["--do_eval", "--data_path", str(toy), "--features_path", str(toy / "videos"), *TINY, "--init_model"]
    assert main_task_retrieval.main([*argv, str(text)]) == 2
    assert error_lines(capsys) == [
        f"error: {text} is not a checkpoint file (it starts with b'<html>Sign in to downloa'; PyTorch's zip and "
        "pickle files, TorchScript and safetensors start otherwise): pass the weights file itself"]
    cut = tmp_path / "cut.pt"
    cut.write_bytes((retrieval_run / "model_final.pt").read_bytes()[:4096])
    assert main_task_retrieval.main([*argv, str(cut)]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: {cut}: cannot read the checkpoint (") and "Is the file complete?" in line


def test_empty_shard_folder_is_named_as_given(toy, tmp_path, capsys):
    from dataloaders.shards import expand_shards

    folder = tmp_path / "shards"
    folder.mkdir()
    argv = ["--do_pretrain", "--datatype", "webdataset", "--eval_datatype", "msrvtt", "--eval_data_path", str(toy),
            "--eval_features_path", str(toy / "videos"), "--output_dir", str(tmp_path / "out"), *TINY]
    for given in (str(folder), f"{folder}/"):
        assert main_pretrain.main([*argv, "--train_shards", given]) == 2
        assert error_lines(capsys) == [f"error: shard folder {given} holds no shards.json, so no finished shards: "
                                       "preprocess/make_shards.py writes the shards and then the index there"]
    # A folder with its index stands for the shards it lists.
    (folder / "shards.json").write_text(json.dumps({"format_version": 1, "shards": [
        {"name": "000000.tar", "samples": 3}, {"name": "000001.tar", "samples": 2}]}))
    assert expand_shards(str(folder)) == [str(folder / "000000.tar"), str(folder / "000001.tar")]


def test_evaluation_takes_the_data_the_checkpoint_records(toy, retrieval_run, tmp_path, capsys):
    ckpt = retrieval_run / "model_final.pt"
    trained = [json.loads(line) for line in (retrieval_run / "metrics.jsonl").read_text().splitlines()][-1]["metrics"]
    argv = ["--do_eval", "--init_model", str(ckpt), "--output_dir", str(tmp_path / "eval"), "--num_thread_reader", "0"]
    assert main_task_retrieval.main(argv) == 0
    err = capsys.readouterr().err
    assert (f"note: evaluating on the data {ckpt} records: --datatype msrvtt --data_path {toy} --features_path "
            f"{toy / 'videos'} (flags given override it)") in err.splitlines()
    again = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()][-1]
    assert again["metrics"] == trained

    # Moved to another machine: the recorded folder is missing there; the flags then say where the data is.
    state = torch.load(ckpt, weights_only=True)
    state["args"]["data_path"] = str(tmp_path / "gone")
    moved = tmp_path / "moved.pt"
    torch.save(state, moved)
    argv = ["--do_eval", "--init_model", str(moved), "--output_dir", str(tmp_path / "eval2"), "--num_thread_reader", "0"]
    assert main_task_retrieval.main(argv) == 2
    assert error_lines(capsys) == [f"error: {moved} records --data_path {tmp_path / 'gone'}, which does not exist on "
                                   "this machine: pass --data_path (and the other data flags) for this machine's copy"]
    assert main_task_retrieval.main([*argv, "--data_path", str(toy), "--features_path", str(toy / "videos")]) == 0
    assert "note: evaluating on the data" not in capsys.readouterr().err


def test_a_qa_checkpoint_supplies_its_data_and_the_qa_flags_given_still_win(toy, tmp_path, capsys):
    from engine.checkpoint import MODEL_FORMAT, adopt_for_evaluation

    recorded = {"datatype": "msrvtt_qa", "data_path": str(toy / "qa"), "features_path": str(toy / "videos"),
                "qa_test_json": str(toy / "qa" / "test.jsonl"), "qa_head": "classifier"}
    ckpt = tmp_path / "model_best.pt"
    torch.save({"format": MODEL_FORMAT, "model": {}, "clip_config": {}, "head": "qa/meanP", "args": recorded}, ckpt)
    argv = ["--do_eval", "--init_model", str(ckpt), "--qa_test_json", str(toy / "qa" / "val.jsonl")]
    args = main_task_qa.get_args(argv)
    adopt_for_evaluation(args, argv)
    assert (args.datatype, args.data_path, args.features_path) == ("msrvtt_qa", str(toy / "qa"), str(toy / "videos"))
    assert args.qa_test_json == str(toy / "qa" / "val.jsonl")  # given: not replaced by the recorded one
    assert "note: evaluating on the data" in capsys.readouterr().err
