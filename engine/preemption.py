"""What a well-behaved job on a shared cluster does when the scheduler asks it to stop: stop cleanly.

* SIGTERM, SIGUSR1 (SLURM, Kubernetes, ``timeout``, ``torchrun`` forwarding them) or a first Ctrl-C
  (SIGINT) only sets a flag. The loop finishes the current optimiser step, every rank agrees on that
  step (one all-reduce), rank 0 writes ``checkpoint_last.pt`` atomically and the marker
  ``preempted.json`` beside it, and the process exits with :data:`PREEMPTED_EXIT_CODE` (75,
  EX_TEMPFAIL: "try again"), which a requeue script or ``torchrun --max_restarts`` can act on. A signal
  during an evaluation stops it after the current batch (all ranks agree after each batch); the
  checkpoint is the state before that evaluation, which the resumed run re-runs. A second Ctrl-C stops
  at once (``KeyboardInterrupt``), without a checkpoint.
* DataLoader workers ignore these signals (:func:`ignore_stop_signals` is their ``worker_init_fn``):
  SLURM and ``kill -- -PGID`` signal every process of a job, and a worker killed by it would end the
  run with "DataLoader worker ... is killed by signal" instead of a checkpoint. The main process stops
  them when it exits.

Continuing where it stopped (``--resume auto``, the flag checks, the output folder) is ``engine.resume``.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import torch

from engine.distributed import all_reduce_flag

log = logging.getLogger("univtr")

PREEMPTED_EXIT_CODE = 75
PREEMPTED_MARKER = "preempted.json"  # beside checkpoint_last.pt: "the ranks saved", whatever the launcher exits with

class Preempted(Exception):
    """The run stopped on a scheduler's signal after writing its checkpoint."""

    exit_code = PREEMPTED_EXIT_CODE


class EvaluationStopped(Exception):
    """An evaluation stopped part-way on a signal (every rank at the same batch)."""


class StopRequest:
    """Set by SIGTERM / SIGUSR1 / a first SIGINT; the training loop polls it after every optimiser step
    and the evaluation loaders after every batch (:class:`StopAtSignal`)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    active: "StopRequest | None" = None  # the one installed in this process, for the evaluation loaders

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}
        self._pid = os.getpid()
        self.after_eval_batch = lambda: None  # tests: engine.preemption.FaultHooks

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        StopRequest.active = self
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        StopRequest.active = None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            if _in_dataloader_worker():  # forked before its worker_init_fn ran: leave it to the main process
                return
            # A forked child (a multiprocessing pool) inherited the handler: it must still die on
            # SIGTERM, or Pool.terminate() waits for it forever.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt("a second Ctrl-C: stopped at once, without writing a checkpoint")
        if self.signal is None:
            again = " (Ctrl-C again to stop at once, without a checkpoint)" if signum == signal.SIGINT else ""
            log.warning("received %s: finishing this step (or evaluation batch), then writing checkpoint_last.pt and "
                        "exiting with code %d%s", signal.Signals(signum).name, PREEMPTED_EXIT_CODE, again)
        self.signal = signum


def _in_dataloader_worker() -> bool:
    import multiprocessing

    from torch.utils.data._utils.worker import _worker_loop

    return (torch.utils.data.get_worker_info() is not None
            or getattr(multiprocessing.current_process(), "_target", None) is _worker_loop)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the engine's DataLoaders: SIGTERM, SIGUSR1 and SIGINT sent to the whole job
    are the main process's to act on (it finishes the step, saves, and then ends the workers)."""
    for sig in StopRequest.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopAtSignal:
    """``loader`` (an evaluation loader of this rank's share; every rank has as many batches) whose
    iteration, while a training run's :class:`StopRequest` is installed, raises
    :class:`EvaluationStopped` on every rank at once after the first batch at which any rank has been
    signalled. Its other attributes are the loader's."""

    def __init__(self, loader, env):
        self.loader, self.env = loader, env

    def __getattr__(self, name):
        return getattr(self.__dict__["loader"], name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        stop = StopRequest.active
        for batch in self.loader:
            yield batch
            if stop is not None:
                stop.after_eval_batch()
                if all_reduce_flag(stop.requested, self.env):
                    raise EvaluationStopped(f"evaluation stopped on {signal.Signals(stop.signal).name}")


def write_preempted_marker(output_dir: Path, step: int, signum: int | None) -> None:
    """``<output_dir>/preempted.json``: the checkpoint beside it was written on a signal. torchrun exits 1
    after forwarding a signal whatever its ranks return, so a requeue script looks for this file
    (scripts/slurm/train.sbatch removes it before each launch)."""
    import json

    name = signal.Signals(signum).name if signum else None
    (output_dir / PREEMPTED_MARKER).write_text(json.dumps({"step": step, "signal": name,
                                                            "checkpoint": str(output_dir / "checkpoint_last.pt")}))


class FaultHooks:
    """Fault injection for the tests (environment variables; nothing happens without them):
    UNIVTR_FAULT_AT_STEP=N dies abruptly (exit 17) after step N; UNIVTR_SIGNAL_AT_STEP=N (after step N),
    UNIVTR_SIGNAL_BEFORE_STEP=N (as step N begins, before it reads its first batch: a signal that comes
    while the loop waits for data) or UNIVTR_SIGNAL_AT_EVAL_BATCH=N (after the N-th evaluation batch of
    the run) sends the signals
    UNIVTR_SIGNAL (comma-separated names, default SIGTERM, sent in turn) to this process, or with
    UNIVTR_SIGNAL_TO=job to every process of the job, as SLURM does: the launcher (torchrun's agent when
    there is one), its ranks and their DataLoader workers. Only on UNIVTR_FAULT_RANK (default: every
    rank) and only in torchrun's first attempt (TORCHELASTIC_RESTART_COUNT 0), so a restarted group runs
    clean."""

    def __init__(self, env):
        rank = os.environ.get("UNIVTR_FAULT_RANK")
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        active = first_attempt and (rank is None or int(rank) == env.rank)
        number = lambda name: int(os.environ.get(name, "0")) if active else 0  # noqa: E731
        self.die_at, self.signal_at = number("UNIVTR_FAULT_AT_STEP"), number("UNIVTR_SIGNAL_AT_STEP")
        self.signal_before = number("UNIVTR_SIGNAL_BEFORE_STEP")
        self.signal_at_eval_batch, self.eval_batches = number("UNIVTR_SIGNAL_AT_EVAL_BATCH"), 0
        self.signals = [signal.Signals[name.strip()] for name in os.environ.get("UNIVTR_SIGNAL", "SIGTERM").split(",")]
        self.whole_job = os.environ.get("UNIVTR_SIGNAL_TO") == "job"

    def before_step(self, step: int) -> None:
        if self.signal_before and step == self.signal_before:
            self._send()

    def after_step(self, step: int) -> None:
        if self.die_at and step == self.die_at:
            os._exit(17)
        if self.signal_at and step == self.signal_at:
            self._send()

    def after_eval_batch(self) -> None:
        self.eval_batches += 1
        if self.signal_at_eval_batch and self.eval_batches == self.signal_at_eval_batch:
            self._send()

    def _send(self) -> None:
        for signum in self.signals:
            targets = _job_processes() if self.whole_job else [os.getpid()]
            children = set(_process_tree().get(os.getpid(), []))
            for pid in sorted(targets, key=lambda pid: pid == os.getpid()):  # this process last
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
                if pid in children:
                    _wait_unless_ignored(pid, signum)


def _wait_unless_ignored(pid: int, signum: int) -> None:
    """Return once child ``pid`` ignores ``signum`` or has exited: a DataLoader worker that a signal
    kills must have died before this process goes on, as when the signal comes while it waits for data."""
    import select

    try:
        ignored = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("SigIgn:")), 16)
        if ignored >> (signum - 1) & 1:
            return
        handle = os.pidfd_open(pid)
    except (OSError, StopIteration):
        return  # already gone
    try:
        select.select([handle], [], [], 30.0)  # readable when it exits
    finally:
        os.close(handle)


def _process_tree() -> dict[int, list[int]]:
    """{pid: its children's pids}, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    return children


def _job_processes() -> list[int]:
    """The launcher (torchrun's agent, else this process) and all its descendants, from /proc."""
    root = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else os.getpid()
    children = _process_tree()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found
