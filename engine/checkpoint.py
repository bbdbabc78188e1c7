"""Training checkpoints: written atomically, loaded with ``weights_only=True``, resumable exactly.

A checkpoint holds the model, optimiser, scheduler and grad-scaler states, every RNG state, the epoch,
the global step and the step inside the epoch, the flags and the code version. Together with the
deterministic data order (``engine.trainer.EpochSampler``) this makes a resumed run reproduce the
uninterrupted one.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from engine.options import EVAL_OVERRIDES, build_parser, evaluation_args, load_config
from modules import build_model
from modules.clip import get_config
from modules.clip.loading import CheckpointError  # one error type for every unreadable checkpoint
from modules.converters.ours import MODEL_FORMAT, read_model_record  # noqa: F401  (our model file: read in modules)
from modules.factory import add_model_args
from modules.heads.aliases import apply_flag_aliases

FORMAT = "univtr-train-v1"


def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((3, tuple(py[:-1]), None if py[-1] == -1 else py[-1]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``: a crash
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def plain_args(args) -> dict:
    """Flags as plain types (safe for weights_only loading)."""
    out = {}
    for key, value in vars(args).items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = [v if isinstance(v, (str, int, float, bool)) else str(v) for v in value]
        else:
            out[key] = str(value)
    return out


def save_training_state(path, *, model, optimizer, scheduler, scaler, epoch: int, step: int, step_in_epoch: int,
                        args, extra: dict | None = None) -> Path:
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "step_in_epoch": step_in_epoch,
        "rng": rng_state(),
        "args": plain_args(args),
        "code_version": code_version(),
        "extra": extra or {},
    }
    return atomic_save(state, path)


def load_training_state(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); "
                              "it may be truncated — resume from an earlier one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a UniVTR training checkpoint (use --init_model for model weights)")
    return state


# ----------------------------------------------------------------------------------------------------
# Self-contained model checkpoints (model_final.pt, model_best.pt)
#
# Besides the weights they record the CLIP architecture (the config dict: --pretrained_clip_name may
# be a file the evaluating machine lacks) and every flag, so `--do_eval --init_model CKPT` and the tools
# rebuild the model from the checkpoint alone. CLIP4Clip's pytorch_model.bin.N (and older UniVTR files)
# carry no record: their model is still described by explicit flags.

# Model flags that say where the initial weights came from or how training treats them, not what the
# model is: neither restored from a checkpoint nor compared with it.
NOT_ARCHITECTURE = frozenset({"pretrained_dir", "init_model", "grad_checkpointing", "freeze_layer_num", "clip_init",
                              "loose_type", "text_lr", "init_format"})
# Model flags added after this project's checkpoints were written under the behaviour they now switch
# away from: a record without the flag was trained with this value (not with today's default).
BEHAVIOUR_BEFORE_THE_FLAG = {"t2vlp_match_norm": "vector"}
# How captions and videos become the model's inputs: restored from the checkpoint unless given.
INPUT_FLAGS = ("max_words", "max_frames", "image_resolution", "feature_framerate", "slice_framepos",
               "eval_sample_mode", "eval_frame_order", "frame_stride", "language")


def save_model(path, model, args, **extra) -> Path:
    """model_final.pt / model_best.pt: weights, the CLIP architecture, every flag (atomically)."""
    return atomic_save({"format": MODEL_FORMAT, "model": model.state_dict(), "clip_config": model.clip.config.to_dict(),
                        "head": model.head_name, "args": plain_args(args), "code_version": code_version(), **extra},
                       path)


def model_flag_names() -> list[str]:
    """Every flag of the model argument groups (backbone, head, method options) that shapes the model."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    add_model_args(parser)
    return sorted(a.dest for a in parser._actions if a.option_strings and a.dest not in NOT_ARCHITECTURE)


def explicit_flags(argv, parser=None) -> set[str]:
    """Destinations of the flags given on the command line (or in its --config file), defaults excluded."""
    import argparse

    parser = parser or build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    argv = apply_flag_aliases(list(argv))
    given, _ = parser.parse_known_args(argv)
    config = getattr(given, "config", None)
    found = set(vars(given))
    if config and Path(config).is_file():
        found |= {str(key) for key in load_config(parser, Path(config))[0]}
    return found - {"config"}


def _same(flag: str, given, recorded, record: dict) -> bool:
    if given == recorded:
        return True
    if flag == "pretrained_clip_name":  # an architecture name agrees with the recorded architecture

        try:
            return get_config(str(given)).to_dict() == record["clip_config"]
        except ValueError:  # a path: the checkpoint's own weights and architecture are used
            return True
    if isinstance(given, (list, tuple)) and isinstance(recorded, (list, tuple)):
        return [str(v) for v in given] == [str(v) for v in recorded]
    return False


def adopt_model_record(args, record: dict, explicit: set[str]) -> list[str]:
    """Set ``args``' model and input flags from a checkpoint's record; returns notes for the log.

    A model flag given explicitly that contradicts the record is a ValueError naming every such flag;
    an explicit input flag (frames, words, resolution, sampling) wins over the record, with a note."""
    recorded = record.get("args", {})
    conflicts = [f"--{flag} {getattr(args, flag)!r} (checkpoint: {recorded[flag]!r})" for flag in model_flag_names()
                 if flag in explicit and flag in recorded and not _same(flag, getattr(args, flag, None), recorded[flag],
                                                                        record)]
    if conflicts:
        raise ValueError(f"{args.init_model}: flags contradict the model the checkpoint records: {'; '.join(conflicts)} "
                         "(drop them: the checkpoint rebuilds its own model)")
    notes = []
    for flag in model_flag_names():
        if flag in recorded:
            setattr(args, flag, recorded[flag])
        elif flag in BEHAVIOUR_BEFORE_THE_FLAG:
            setattr(args, flag, BEHAVIOUR_BEFORE_THE_FLAG[flag])
            notes.append(f"--{flag} {BEHAVIOUR_BEFORE_THE_FLAG[flag]!r}: the checkpoint predates the flag and was "
                         "trained so")
    for flag in INPUT_FLAGS:
        if flag not in recorded:
            continue
        if flag in explicit and getattr(args, flag, None) != recorded[flag]:
            notes.append(f"--{flag} {getattr(args, flag)!r} given; the model was trained with {recorded[flag]!r}")
        else:
            setattr(args, flag, recorded[flag])
    args.clip_config = record["clip_config"]
    return notes


def model_args_from_record(record: dict, path, **overrides):
    """The full flag namespace of a recorded run (defaults for flags added since), ready for build_model."""
    import argparse

    args = build_parser().parse_args([])
    known = vars(args)
    known.update({flag: value for flag, value in BEHAVIOUR_BEFORE_THE_FLAG.items() if flag not in record.get("args", {})})
    for key, value in record.get("args", {}).items():
        if key in known:
            known[key] = value
    args = argparse.Namespace(**known)
    args.clip_config, args.init_model = record["clip_config"], str(path)
    args.do_train = args.do_pretrain = False
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def load_model(path, device="cpu", **overrides):
    """(model in eval mode, its flags) rebuilt from a self-contained checkpoint alone."""
    record = read_model_record(path)
    if record is None:
        raise CheckpointError(f"{path}: not a self-contained UniVTR model checkpoint (model_final.pt / model_best.pt "
                              "written by this version); CLIP4Clip's pytorch_model.bin.N needs its model flags: "
                              "evaluate it with main_task_retrieval.py --do_eval --init_model ... and the flags")
    args = model_args_from_record(record, path, **overrides)
    model = build_model(args).to(device).eval()
    return model, args


def adopt_for_evaluation(args, argv) -> None:
    """``--do_eval --init_model CKPT`` (no training): a self-contained checkpoint supplies the CLIP
    architecture and every model flag; explicit flags that contradict it are one ValueError. A checkpoint
    of this task also supplies the data it was evaluated on (``adopt_recorded_data``). Other checkpoints
    (CLIP4Clip's pytorch_model.bin.N) keep the explicit flags."""
    import sys

    if not args.do_eval or args.do_train or getattr(args, "do_pretrain", False) or not args.init_model:
        return
    record = read_model_record(args.init_model)
    if record is None:
        return
    argv = sys.argv[1:] if argv is None else argv
    # (the task's own flags, --qa_test_json ..., are not in the retrieval parser explicit_flags reads)
    explicit = explicit_flags(argv) | {str(token)[2:].split("=")[0] for token in argv if str(token).startswith("--")}
    for note in adopt_model_record(args, record, explicit):
        print(f"note: {note}", file=sys.stderr)
    if recorded_task(record) == (getattr(args, "task", None) or "retrieval"):
        adopt_recorded_data(args, record, explicit)


def recorded_task(record: dict) -> str:
    """The task a self-contained checkpoint was trained for: its head is "<task>/<method head>" for
    captioning and QA, the bare method head for retrieval and pre-training."""
    head = str(record.get("head", ""))
    return head.split("/", 1)[0] if "/" in head else "retrieval"


# Where the data lies and how its annotation files are read: taken from the checkpoint's record unless
# --data_path (or --eval_data_path) is given.
DATA_FLAGS = ("datatype", "data_path", "features_path", "train_csv", "val_csv", "test_csv", "msrvtt_protocol",
              "video_backend", "lmdb_path", "qa_train_json", "qa_val_json", "qa_test_json", "qa_ans2label_json")


def adopt_recorded_data(args, record: dict, explicit: set[str]) -> None:
    """Evaluate on the data the checkpoint's run evaluated on (a pre-training run's --eval_* benchmark)
    when the command names none; each flag given still wins. A recorded path missing on this machine is
    a ValueError naming it and the flag to pass."""
    import argparse
    import sys

    if explicit & {"data_path", *EVAL_OVERRIDES}:
        return
    recorded = evaluation_args(argparse.Namespace(**record.get("args", {})))
    if not getattr(recorded, "data_path", None):
        return
    taken = {flag: getattr(recorded, flag) for flag in DATA_FLAGS
             if flag not in explicit and hasattr(args, flag) and getattr(recorded, flag, None) is not None}
    for flag in ("data_path", "features_path", "lmdb_path"):
        if flag in taken and not Path(taken[flag]).exists():
            raise ValueError(f"{args.init_model} records --{flag} {taken[flag]}, which does not exist on this machine: "
                             f"pass --{flag} (and the other data flags) for this machine's copy")
    for flag, value in taken.items():
        setattr(args, flag, value)
    print(f"note: evaluating on the data {args.init_model} records: " + " ".join(
        f"--{flag} {taken[flag]}" for flag in ("datatype", "data_path", "features_path") if flag in taken) +
        " (flags given override it)", file=sys.stderr)


# The run that trains a task's own modules (named in the refusal to evaluate them untrained).
TRAINING_SCRIPTS = {"qa": "main_task_qa.py", "caption": "main_task_caption.py", "retrieval": "main_task_retrieval.py"}


def check_evaluated_weights(model, args) -> None:
    """Evaluation only: modules that ``--init_model`` did not fill (``model.untrained_modules``: a task's
    answer head or decoder from a retrieval checkpoint, a head's new modules from a CLIP-only file) would
    be scored at their random initialisation. That is one CheckpointError naming them and the training
    run that makes them. Without --init_model the initial weights were asked for (the demos' untrained
    rows): a warning."""
    import logging

    untrained = list(getattr(model, "untrained_modules", ()))
    if not args.init_model:
        head = getattr(model, "head", model)  # a task model's method head, or the head itself
        added = [n for n in head.new_module_names() if any(True for _ in getattr(head, n).parameters())]
        added += list(getattr(model, "task_modules_with_weights", list)())
        if getattr(args, "clip_init", None) == "random":
            added.insert(0, "clip (--clip_init random)")
        if added:
            logging.getLogger("univtr").warning("--do_eval without --init_model: scoring untrained %s as initialised",
                                                ", ".join(added))
        return
    if not untrained:
        return
    task = getattr(args, "task", None) or "retrieval"
    train = (f"python main_pretrain.py --do_pretrain --init_model {args.init_model} ..." if task == "retrieval" and
             hasattr(args, "do_pretrain") else f"python {TRAINING_SCRIPTS.get(task, TRAINING_SCRIPTS['retrieval'])} "
             f"--do_train --init_model {args.init_model} ...")
    raise CheckpointError(f"--init_model {args.init_model} has no trained weights for {', '.join(untrained)} of the "
                          f"{model.head_name} model, and --do_eval would score them untrained: train them with "
                          f"{train}, then evaluate the model_final.pt (or model_best.pt) that run writes")
