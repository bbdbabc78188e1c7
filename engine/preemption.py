"""What a well-behaved job on a shared cluster does: stop cleanly when the scheduler asks, continue
where it stopped, refuse to continue under other flags, and fail before any work when its output
folder cannot take a checkpoint.

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
* ``--resume auto`` continues from ``<output_dir>/checkpoint_last.pt`` when it exists and starts fresh
  otherwise, so a requeued or restarted job just continues.
* A checkpoint whose flags differ from the run's in anything that changes the result stops the run with
  one line naming them; ``--resume_allow_changes`` continues anyway and says so in the log.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import torch

log = logging.getLogger("univtr")

PREEMPTED_EXIT_CODE = 75
PREEMPTED_MARKER = "preempted.json"  # beside checkpoint_last.pt: "the ranks saved", whatever the launcher exits with

# Flags that do not change what a run computes: where things are, how they are read or reported.
# Every other flag must match for --resume (the method, backbone, batch, data, frames, precision...).
RESUME_NEUTRAL_FLAGS = frozenset({
    "output_dir", "resume", "resume_allow_changes", "config", "device", "num_thread_reader", "decode_threads",
    "n_display", "save_every_steps", "max_nonfinite_steps", "batch_size_val", "eval_tile_elements", "features_path",
    "pretrained_dir", "lmdb_path", "eval_features_path", "do_eval", "dsl", "dsl_temperature", "qb_norm",
    "qb_norm_betas", "qb_norm_topk", "qb_norm_min_hits", "qb_norm_bank_size", "legacy_metrics", "eval_query_subset",
    "verify_videos", "tensorboard", "compile", "video_backend", "init_model",
    # speed settings (engine.perf, the video loader's hand-over): the same computation, faster
    "no_compile", "no_tf32", "no_fused_adamw", "pin_memory", "persistent_workers", "prefetch_factor", "loader_frames",
    "jpeg_decode",
})


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
        from engine.distributed import all_reduce_flag

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


def resolve_resume(args, output_dir: Path | None) -> str | None:
    """The checkpoint to resume from: --resume PATH, or for --resume auto the output folder's
    checkpoint_last.pt when present (None: start fresh)."""
    if args.resume != "auto":
        return args.resume
    if output_dir is None:
        raise ValueError("--resume auto continues from <output_dir>/checkpoint_last.pt: give --output_dir")
    path = output_dir / "checkpoint_last.pt"
    if path.is_file():
        log.info("--resume auto: continuing from %s", path)
        return str(path)
    log.info("--resume auto: no %s yet, starting fresh", path)
    return None


def check_resume_flags(saved: dict, args, path: str) -> None:
    """One line naming every result-changing flag that differs from the checkpoint's."""
    from engine.checkpoint import plain_args

    now = plain_args(args)
    differ = sorted(k for k in saved.keys() | now.keys()
                    if k not in RESUME_NEUTRAL_FLAGS and saved.get(k) != now.get(k))
    if not differ:
        return
    listed = "; ".join(f"--{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ)
    if getattr(args, "resume_allow_changes", False):
        log.warning("--resume_allow_changes: continuing %s with other flags (%s); the result will not equal an "
                    "uninterrupted run's", path, listed)
        return
    raise ValueError(f"--resume {path}: the checkpoint was made with other flags that change the result: {listed} "
                     "(same flags, or --resume_allow_changes to continue anyway)")


def check_output_dir(output_dir: Path, model) -> None:
    """Before any work: the folder is writable and has room for a training checkpoint (the weights
    plus two AdamW moments per trainable parameter, and one spare copy while it is replaced)."""
    probe = output_dir / f".write_test{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--output_dir {output_dir} is not writable ({error.strerror or error}); choose another "
                         "folder") from None
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    moments = sum(2 * p.numel() * 4 for p in model.parameters() if p.requires_grad)
    needed = 2 * (weights + moments)
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise ValueError(f"--output_dir {output_dir} has {free / 2 ** 30:.2f} GiB free; a checkpoint of this model "
                         f"needs about {needed / 2 ** 30:.2f} GiB (written next to the previous one, then renamed): "
                         "free space or choose another folder")


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
