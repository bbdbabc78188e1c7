"""Start-up problems are one line naming the real cause, through the entry scripts' main(): a text file or
a truncated checkpoint as --init_model, an empty shard folder."""
import json

import pytest
import torch

import main_pretrain
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


