"""Self-contained model checkpoints: --do_eval --init_model rebuilds the model from the checkpoint alone
(no CLIP file, no model flags), contradicting flags are one error naming them, and the tools load it."""
import json
from pathlib import Path

import pytest
import torch

import main_task_retrieval
from tests.tools_fixtures import make_toy, model_argv


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy(tmp_path_factory.mktemp("toy"))


def data_flags(toy, out):
    return ["--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos"),
            "--output_dir", str(out), "--num_thread_reader", "0", "--batch_size_val", "8", "--video_backend", "cv2"]


def test_do_eval_needs_only_the_checkpoint_even_when_the_clip_file_is_gone(toy, tmp_path, capsys):
    from modules.clip import build_clip, save_clip

    # Trained from a CLIP *file* (as with ViT-B-32.pt), with non-default head flags.
    clip_file = save_clip(build_clip("tiny"), tmp_path / "my_clip.safetensors")
    argv = model_argv(toy, tmp_path / "run", "--sim_header", "seqTransf", "--cross_num_hidden_layers", "1",
                      "--max_frames", "3")
    argv[argv.index("--pretrained_clip_name") + 1] = str(clip_file)
    argv[argv.index("--clip_init") + 1] = "pretrained"
    assert main_task_retrieval.main(argv) == 0
    trained = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
    record = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)
    assert record["clip_config"]["vision"]["width"] == 64 and record["args"]["cross_num_hidden_layers"] == 1
    clip_file.unlink()  # the evaluating machine has only the trained checkpoint

    evaluate = ["--do_eval", "--init_model", str(tmp_path / "run" / "model_final.pt"), *data_flags(toy, tmp_path / "ev")]
    assert main_task_retrieval.main(evaluate) == 0, capsys.readouterr().err
    again = json.loads((tmp_path / "ev" / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
    assert again == trained
    flags = json.loads((tmp_path / "ev" / "log.txt").read_text().splitlines()[1].split("flags: ", 1)[1])
    assert (flags["sim_header"], flags["cross_num_hidden_layers"], flags["max_frames"]) == ("seqTransf", 1, 3)

    # Repeating the checkpoint's own flags is fine; contradicting ones are one line naming each of them.
    same = evaluate + ["--sim_header", "seqTransf", "--cross_num_hidden_layers", "1"]
    assert main_task_retrieval.main(same) == 0
    capsys.readouterr()
    wrong = evaluate + ["--sim_header", "meanP", "--cross_num_hidden_layers", "4", "--pretrained_clip_name", "ViT-B/32"]
    assert main_task_retrieval.main(wrong) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    for part in ("--sim_header 'meanP' (checkpoint: 'seqTransf')", "--cross_num_hidden_layers 4 (checkpoint: 1)",
                 "--pretrained_clip_name 'ViT-B/32'"):
        assert part in errors[0]


def test_an_explicit_input_flag_wins_with_a_note(toy, tmp_path, capsys):
    from tests.tools_fixtures import save_checkpoint

    path = save_checkpoint(toy, tmp_path / "model_final.pt")
    argv = ["--do_eval", "--init_model", str(path), *data_flags(toy, tmp_path / "ev"), "--max_frames", "2"]
    assert main_task_retrieval.main(argv) == 0
    assert "--max_frames 2 given; the model was trained with 4" in capsys.readouterr().err
    flags = json.loads((tmp_path / "ev" / "log.txt").read_text().splitlines()[1].split("flags: ", 1)[1])
    assert flags["max_frames"] == 2 and flags["image_resolution"] == 32


def test_clip4clip_checkpoints_keep_working_with_explicit_flags(toy, tmp_path):
    from modules import build_model
    from modules.clip.loading import to_openai

    args = main_task_retrieval.get_args(model_argv(toy, tmp_path, "--sim_header", "seqTransf"))
    source = build_model(args)
    state = {f"clip.{k}": v for k, v in to_openai(source.clip.state_dict()).items()}
    state |= {k: v for k, v in source.state_dict().items() if not k.startswith("clip.")}
    torch.save(state, tmp_path / "pytorch_model.bin.2")
    argv = [a for a in model_argv(toy, tmp_path / "ev", "--sim_header", "seqTransf") if a != "--do_train"]
    assert main_task_retrieval.main(argv + ["--do_eval", "--init_model", str(tmp_path / "pytorch_model.bin.2")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.jsonl").read_text())["metrics"]["num_videos"] == 6


def test_load_model_rebuilds_the_same_model_and_refuses_other_files(toy, tmp_path):
    from engine.checkpoint import load_model
    from modules.clip import CheckpointError
    from tests.tools_fixtures import save_checkpoint

    path = save_checkpoint(toy, tmp_path / "model_final.pt", "--sim_header", "seqLSTM")
    model, args = load_model(path)
    saved = torch.load(path, weights_only=True)["model"]
    assert model.head_name == "seqLSTM" and args.max_frames == 4 and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    torch.save(saved, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a self-contained"):
        load_model(tmp_path / "plain.pt")
