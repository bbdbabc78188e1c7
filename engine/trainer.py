"""The training and evaluation loop behind ``main_task_retrieval.py``.

One optimiser step sees ``--batch_size`` (caption, video) pairs in total: each of the W ranks takes
batch_size / (W x accumulation) pairs per micro-step. Features are gathered across ranks for the
contrastive loss (see ``engine.distributed``); evaluation is sharded over ranks and gathered.
"""
from __future__ import annotations

import json
import logging
import math
import random
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from dataloaders import SelectionRule, load_records
from engine import checkpoint as ckpt
from engine.distributed import DistEnv, all_reduce_flag, barrier, broadcast_object, close_distributed, init_distributed
from engine.evaluate import to_device
from engine.optim import build_optimizer
from engine.options import evaluation_args
from engine.perf import compile_model, configure_backends
from engine.preemption import (PREEMPTED_MARKER, EvaluationStopped, FaultHooks, Preempted, StopRequest,
                               write_preempted_marker)
from engine.resume import check_output_dir, check_output_writable, check_resume_flags, resolve_resume
from engine.step import StepContext
from engine.tasks import EvalContext, Task, get_task
from engine.train_data import EpochSampler  # noqa: F401  (public here too)
from modules.clip.transformer import Attention
from modules.factory import count_parameters

log = logging.getLogger("univtr")


# ----------------------------------------------------------------------------------------------------
# Precision


def convert_clip_to_fp16(model) -> None:
    """CLIP4Clip's fp16 weights: linear, conv and attention weights and the two projections of CLIP in
    half precision (norms and embeddings stay fp32), trained as such."""
    for module in model.clip.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            module.half()
        elif isinstance(module, Attention):
            module.in_proj_weight.data = module.in_proj_weight.data.half()
            module.in_proj_bias.data = module.in_proj_bias.data.half()
    model.clip.visual.proj.data = model.clip.visual.proj.data.half()
    model.clip.text.proj.data = model.clip.text.proj.data.half()


# ----------------------------------------------------------------------------------------------------
# One training step


def step_losses(model, batch: dict, env: DistEnv, precision: str = "fp32", step: int = 0,
                micro_step: int = 0) -> dict[str, torch.Tensor]:
    """One micro-step's named losses, computed by the head's ``training_step`` through ``model``'s
    forward (``model`` may be DDP-wrapped, so DDP sees the step). The loss is the same on every rank."""
    return model(batch, StepContext(env, precision, step, micro_step))


# ----------------------------------------------------------------------------------------------------
# The run


def setup_logging(output_dir: Path | None, env: DistEnv) -> None:
    handlers: list[logging.Handler] = []
    if env.is_main:
        handlers.append(logging.StreamHandler())
        if output_dir is not None:
            handlers.append(logging.FileHandler(output_dir / "log.txt"))
    else:
        handlers.append(logging.NullHandler())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers,
                        force=True)


def seed_everything(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)  # the same initialisation of new modules on every rank


class TensorBoardScalars(logging.Handler):
    """--tensorboard: the scalars of metrics.jsonl (``SPLIT/METRIC`` at x = epoch) and the training loss
    and lr the loop logs (``train/loss``, ``train/lr`` at x = step; ``train/epoch_loss`` at x = epoch),
    as TensorBoard events in ``<output_dir>/tensorboard``. The loop's log records are read by their
    arguments, so the loop itself knows nothing of TensorBoard."""

    STEP = "epoch %d step %d/%d loss"
    EPOCH = "epoch %d/%d done: mean loss"

    def __init__(self, folder: Path):
        super().__init__(logging.INFO)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), flush_secs=30)

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith(self.STEP):
            epoch, step_in_epoch, steps, loss, lr = record.args[:5]
            step = (epoch - 1) * steps + step_in_epoch
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        elif message.startswith(self.EPOCH):
            epoch, _, loss, _, lr = record.args[:5]
            self.writer.add_scalar("train/epoch_loss", loss, epoch)
            self.writer.flush()

    def evaluation(self, record: dict) -> None:
        for name, value in record.get("metrics", {}).items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{record['split']}/{name}", value, record.get("epoch") or 0)
        self.writer.flush()


class MetricsLog:
    def __init__(self, output_dir: Path | None, env: DistEnv, rule: str, tensorboard: bool = False):
        self.path = output_dir / "metrics.jsonl" if output_dir is not None and env.is_main else None
        self.rule = rule
        self.board = None
        for old in [h for h in log.handlers if isinstance(h, TensorBoardScalars)]:  # an earlier run in this process
            log.removeHandler(old)
            old.writer.close()
        if tensorboard and self.path is not None:
            self.board = TensorBoardScalars(output_dir / "tensorboard")
            log.addHandler(self.board)

    def write(self, result=None, **record) -> None:
        """One line: the selection rule, the time, ``record``, and ``result``'s metrics with the
        incomplete-test-set note when videos were missing."""
        if self.path is None:
            return
        if result is not None:
            record["metrics"] = result.metrics
            if getattr(result, "incomplete", None):
                record["incomplete"] = result.incomplete
        record = {"selection_rule": self.rule, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.evaluation(record)


def default_output_dir(args, env: DistEnv) -> Path:
    """outputs/<datatype>_<method>_<timestamp>/, the same on every rank (rank 0's clock)."""
    stamp = broadcast_object(time.strftime("%Y%m%d-%H%M%S"), env)
    method = getattr(args, "method", None) or args.sim_header
    return Path("outputs") / f"{args.datatype}_{method}_{stamp}"


def log_run_header(args, env: DistEnv) -> None:
    """log.txt starts with the command line and every resolved flag."""
    log.info("command: %s", shlex.join([sys.executable, *sys.argv]))
    log.info("flags: %s", json.dumps(ckpt.plain_args(args), sort_keys=True))
    log.info("world size %d, device %s, code version %s", env.world_size, env.device, ckpt.code_version())


def run(args) -> dict:
    """Train and/or evaluate as the flags say; returns the last metrics (rank 0) or {}."""
    pretraining = getattr(args, "do_pretrain", False)
    training = args.do_train or pretraining
    if not (training or args.do_eval):
        raise ValueError("nothing to do: pass --do_train (--do_pretrain) and/or --do_eval")
    env = init_distributed(args.device)
    try:
        result = _run(args, env, training, pretraining)
        barrier(env)  # no rank tears its group down while another still talks to it
        return result
    finally:
        close_distributed()


def _run(args, env: DistEnv, training: bool, pretraining: bool) -> dict:
    task = get_task(args)
    if training and not args.output_dir:  # a multi-hour run must not save nothing
        args.output_dir = str(default_output_dir(args, env))
        if env.is_main:
            print(f"--output_dir not given: writing to {args.output_dir}", file=sys.stderr)
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None and env.is_main:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--output_dir {output_dir} cannot be created ({error.strerror or error}); choose "
                             "another folder") from None
        check_output_writable(output_dir)
    load_records(evaluation_args(args), "test")  # a wrong --data_path (a cheap read) before the model's weights
    setup_logging(output_dir, env)
    log_run_header(args, env)
    configure_backends(args, env)
    seed_everything(args.seed, env.rank)

    model = task.build_model(args).to(env.device)
    if not training:
        ckpt.check_evaluated_weights(model, args)
    if args.precision == "fp16_weights":
        convert_clip_to_fp16(model)
    compile_model(model, args, env)
    eval_args = evaluation_args(args)
    if pretraining:
        rule = SelectionRule(None, "pretraining: zero-shot test retrieval after every epoch (no selection); "
                                   "the final weights are kept")
    else:
        rule = task.selection_rule(args)
    metrics_log = MetricsLog(output_dir, env, rule.description if training else "evaluation only",
                             tensorboard=getattr(args, "tensorboard", False))
    log.info("model %s: %s trainable / %s parameters; world size %d; device %s", model.head_name,
             f"{count_parameters(model, trainable_only=True):,}", f"{count_parameters(model):,}", env.world_size,
             env.device)

    test_set = task.build_split(eval_args, "test", env, model.tokenizer())
    log.info(test_set.describe())
    if training:
        if env.is_main and output_dir is not None:
            check_output_dir(output_dir, model)
        with StopRequest() as stop:  # SIGTERM / SIGUSR1 / Ctrl-C: finish the step or batch, checkpoint, exit 75
            return train(model, args, env, rule, test_set, output_dir, metrics_log, stop, task)
    task.check(args, rule, False, [test_set])
    result = task.evaluate(model, test_set, args, env, EvalContext("eval", output_dir=output_dir))
    if result is None:
        return {}
    log.info("test, evaluation only of %s:\n%s", args.init_model or "the initial weights (no --init_model)",
             result.table)
    metrics_log.write(result, split="test", epoch=None, evaluated=args.init_model or "initial weights (no --init_model)")
    return result.metrics


def train(model, args, env: DistEnv, rule, test_set, output_dir: Path | None, metrics_log: MetricsLog,
          stop: StopRequest | None, task: Task) -> dict:
    data = task.build_train_data(args, env, tokenizer=model.tokenizer())
    train_set = getattr(data.dataset, "text_dataset", None) and data.dataset  # QB-Norm's bank (map-style data)
    qb_norm = getattr(args, "qb_norm", False)
    val_set = task.build_split(args, "val", env, model.tokenizer()) if rule.split == "val" or qb_norm else None
    if val_set is not None:
        log.info(val_set.describe())
    task.check(args, rule, True, [val_set if rule.split == "val" else None, test_set])
    contexts = {role: EvalContext(role, train_set, val_set, output_dir) for role in ("epoch", "select", "report")}
    model.check_batch(args.batch_size)  # e.g. HMMC's queue length must be a multiple of the global batch

    optimizer, scheduler = build_optimizer(model, args, data.total_steps(args.epochs))
    scaler = torch.amp.GradScaler(env.device.type) if args.precision == "amp_fp16" else None
    ddp_model = model
    if env.distributed:
        # No buffer broadcast: every rank updates a head's buffers (queues, ...) identically from gathered
        # features, so re-sending rank 0's (50 MB of HMMC queues at B/32) every step would only cost time.
        # A task model whose step leaves parts of its head unused (QA) says so: DDP then skips their gradients.
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None, broadcast_buffers=False,
            find_unused_parameters=getattr(model, "ddp_find_unused_parameters", False))

    start_epoch, step, step_in_epoch, best = 0, 0, 0, {"score": -math.inf, "epoch": None, "metrics": {}, "table": ""}
    nonfinite, unevaluated_epoch = 0, None
    resume = resolve_resume(args, output_dir)
    if output_dir is not None and env.is_main:  # it says that the latest run in this folder stopped on a signal
        (output_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
    if resume:
        state = ckpt.load_training_state(resume)
        check_resume_flags(state["args"], args, resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        start_epoch, step, step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        best = state["extra"].get("best", best)
        nonfinite = state["extra"].get("nonfinite", 0)
        data.load_state_dict(state["extra"].get("data", {}))
        unevaluated_epoch = state["extra"].get("unevaluated_epoch")
        log.info("resumed from %s: epoch %d, step %d (%d into the epoch)", resume, start_epoch, step, step_in_epoch)

    def save_state(epoch, step_in_epoch, unevaluated_epoch=None):
        data_state = data.state_dict(env)  # on every rank: a stream's progress is gathered
        if output_dir is not None and env.is_main:
            ckpt.save_training_state(output_dir / "checkpoint_last.pt", model=model, optimizer=optimizer,
                                     scheduler=scheduler, scaler=scaler, epoch=epoch, step=step,
                                     step_in_epoch=step_in_epoch, args=args,
                                     extra={"best": best, "nonfinite": nonfinite, "data": data_state,
                                            "unevaluated_epoch": unevaluated_epoch})

    def stop_run(when: str, saved: str):
        where = output_dir / "checkpoint_last.pt" if output_dir is not None else "nowhere (no --output_dir)"
        if output_dir is not None and env.is_main:
            write_preempted_marker(output_dir, step, stop.signal if stop is not None else None)
        log.warning("stopped %s on a signal; %s written to %s", when, saved, where)
        raise Preempted(f"stopped {when} on a signal; {saved} written to {where}; continue with --resume auto "
                        "(exit code 75: requeue)")

    def evaluate_epoch(epoch):
        """The end-of-epoch evaluation and checkpoint; a signal during the evaluation saves the state
        before it, which the resumed run evaluates first."""
        nonlocal best
        try:
            best = _end_of_epoch(model, args, env, rule, epoch, task, contexts, val_set, test_set, output_dir,
                                 metrics_log, best)
        except EvaluationStopped:
            save_state(epoch + 1, 0, unevaluated_epoch=epoch)
            stop_run(f"during the evaluation after epoch {epoch + 1}",
                     "the checkpoint of the state before it (--resume re-runs that evaluation)")
        save_state(epoch + 1, 0)

    faults = FaultHooks(env)  # tests only: die or get a signal at a given step or evaluation batch
    if stop is not None:
        stop.after_eval_batch = faults.after_eval_batch
    if unevaluated_epoch is not None:
        log.info("the evaluation after epoch %d was interrupted: running it first", unevaluated_epoch + 1)
        evaluate_epoch(unevaluated_epoch)
    for epoch in range(start_epoch, args.epochs):
        micro_batches, last_step = data.epoch(epoch, step_in_epoch)
        model.train()
        pairs, started, epoch_terms, epoch_steps = 0, time.perf_counter(), {}, 0
        progress = _progress(last_step, step_in_epoch, epoch, args, env)
        for step_in_epoch in range(step_in_epoch, last_step):
            losses_for_log, skipped = {}, False
            faults.before_step(step + 1)
            for a in range(args.gradient_accumulation_steps):
                batch = next(micro_batches)
                data.consumed(batch)
                batch = to_device(batch, env.device)
                sync = a == args.gradient_accumulation_steps - 1 or not env.distributed
                with (nullcontext() if sync else ddp_model.no_sync()):
                    losses = step_losses(ddp_model, batch, env, args.precision, step, a)
                    loss = losses["loss"]
                    if all_reduce_flag(not bool(torch.isfinite(loss)), env):
                        skipped = True
                        continue
                    scaled = loss / args.gradient_accumulation_steps
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                for k, v in losses.items():
                    losses_for_log[k] = losses_for_log.get(k, 0.0) + v.detach().item() / args.gradient_accumulation_steps
                pairs += batch["video"].shape[0] * env.world_size
            if skipped:
                nonfinite += 1
                optimizer.zero_grad(set_to_none=True)
                log.warning("step %d: non-finite loss, step skipped (%d so far, limit %d)", step, nonfinite,
                            args.max_nonfinite_steps)
                if nonfinite > args.max_nonfinite_steps:
                    raise FloatingPointError(f"{nonfinite} steps had a non-finite loss (limit --max_nonfinite_steps "
                                             f"{args.max_nonfinite_steps}); lower --lr or use --precision fp32")
            else:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                model.clamp_logit_scale()
                model.after_optimizer_step(StepContext(env, args.precision, step + 1))
            scheduler.step()
            step += 1
            data.end_step(env)  # decode failures: counted over every worker and rank, limit enforced
            if not skipped:  # every named term of the head's step, for the per-epoch means
                epoch_terms = {k: epoch_terms.get(k, 0.0) + v for k, v in losses_for_log.items()}
                epoch_steps += 1
            elapsed = time.perf_counter() - started
            if progress is not None:
                progress.set_postfix(loss=f"{losses_for_log.get('loss', float('nan')):.4f}",
                                     lr=f"{scheduler.get_last_lr()[-1]:.2e}", pairs_s=f"{pairs / max(elapsed, 1e-9):.1f}",
                                     refresh=False)  # update() redraws, at most every mininterval
                progress.update(1)
            if step % args.n_display == 0:
                log.info("epoch %d step %d/%d loss %.4f lr %.3e %.1f pairs/s", epoch + 1, step_in_epoch + 1, last_step,
                         losses_for_log.get("loss", float("nan")), scheduler.get_last_lr()[-1], pairs / max(elapsed, 1e-9))
            if args.save_every_steps and step % args.save_every_steps == 0:
                save_state(epoch, step_in_epoch + 1)
            faults.after_step(step)
            if all_reduce_flag(stop is not None and stop.requested, env):  # every rank stops after the same step
                save_state(epoch, step_in_epoch + 1)
                stop_run(f"after step {step}", "checkpoint")
        if progress is not None:
            progress.close()
        # Always at least once per epoch, whatever --n_display says.
        means = {k: v / max(epoch_steps, 1) for k, v in epoch_terms.items()}
        terms = ", ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
        log.info("epoch %d/%d done: mean loss %.4f over %d steps (this run), lr %.3e%s", epoch + 1, args.epochs,
                 means.get("loss", 0.0), epoch_steps, scheduler.get_last_lr()[-1], f"; terms: {terms}" if terms else "")
        step_in_epoch = 0
        evaluate_epoch(epoch)
    try:
        return _final_report(model, args, env, rule, task, contexts["report"], test_set, output_dir, metrics_log, best)
    except EvaluationStopped:  # the checkpoint after the last epoch is the state before this evaluation
        stop_run("during the final test evaluation", "the checkpoint of the state before it (--resume re-runs it)")


def _progress(total: int, done: int, epoch: int, args, env: DistEnv):
    if not env.is_main:
        return None
    from tqdm import tqdm

    # On a terminal the bar refreshes every second; in logs (CI, nohup) every 30 s instead of every step.
    interval = 1.0 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{args.epochs}", dynamic_ncols=True, leave=False,
                mininterval=interval)


def _end_of_epoch(model, args, env, rule, epoch, task, contexts, val_set, test_set, output_dir, metrics_log, best):
    """Evaluate the split that drives selection (if any) and keep the best weights (and, selecting on
    test, the best epoch's numbers)."""
    if rule.split is None:
        if getattr(args, "eval_each_epoch", False) and epoch + 1 < args.epochs:  # the last one is the final report
            result = task.evaluate(model, test_set, args, env, contexts["epoch"])
            if env.is_main:
                log.info("epoch %d, test (no selection):\n%s", epoch + 1, result.table)
                metrics_log.write(result, split="test", epoch=epoch + 1)
        return best
    selection_set = val_set if rule.split == "val" else test_set
    result = task.evaluate(model, selection_set, args, env, contexts["select"])
    if env.is_main:
        log.info("epoch %d, %s:\n%s", epoch + 1, rule.split, result.table)
        metrics_log.write(result, split=selection_set.split, epoch=epoch + 1)
        score = result.metrics.get(task.score_key, -math.inf)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "metrics": result.metrics, "table": result.table}
            if output_dir is not None:
                ckpt.save_model(output_dir / "model_best.pt", model, args, epoch=epoch + 1, rule=rule.description)
    return best


def _final_report(model, args, env, rule, task, context, test_set, output_dir, metrics_log, best) -> dict:
    """Test numbers: of the selected epoch (val or, for parity, test), else of the final epoch."""
    if output_dir is not None and env.is_main:
        ckpt.save_model(output_dir / "model_final.pt", model, args, epoch=args.epochs)
    if rule.split == "test":
        # Each epoch was evaluated on test already: report the selected epoch's own numbers.
        if env.is_main:
            log.info("test, epoch %s (best on TEST: --select_on_test, parity only):\n%s", best["epoch"], best["table"])
        return {"selected_epoch": best["epoch"], **best["metrics"]}
    barrier(env)  # rank 0 wrote model_best.pt; every rank reads it
    if rule.split == "val" and output_dir is not None and (output_dir / "model_best.pt").exists():
        state = torch.load(output_dir / "model_best.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        chosen = f"epoch {state['epoch']} (best on val)"
    else:
        chosen = f"final epoch {args.epochs}"
    result = task.evaluate(model, test_set, args, env, context)
    if not env.is_main:
        return {}
    log.info("test, %s:\n%s", chosen, result.table)
    metrics_log.write(result, split="test", epoch=args.epochs, reported_weights=chosen)
    return result.metrics
