"""Preemption and restarts on 2 gloo ranks under torchrun: a SIGTERM mid-epoch writes a checkpoint and
exits 75, --resume auto continues to the uninterrupted run's weights bit for bit, torchrun
--max_restarts recovers from a killed rank, and resumes under other flags or into unusable folders
stop in one line."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main_task_retrieval
from tests.test_engine import run_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from preprocess.make_toy_dataset import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, num_train=12, num_test=6, size=32, fps=5,
                            seconds=1.6, workers=1, progress=False)


def torchrun(argv, *, restarts=0, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max_restarts", str(restarts), str(ROOT / "main_task_retrieval.py"), *argv]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def weights(out):
    return torch.load(Path(out) / "model_final.pt", map_location="cpu", weights_only=True)["model"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


@pytest.fixture(scope="module")
def straight(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    result = torchrun(run_args(toy, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return weights(out)


def test_sigterm_mid_epoch_then_resume_auto_is_bit_identical(toy, tmp_path, straight):
    out = tmp_path / "run"
    # Only rank 0 gets the signal, after step 4 of 6 (mid epoch 2): both ranks must stop after that step.
    stopped = torchrun(run_args(toy, out, "--resume", "auto"), env_extra={"UNIVTR_SIGNAL_AT_STEP": "4",
                                                                          "UNIVTR_FAULT_RANK": "0"})
    assert stopped.returncode != 0 and "exitcode  : 75" in stopped.stderr, stopped.stderr[-3000:]
    state = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["step_in_epoch"]) == (1, 4, 1)
    assert not (out / "model_final.pt").exists()
    assert "stopped after step 4 on a signal" in (out / "log.txt").read_text()
    resumed = torchrun(run_args(toy, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "--resume auto: continuing from" in (out / "log.txt").read_text()
    assert_same(weights(out), straight)


def test_torchrun_restart_after_a_killed_rank_finishes_with_the_same_weights(toy, tmp_path, straight):
    out = tmp_path / "run"
    # Rank 1 dies abruptly after step 5 in the first attempt; torchrun restarts the group, which resumes
    # from the step-4 checkpoint (saved every 2 steps) and redoes step 5.
    result = torchrun(run_args(toy, out, "--resume", "auto", "--save_every_steps", "2"), restarts=1,
                      env_extra={"UNIVTR_FAULT_AT_STEP": "5", "UNIVTR_FAULT_RANK": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "no " in log and "starting fresh" in log and "--resume auto: continuing from" in log
    assert_same(weights(out), straight)


def test_resume_with_result_changing_flags_is_one_line(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main_task_retrieval.main(run_args(toy, out, "--epochs", "1")) == 0
    capsys.readouterr()
    argv = run_args(toy, out, "--epochs", "2", "--resume", "auto", "--lr", "5e-4", "--num_thread_reader", "0")
    assert main_task_retrieval.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "--epochs 1 there, 2 now" in err[0] and "--lr 0.001 there, 0.0005 now" in err[0]
    assert "--resume_allow_changes" in err[0] and "n_display" not in err[0]
    assert main_task_retrieval.main(argv + ["--resume_allow_changes"]) == 0
    assert "--resume_allow_changes: continuing" in (out / "log.txt").read_text()


def test_output_folder_that_cannot_take_a_checkpoint_is_one_line(toy, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main_task_retrieval.main(run_args(toy, blocker / "out")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "cannot be created" in err[0]
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 9, 10 ** 9, 1000))
    assert main_task_retrieval.main(run_args(toy, tmp_path / "full")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "GiB free; a checkpoint of this model needs about" in err[0]
    assert not (tmp_path / "full" / "checkpoint_last.pt").exists()


def test_forked_children_still_die_on_sigterm():
    # Pools forked while the handler is installed (--verify_videos runs inside the training run) are
    # terminated with SIGTERM: the inherited handler must not turn that into a flag and hang the pool.
    import multiprocessing
    import signal

    from engine.preemption import StopRequest

    context = multiprocessing.get_context("fork")
    ready = context.Event()
    with StopRequest() as stop:
        child = context.Process(target=_wait_for_signal, args=(ready,))
        child.start()
        assert ready.wait(timeout=20)  # a signal arriving mid-fork would be dropped by Python itself
        child.terminate()
        child.join(timeout=20)
        assert child.exitcode == -signal.SIGTERM
        assert not stop.requested  # the parent's flag is untouched


def _wait_for_signal(ready):
    import signal

    ready.set()
    while True:
        signal.pause()
