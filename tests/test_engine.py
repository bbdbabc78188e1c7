"""The training engine end to end on real mp4 files: exact resume after a hard kill, broken videos,
non-finite losses, metrics file, CLIP4Clip checkpoints through --init_model."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main_task_retrieval
from modules.clip.loading import to_openai

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from preprocess.make_toy_dataset import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, num_train=12, num_test=6, size=32, fps=5,
                            seconds=1.6, workers=1, progress=False)


def run_args(toy, out, *extra):
    return ["--do_train", "--datatype", "msrvtt", "--data_path", str(toy), "--features_path", str(toy / "videos"),
            "--output_dir", str(out), "--pretrained_clip_name", "tiny", "--clip_init", "random",
            "--sim_header", "seqTransf", "--freeze_layer_num", "-1", "--batch_size", "4", "--batch_size_val", "8",
            "--max_frames", "4", "--image_resolution", "32", "--num_thread_reader", "0", "--lr", "1e-3",
            "--epochs", "2", "--n_display", "1", "--seed", "7", *extra]


def run_subprocess(argv, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "main_task_retrieval.py"), *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def final_weights(out):
    return torch.load(Path(out) / "model_final.pt", map_location="cpu", weights_only=True)["model"]


def test_resume_after_kill_matches_uninterrupted_run(toy, tmp_path):
    straight = run_subprocess(run_args(toy, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    # 12 items / batch 4 = 3 steps per epoch; die abruptly at step 5 (mid epoch 2), 1 step after the
    # last checkpoint, so the resumed run must redo a step it had already taken.
    killed = run_subprocess(run_args(toy, tmp_path / "killed", "--save_every_steps", "2"), {"UNIVTR_FAULT_AT_STEP": "5"})
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert not (tmp_path / "killed" / "model_final.pt").exists()
    state = torch.load(tmp_path / "killed" / "checkpoint_last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["step_in_epoch"]) == (1, 4, 1)
    resumed = run_subprocess(run_args(toy, tmp_path / "killed", "--resume", str(tmp_path / "killed" / "checkpoint_last.pt")))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # Training moved the weights (the comparison above is not between two untouched models).
    init = torch.load(tmp_path / "killed" / "checkpoint_last.pt", weights_only=True)
    assert init["step"] == 6


def test_metrics_file_and_selection_rule(toy, tmp_path):
    assert main_task_retrieval.main(run_args(toy, tmp_path, "--epochs", "1")) == 0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["split"] for line in lines] == ["test"]  # MSR-VTT: nothing is selected on test
    assert lines[0]["selection_rule"].startswith("final_epoch")
    assert 0 <= lines[0]["metrics"]["t2v/R1"] <= 100 and lines[0]["metrics"]["num_videos"] == 6
    assert (tmp_path / "log.txt").read_text().count("loss") >= 3
    # The saved model evaluates to the same numbers through --do_eval --init_model.
    argv = [a for a in run_args(toy, tmp_path / "eval") if a != "--do_train"]
    assert main_task_retrieval.main(argv + ["--do_eval", "--init_model", str(tmp_path / "model_final.pt")]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
    assert again == lines[0]["metrics"]


def test_val_from_train_drives_selection(toy, tmp_path):
    assert main_task_retrieval.main(run_args(toy, tmp_path, "--val_from_train", "4", "--batch_size", "4")) == 0
    splits = [json.loads(line)["split"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert splits == ["val", "val", "test"]
    assert (tmp_path / "model_best.pt").exists()


def break_videos(toy, tmp_path, names):
    """A copy of the toy dataset in which the named training videos are damaged."""
    copy = tmp_path / "data"
    (copy / "videos").mkdir(parents=True)
    for f in toy.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    for f in (toy / "videos").iterdir():
        data = f.read_bytes()
        (copy / "videos" / f.name).write_bytes(data[: len(data) // 3] if f.stem in names else data)
    return copy


def test_broken_training_videos_are_replaced_never_zeroed(toy, tmp_path, caplog):
    data = break_videos(toy, tmp_path, {"video0", "video5"})
    out = tmp_path / "out"
    assert main_task_retrieval.main(run_args(data, out, "--epochs", "1", "--max_decode_failures", "2")) == 0
    log = (out / "log.txt").read_text()
    assert "video0.mp4" in log and "video5.mp4" in log and "using another sample" in log
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
    assert all(v == v for v in metrics.values())  # no NaN anywhere


def test_too_many_broken_videos_stop_with_one_line(toy, tmp_path, capsys):
    data = break_videos(toy, tmp_path, {"video0", "video5"})
    assert main_task_retrieval.main(run_args(data, tmp_path / "out", "--epochs", "1", "--max_decode_failures", "0")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed to decode" in errors[0] and "Traceback" not in err


def test_non_finite_losses_are_skipped_then_stop(toy, tmp_path, capsys, monkeypatch):
    from modules.heads.clip4clip import SequenceTransformer

    before = {}

    def nan_loss(self, text, video):
        before.setdefault("w", self.frame_position_embeddings.weight.detach().clone())
        return {"loss": (text.sum() + video.sum()) * float("nan")}

    monkeypatch.setattr(SequenceTransformer, "compute_loss", nan_loss)
    code = main_task_retrieval.main(run_args(toy, tmp_path, "--max_nonfinite_steps", "2", "--save_every_steps", "1"))
    assert code == 2
    err = capsys.readouterr().err
    assert "3 steps had a non-finite loss" in err
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    # Skipped steps never touched the weights.
    assert torch.equal(state["model"]["frame_position_embeddings.weight"], before["w"])


def test_clip4clip_checkpoint_loads_through_init_model(toy, tmp_path):
    from modules import build_model

    args = main_task_retrieval.get_args(run_args(toy, tmp_path))
    source = build_model(args)
    with torch.no_grad():
        source.frame_position_embeddings.weight.add_(1.0)
    # CLIP4Clip saves `clip.` + OpenAI names, plus its head's own names.
    state = {f"clip.{k}": v for k, v in to_openai(source.clip.state_dict()).items()}
    state |= {k: v for k, v in source.state_dict().items() if not k.startswith("clip.")}
    torch.save(state, tmp_path / "pytorch_model.bin.3")
    args.init_model = str(tmp_path / "pytorch_model.bin.3")
    torch.manual_seed(123)
    loaded = build_model(args)
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_corrupt_resume_checkpoint_is_one_clear_line(toy, tmp_path, capsys):
    bad = tmp_path / "checkpoint_last.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main_task_retrieval.main(run_args(toy, tmp_path / "out", "--resume", str(bad))) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in err


def test_do_eval_reports_raw_beside_dsl_and_qb_norm(toy, tmp_path):
    argv = [a for a in run_args(toy, tmp_path) if a != "--do_train"] + ["--do_eval", "--dsl", "--qb_norm"]
    assert main_task_retrieval.main(argv + ["--val_from_train", "4"]) == 0
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
    assert {"t2v/R1", "v2t/R1", "dsl/t2v/R1", "qbnorm/t2v/R1", "qbnorm/beta"} <= metrics.keys()
    # QB-Norm's beta/k can only come from the validation split: without one the run refuses.
    assert main_task_retrieval.main(argv) == 2


@pytest.mark.parametrize("extra", [["--precision", "amp_bf16"], ["--precision", "fp16_weights"],
                                   ["--gradient_accumulation_steps", "2", "--optim", "bertadam"]])
def test_precision_accumulation_and_parity_optimiser_modes_train(toy, tmp_path, extra):
    assert main_task_retrieval.main(run_args(toy, tmp_path, "--epochs", "1", *extra)) == 0
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert state["step"] == 3  # 12 items / global batch 4, whatever the accumulation
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    if "fp16_weights" in extra:
        assert state["model"]["clip.visual.transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
        assert state["model"]["clip.visual.ln_pre.weight"].dtype == torch.float32
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["metrics"]
    assert metrics["num_captions"] == 6 and metrics["t2v/R1"] == metrics["t2v/R1"]


def test_init_model_missing_head_tensors_is_an_error_not_random_layers(toy, tmp_path, caplog):
    from modules import build_model
    from modules.clip import CheckpointError

    args = main_task_retrieval.get_args(run_args(toy, tmp_path, "--cross_num_hidden_layers", "2"))
    source = build_model(args)
    torch.save({"model": source.state_dict()}, tmp_path / "two_layers.pt")
    # The demo's case: a 2-layer seqTransf checkpoint evaluated with the default 4 layers.
    wrong = main_task_retrieval.get_args(run_args(toy, tmp_path, "--init_model", str(tmp_path / "two_layers.pt")))
    with pytest.raises(CheckpointError, match=r"transformerClip\.resblocks\.2\..*not in the checkpoint|not in the "
                                              r"checkpoint.*transformerClip\.resblocks\.2\."):
        build_model(wrong)
    # A CLIP-only checkpoint is accepted; the log names what starts fresh.
    torch.save({k: v for k, v in source.state_dict().items() if k.startswith("clip.")}, tmp_path / "clip_only.pt")
    caplog.set_level("INFO")
    fresh = main_task_retrieval.get_args(run_args(toy, tmp_path, "--init_model", str(tmp_path / "clip_only.pt")))
    build_model(fresh)
    assert "start fresh: frame_position_embeddings, transformerClip" in caplog.text
    # A missing CLIP tensor is an error too.
    partial = {k: v for k, v in source.state_dict().items() if k != "clip.visual.ln_post.weight"}
    torch.save(partial, tmp_path / "partial.pt")
    args.init_model = str(tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="clip.visual.ln_post.weight"):
        build_model(args)


def metrics_lines(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_train_with_qb_norm_reports_raw_and_qb_norm_every_epoch(toy, tmp_path):
    assert main_task_retrieval.main(run_args(toy, tmp_path, "--qb_norm", "--val_from_train", "4")) == 0
    lines = metrics_lines(tmp_path)
    assert [line["split"] for line in lines] == ["val", "val", "test"]
    for line in lines:
        assert {"t2v/R1", "qbnorm/t2v/R1", "qbnorm/beta", "qbnorm/k"} <= line["metrics"].keys()


def test_qb_norm_without_a_validation_split_fails_before_training(toy, tmp_path, capsys):
    assert main_task_retrieval.main(run_args(toy, tmp_path, "--qb_norm")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "--val_from_train" in err[0]
    assert not (tmp_path / "checkpoint_last.pt").exists()  # nothing was trained


def test_select_on_test_reports_the_selected_epochs_numbers(toy, tmp_path):
    from engine.trainer import run

    results = run(main_task_retrieval.get_args(run_args(toy, tmp_path, "--select_on_test", "--epochs", "3",
                                                        "--lr", "3e-3")))
    per_epoch = [line["metrics"] for line in metrics_lines(tmp_path)]
    assert len(per_epoch) == 3
    best = max(range(3), key=lambda i: (per_epoch[i]["t2v/R1"], -i))  # the first epoch with the best R@1
    assert results["selected_epoch"] == best + 1
    assert {k: v for k, v in results.items() if k != "selected_epoch"} == per_epoch[best]
    log_text = (tmp_path / "log.txt").read_text()
    assert f"test, epoch {best + 1} (best on TEST" in log_text


def test_missing_test_videos_mark_every_number_as_incomplete(toy, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy, data)
    test_ids = [line.split(",")[2] for line in (data / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1:]]
    (data / "videos" / f"{test_ids[0]}.mp4").unlink()
    argv = run_args(data, tmp_path / "out", "--epochs", "1")
    assert main_task_retrieval.main(argv) == 0
    note = f"incomplete standard test set: {len(test_ids) - 1} of {len(test_ids)} videos"
    record = metrics_lines(tmp_path / "out")[-1]
    assert record["split"] == "test" and record["incomplete"].startswith(note)
    assert note in (tmp_path / "out" / "log.txt").read_text()


def test_training_without_output_dir_writes_to_a_default_folder(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = run_args(toy, "unused", "--epochs", "1")
    argv = argv[:argv.index("--output_dir")] + argv[argv.index("--output_dir") + 2:]
    assert main_task_retrieval.main(argv) == 0
    runs = list((tmp_path / "outputs").glob("msrvtt_seqTransf_*"))
    assert len(runs) == 1 and (runs[0] / "model_final.pt").is_file()
    assert str(Path("outputs") / runs[0].name) in capsys.readouterr().err


def test_query_subset_applies_to_the_test_split_and_is_checked_before_training(toy, tmp_path, capsys):
    argv = run_args(toy, tmp_path / "ok", "--epochs", "1", "--val_from_train", "4",
                    "--eval_query_subset", "temporal=temporal_pairs.json")
    assert main_task_retrieval.main(argv) == 0
    val, test = metrics_lines(tmp_path / "ok")
    assert val["split"] == "val" and not any(k.startswith("temporal/") for k in val["metrics"])
    assert "temporal/t2v/R1" in test["metrics"]
    assert "--eval_query_subset temporal: not reported on the val split" in (tmp_path / "ok" / "log.txt").read_text()
    # An entry that is in no evaluated split stops the run before any training step.
    (tmp_path / "typo.json").write_text(json.dumps(["no such video"]))
    argv = run_args(toy, tmp_path / "bad", "--val_from_train", "4", "--eval_query_subset", f"typo={tmp_path / 'typo.json'}")
    assert main_task_retrieval.main(argv) == 2
    assert "applies to none of the evaluated splits" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoint_last.pt").exists()


def test_log_starts_with_command_and_flags_and_records_loss_each_epoch(toy, tmp_path):
    argv = run_args(toy, tmp_path, "--n_display", "1000")
    assert main_task_retrieval.main(argv) == 0
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert "command:" in lines[0] and "flags:" in lines[1] and '"n_display": 1000' in lines[1]
    assert sum("mean loss" in line for line in lines) == 2  # 2 epochs, although n_display > steps
    # An evaluation-only record names the checkpoint and says so instead of a selection rule.
    evaluate = [a for a in run_args(toy, tmp_path / "eval") if a != "--do_train"]
    assert main_task_retrieval.main(evaluate + ["--do_eval", "--init_model", str(tmp_path / "model_final.pt")]) == 0
    record = metrics_lines(tmp_path / "eval")[-1]
    assert record["selection_rule"] == "evaluation only" and record["evaluated"] == str(tmp_path / "model_final.pt")


def test_decode_failure_limit_is_global_over_workers_and_one_line(toy, tmp_path, capsys):
    # Two broken videos, a limit of one, two DataLoader workers: each worker alone stays within the
    # limit, together they cross it; the main process stops with one line, no worker traceback.
    data = break_videos(toy, tmp_path, {"video0", "video5"})
    argv = run_args(data, tmp_path / "out", "--epochs", "1", "--max_decode_failures", "1")
    argv[argv.index("--num_thread_reader") + 1] = "2"
    assert main_task_retrieval.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err and "Caught" not in errors[0]
    assert "2 of 12 videos failed to decode (all workers and ranks), more than the limit of 1" in errors[0]
    assert "python -m dataloaders.verify_videos --features_path" in errors[0]


def test_worker_errors_are_reported_as_their_own_message():
    from main_task_retrieval import one_line

    wrapped = ValueError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                         '  File "x.py", line 1, in f\n    raise DataError("msrvtt test: cannot decode v.mp4 (moov)")\n'
                         "dataloaders.base.DataError: msrvtt test: cannot decode v.mp4 (moov)\n")
    assert one_line(wrapped) == "msrvtt test: cannot decode v.mp4 (moov)"
    assert one_line(ValueError("plain")) == "plain"


def test_verify_videos_excludes_unreadable_videos_before_training(toy, tmp_path):
    data = break_videos(toy, tmp_path, {"video0", "video5"})
    out = tmp_path / "out"
    assert main_task_retrieval.main(run_args(data, out, "--epochs", "1", "--verify_videos",
                                             "--max_decode_failures", "2")) == 0
    listed = (out / "unreadable_videos_msrvtt_train.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[1] for line in listed) == ["video0.mp4", "video5.mp4"]
    log = (out / "log.txt").read_text()
    assert "--verify_videos msrvtt train: 12 videos probed" in log and "2 unreadable" in log
    assert "msrvtt train: 10 videos" in log and "using another sample" not in log  # excluded, never decoded
    # Above the limit the run stops before training, in one line naming the list.
    assert main_task_retrieval.main(run_args(data, tmp_path / "strict", "--verify_videos", "--max_decode_failures", "1")) == 2
    assert not (tmp_path / "strict" / "checkpoint_last.pt").exists()


# -- optimiser: schedule and weight-decay exclusion ------------------------------------------------------


def optim_args(*flags):
    from engine.options import build_parser

    return build_parser().parse_args(["--pretrained_clip_name", "tiny", "--clip_init", "random", *flags])


def rates_per_step(args, total):
    """The lr of the new-module group at each of ``total`` optimiser steps, read just before the step."""
    from engine.optim import build_optimizer

    class OneGroup(torch.nn.Module):
        def param_groups(self, lr, coef_lr, weight_decay):
            return [{"params": [param], "names": ["w"], "lr": lr, "weight_decay": weight_decay, "group": "new"}]

    param = torch.nn.Parameter(torch.zeros(2, 2))
    model = OneGroup()
    optimizer, scheduler = build_optimizer(model, args, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("optim", ["adamw", "bertadam"])
def test_step_k_runs_at_the_rate_for_k_over_total_steps(optim):
    """BertAdam's rate at step t is lr x schedule(t / t_total), t the steps already taken: the first step of
    a warm-up is at 0 and the last one is not (the (k + 1) / total offset put it at 0)."""
    lr, total, warmup = 1e-3, 10, 0.2
    rates = rates_per_step(optim_args("--optim", optim, "--lr", str(lr), "--warmup_proportion", str(warmup)), total)
    assert rates[0] == 0.0 and rates[1] == pytest.approx(lr * 0.1 / 0.2, rel=1e-12)
    if optim == "bertadam":  # ½(1 + cos πx), x the overall progress (not re-normalised after warm-up)
        last = 0.5 * (1 + math.cos(math.pi * 0.9))
        assert rates[2] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 0.2)), rel=1e-12)
    else:  # cosine from 1 at the end of warm-up to 0 at the end of training
        last = 0.5 * (1 + math.cos(math.pi * (0.9 - 0.2) / 0.8))
        assert rates[2] == pytest.approx(lr, rel=1e-12)
    assert rates[-1] == pytest.approx(lr * last, rel=1e-12) and rates[-1] > 0


def test_no_warmup_trains_the_first_step_at_the_full_rate():
    assert rates_per_step(optim_args("--lr", "0.5", "--warmup_proportion", "0"), 4)[0] == 0.5


def decayed_names(model, args):
    from engine.optim import optimizer_groups

    return {n for g in optimizer_groups(model, args) if g["weight_decay"] > 0 for n in g["names"]}


def per_block(patterns, blocks):
    """'...resblocks.N...' expanded over ``blocks`` (tower prefix -> block count)."""
    out = set()
    for pattern in patterns:
        tower = next((t for t in blocks if pattern.startswith(t) and ".resblocks.N." in pattern), None)
        out.update([pattern.replace(".N.", f".{i}.") for i in range(blocks[tower])] if tower else [pattern])
    return out


BLOCK_MATRICES = ["attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
BLOCK_NORM_GAINS = ["ln_1.weight", "ln_2.weight"]


def test_weight_decay_exclusion_decays_exactly_these_names_under_each_rule():
    """A tiny HMMC pre-training model (temporal transformer, MLM head, FAM projector/predictor):
    norms_and_1d decays matrices only; CLIP4Clip's list (the default under --optim bertadam) spares names
    with 'bias' and HMMC's one LayerNorm (the MLM transform's), so CLIP's ln_*, class_embedding, the
    temporal norms, the BatchNorm gains and the [MASK] embedding are decayed."""
    from modules.factory import build_model

    flags = ["--method", "hmmc", "--use_temp", "--use_frame_fea", "--freeze_layer_num", "-1", "--hmmc_stage",
             "pretrain", "--contrast_num_negative", "8", "--hmmc_projector_hidden", "32", "--max_frames", "3"]
    model = build_model(optim_args(*flags))
    towers = {"clip.visual.transformer": model.clip.config.vision.layers,
              "clip.text.transformer": model.clip.config.text.layers, "temporal.transformer": 4}
    matrices = ["clip.text.positional_embedding", "clip.text.proj", "clip.text.token_embedding.weight",
                "clip.visual.conv1.weight", "clip.visual.positional_embedding", "clip.visual.proj",
                "mlm_head.0.weight", "mlm_head.3.weight", "temporal.frame_position_embeddings.weight",
                "v_predictor.0.weight", "v_predictor.3.weight", "v_projector.0.weight", "v_projector.3.weight",
                *(f"{tower}.resblocks.N.{m}" for tower in towers for m in BLOCK_MATRICES)]
    gains = ["clip.text.ln_final.weight", "clip.visual.ln_post.weight", "clip.visual.ln_pre.weight",
             "clip.visual.class_embedding", "mlm_mask_embedding", "v_predictor.1.weight", "v_projector.1.weight",
             *(f"{tower}.resblocks.N.{g}" for tower in towers for g in BLOCK_NORM_GAINS)]
    assert decayed_names(model, optim_args(*flags)) == per_block(matrices, towers)  # the head's rule
    assert decayed_names(model, optim_args(*flags, "--weight_decay_exclude", "norms_and_1d")) == per_block(matrices, towers)
    clip4clip = per_block(matrices + gains, towers)
    assert decayed_names(model, optim_args(*flags, "--optim", "bertadam")) == clip4clip
    assert decayed_names(model, optim_args(*flags, "--weight_decay_exclude", "bias_and_LayerNorm")) == clip4clip
    spared = {n for n, p in model.named_parameters() if p.requires_grad} - clip4clip
    assert spared == {n for n, p in model.named_parameters() if p.requires_grad and "bias" in n} | {"mlm_head.2.weight"}


def test_clip4clip_exclusion_spares_the_tight_cross_encoders_norms():
    """tightTransf's cross encoder stands for CLIP4Clip's BERT, whose norms are all named LayerNorm."""
    from modules.factory import build_model

    flags = ["--sim_header", "tightTransf", "--freeze_layer_num", "-1", "--cross_num_hidden_layers", "1"]
    model = build_model(optim_args(*flags))
    decayed = decayed_names(model, optim_args(*flags, "--optim", "bertadam"))
    assert {"cross.resblocks.0.ln_1.weight", "cross.resblocks.0.ln_2.weight", "cross_ln.weight"}.isdisjoint(decayed)
    assert {"clip.visual.ln_pre.weight", "clip.text.transformer.resblocks.0.ln_1.weight", "cross.resblocks.0"
            ".mlp.c_fc.weight", "type_embeddings.weight", "clip.visual.class_embedding"} <= decayed
