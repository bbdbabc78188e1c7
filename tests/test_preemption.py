"""Preemption and restarts on 2 gloo ranks under torchrun: a SIGTERM mid-epoch writes a checkpoint and
exits 75, --resume auto continues to the uninterrupted run's weights bit for bit, torchrun
--max_restarts recovers from a killed rank, and resumes under other flags or into unusable folders
stop in one line. Ctrl-C and signals to every process of a job (1 process with DataLoader workers, or
torchrun's agent, its ranks and their workers), mid-epoch and mid-evaluation, end the same way; the
SLURM scripts requeue a run that saved on a signal."""
import json
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


# ----------------------------------------------------------------------------------------------------
# Signals sent to the whole job (SLURM, `kill -- -PGID`, `timeout`) and Ctrl-C: the run's fault hooks
# send them at a known step or evaluation batch (engine.preemption.FaultHooks), to this process or,
# with UNIVTR_SIGNAL_TO=job, to the launcher and every process under it, DataLoader workers included.


def signalled(argv, env_extra, *, ranks=1):
    """The run of ``argv`` in its own session (what it signals stays inside it), 1 process or 2 gloo ranks."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env_extra}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] \
        if ranks > 1 else [sys.executable]
    return subprocess.run([*launcher, str(ROOT / "main_task_retrieval.py"), *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600, start_new_session=True)


def checkpoint_position(out):
    state = torch.load(Path(out) / "checkpoint_last.pt", weights_only=True)
    return state["epoch"], state["step"], state["step_in_epoch"], state["extra"]["unevaluated_epoch"]


def assert_preempted(result, out, step, ranks=1):
    """Exit 75 (a single process; torchrun's agent exits 1 after forwarding a signal), every rank said so
    in one line, no traceback of a rank or a DataLoader worker, and the marker names the step."""
    if ranks == 1:
        assert result.returncode == 75, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    else:  # the only traceback is the agent's own, for the signal it received
        assert result.stderr.count("Traceback") == 1 and "SignalException" in result.stderr, result.stderr[-3000:]
    assert "DataLoader worker" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("preempted: ")]
    assert len(lines) == ranks, result.stderr[-3000:]
    assert "continue with --resume auto (exit code 75: requeue)" in lines[0]
    assert json.loads((Path(out) / "preempted.json").read_text())["step"] == step
    assert not (Path(out) / "model_final.pt").exists()


def resume_in_process(toy, out, *extra):
    assert main_task_retrieval.main(run_args(toy, out, "--resume", "auto", *extra)) == 0
    log = (Path(out) / "log.txt").read_text()
    assert "--resume auto: continuing from" in log and (Path(out) / "model_final.pt").exists()
    assert not (Path(out) / "preempted.json").exists()  # the marker speaks of the latest run only
    return log


def test_ctrl_c_writes_a_checkpoint_and_resume_auto_continues(toy, tmp_path):
    out = tmp_path / "run"
    # A terminal sends Ctrl-C to every process of the foreground job: the main process and its workers.
    result = signalled(run_args(toy, out, "--num_thread_reader", "2"),
                       {"UNIVTR_SIGNAL_AT_STEP": "4", "UNIVTR_SIGNAL": "SIGINT", "UNIVTR_SIGNAL_TO": "job"})
    assert_preempted(result, out, step=4)
    assert "KeyboardInterrupt" not in result.stderr
    assert "received SIGINT: finishing this step (or evaluation batch)" in result.stderr
    assert "Ctrl-C again to stop at once" in result.stderr
    assert checkpoint_position(out) == (1, 4, 1, None)
    resume_in_process(toy, out)


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(toy, tmp_path):
    out = tmp_path / "run"
    result = signalled(run_args(toy, out), {"UNIVTR_SIGNAL_AT_STEP": "2", "UNIVTR_SIGNAL": "SIGINT,SIGINT"})
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("interrupted: a second Ctrl-C stopped the run at once")
    assert not (out / "checkpoint_last.pt").exists() and not (out / "preempted.json").exists()
    assert "stopped after step" not in (out / "log.txt").read_text()


def test_sigterm_to_the_whole_job_mid_epoch_with_workers_checkpoints(toy, tmp_path):
    out = tmp_path / "run"
    # The signal comes as step 5 begins, before it reads its batch from the (signalled) workers.
    result = signalled(run_args(toy, out, "--num_thread_reader", "2"),
                       {"UNIVTR_SIGNAL_BEFORE_STEP": "5", "UNIVTR_SIGNAL_TO": "job"})
    assert_preempted(result, out, step=5)
    assert checkpoint_position(out) == (1, 5, 2, None)
    resume_in_process(toy, out)


def test_sigterm_to_the_whole_job_mid_evaluation_reruns_it_on_resume(toy, tmp_path):
    out = tmp_path / "run"
    # --select_on_test evaluates test after every epoch: the signal comes after the first batch (2 of the
    # 6 captions) of the evaluation after epoch 1.
    argv = run_args(toy, out, "--num_thread_reader", "2", "--select_on_test", "--batch_size_val", "2")
    result = signalled(argv, {"UNIVTR_SIGNAL_AT_EVAL_BATCH": "1", "UNIVTR_SIGNAL_TO": "job"})
    assert_preempted(result, out, step=3)
    assert "stopped during the evaluation after epoch 1" in result.stderr
    assert checkpoint_position(out) == (1, 3, 0, 0)  # the state before that evaluation
    assert not (out / "metrics.jsonl").exists()
    log = resume_in_process(toy, out, "--select_on_test", "--batch_size_val", "2")
    assert "the evaluation after epoch 1 was interrupted: running it first" in log
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_sigterm_to_the_whole_torchrun_job_mid_epoch_resumes_bit_identical(toy, tmp_path, straight):
    out = tmp_path / "run"
    # Rank 0 signals the agent, both ranks and their workers as step 5 begins; the agent forwards the signal
    # again and waits for the ranks (torchrun --shutdown_timeout, 30 s by default) before killing them.
    result = signalled(run_args(toy, out, "--resume", "auto", "--num_thread_reader", "1"),
                       {"UNIVTR_SIGNAL_BEFORE_STEP": "5", "UNIVTR_FAULT_RANK": "0", "UNIVTR_SIGNAL_TO": "job"}, ranks=2)
    assert_preempted(result, out, step=5, ranks=2)
    assert "Received 15 death signal, shutting down workers" in result.stderr  # the agent got it too
    assert checkpoint_position(out) == (1, 5, 2, None)
    resumed = torchrun(run_args(toy, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(weights(out), straight)


def test_sigterm_to_the_whole_torchrun_job_mid_evaluation(toy, tmp_path):
    out = tmp_path / "run"
    argv = run_args(toy, out, "--resume", "auto", "--num_thread_reader", "1", "--select_on_test",
                    "--batch_size_val", "2")
    result = signalled(argv, {"UNIVTR_SIGNAL_AT_EVAL_BATCH": "1", "UNIVTR_FAULT_RANK": "0",
                              "UNIVTR_SIGNAL_TO": "job"}, ranks=2)
    assert_preempted(result, out, step=3, ranks=2)
    assert "stopped during the evaluation after epoch 1" in result.stderr
    assert checkpoint_position(out) == (1, 3, 0, 0)  # resumed, it evaluates first (1-process test above)


def test_dataloader_workers_leave_stop_signals_to_the_main_process(tmp_path):
    # Each item signals its own worker process; the engine's loaders' workers ignore it, and the
    # epoch completes with every item (the main process's flag is untouched).
    from types import SimpleNamespace

    from engine.distributed import DistEnv
    from engine.evaluate import eval_loader
    from engine.perf import loader_options
    from engine.preemption import StopRequest
    from torch.utils.data import DataLoader

    args = SimpleNamespace(batch_size_val=2, num_thread_reader=2, pin_memory="off", persistent_workers=True,
                           prefetch_factor=2)
    dataset = SelfSignalling()
    with StopRequest() as stop:
        loaders = [DataLoader(dataset, batch_size=2, num_workers=2, **loader_options(args, DistEnv(), 2)),
                   eval_loader(dataset, args, "cpu")]
        for loader in loaders:
            assert torch.cat(list(loader)).tolist() == list(range(len(dataset)))
        assert not stop.requested


class SelfSignalling(torch.utils.data.Dataset):
    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __len__(self):
        return 6

    def __getitem__(self, index):
        import signal

        os.kill(os.getpid(), getattr(signal, self.SIGNALS[index % 3]))
        return index


# ----------------------------------------------------------------------------------------------------
# scripts/slurm: run with stand-ins for torchrun, srun, scontrol and scancel on PATH.

SLURM_SCRIPTS = ("train.sbatch", "train_multinode.sbatch")

# The launcher stand-in records its command line, then as STUB says: exits with a code, writes the
# run's marker and exits 1 (what torchrun does after its ranks saved on a signal), or waits for
# SIGTERM (after telling the test through the READY fifo) and then does the latter.
STUB_LAUNCHER = """#!/bin/bash
echo "$(basename "$0") $*" >> "$CALLS"
case "$STUB" in
  exit*) exit "${STUB#exit}" ;;
  saved) echo '{"step": 4}' > "$OUTPUT_DIR/preempted.json"; exit 1 ;;
  wait) trap 'kill "$pause"; echo "{\\"step\\": 4}" > "$OUTPUT_DIR/preempted.json"; exit 1' TERM
        sleep 600 & pause=$!
        echo ready > "$READY"
        wait "$pause" ;;
esac
"""
STUB_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$CALLS"
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-a\\ngpu-b\\n'; fi
"""


def slurm_env(tmp_path, stub, **extra):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("torchrun", STUB_LAUNCHER), ("srun", STUB_LAUNCHER), ("scontrol", STUB_SCONTROL),
                       ("scancel", STUB_SCONTROL.replace("scontrol", "scancel"))):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 1\n")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"), "STUB": stub,
            "CONFIG": str(config), "OUTPUT_DIR": str(tmp_path / "out"), "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2",
            "SLURM_JOB_NODELIST": "gpu-[a-b]", "SLURM_GPUS_ON_NODE": "4", **extra}


def sbatch(script, env, *flags):
    return subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / script), *flags], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("script", SLURM_SCRIPTS + ("requeue.sh",))
def test_slurm_scripts_parse_and_ask_for_requeue_and_an_early_signal(script):
    path = ROOT / "scripts" / "slurm" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    directives = [line.split(None, 1)[1] for line in path.read_text().splitlines() if line.startswith("#SBATCH ")]
    if script != "requeue.sh":
        assert "--requeue" in directives and "--signal=B:USR1@300" in directives


@pytest.mark.parametrize("script", SLURM_SCRIPTS)
def test_slurm_job_requeues_when_the_run_saved_on_a_signal(script, tmp_path):
    env = slurm_env(tmp_path, "saved")
    result = sbatch(script, env, "--lr", "1e-4")
    assert result.returncode == 75, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[-1] == "scontrol requeue 4242"
    launch = next(line for line in calls if line.startswith(("torchrun", "srun")))
    assert launch.endswith(f"main_task_retrieval.py --config {env['CONFIG']} --output_dir {env['OUTPUT_DIR']} "
                           "--resume auto --lr 1e-4")
    assert "--signals_to_handle SIGTERM,SIGINT,SIGUSR1 --shutdown_timeout 240" in launch
    if script == "train_multinode.sbatch":  # one torchrun per node, meeting at the job's first node
        assert launch.startswith("srun --kill-on-bad-exit=0 torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d "
                                 "--rdzv_endpoint gpu-a:29500 --rdzv_id 4242")
    else:
        assert launch.startswith("torchrun --standalone --nnodes 1 --nproc_per_node 4")


@pytest.mark.parametrize("code", [0, 3])
def test_slurm_job_passes_other_exit_codes_on_without_requeue(code, tmp_path):
    env = slurm_env(tmp_path, f"exit{code}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "preempted.json").write_text("{}")  # left by an earlier attempt: not this one's
    result = sbatch("train.sbatch", env)
    assert result.returncode == code, result.stderr
    assert "requeue" not in (tmp_path / "calls").read_text()


def test_slurm_early_warning_reaches_the_run_and_requeues(tmp_path):
    import signal

    ready = tmp_path / "ready"
    os.mkfifo(ready)
    env = slurm_env(tmp_path, "wait", READY=str(ready))
    job = subprocess.Popen(["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch")], env=env, text=True,
                           stderr=subprocess.PIPE)
    assert ready.read_text() == "ready\n"  # blocks until the stand-in torchrun runs
    job.send_signal(signal.SIGUSR1)  # SLURM's --signal=B:USR1@300
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 75, stderr
    assert (tmp_path / "calls").read_text().splitlines()[-1] == "scontrol requeue 4242"


def test_slurm_job_without_its_settings_is_one_line(tmp_path):
    env = {k: v for k, v in slurm_env(tmp_path, "exit0").items() if k not in ("CONFIG", "OUTPUT_DIR")}
    result = sbatch("train.sbatch", env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: set CONFIG (") and ", OUTPUT_DIR (" in result.stderr
    assert not (tmp_path / "calls").exists()
