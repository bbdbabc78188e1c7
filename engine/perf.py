"""Speed settings of a run: backend switches (TF32 on CUDA), torch.compile of the towers, and the
options of the engine's DataLoaders. None of them changes what is computed on a CPU.

The trainer calls ``configure_backends`` after logging is set up and ``compile_model`` after the model
is built; ``engine.train_data`` builds its DataLoaders with :func:`loader_options`. The flags are the
"speed" group of ``main_task_retrieval.py --help`` (:func:`add_perf_args`); ``--compile`` itself is a
training flag (``engine.trainer``) and keeps its meaning: compile, also where it is not the default.
"""
from __future__ import annotations

import logging

import torch

from engine.distributed import DistEnv
from engine.preemption import ignore_stop_signals

log = logging.getLogger("univtr")


def add_perf_args(parser):
    g = parser.add_argument_group("speed", "how fast a run goes, not what it computes (README: Throughput)")
    g.add_argument("--no_compile", action="store_true",
                   help="do not torch.compile the CLIP towers (compiled by default on CUDA; --compile compiles "
                        "them on other devices too)")
    g.add_argument("--no_tf32", action="store_true",
                   help="CUDA: keep fp32 matmuls and convolutions in full fp32 precision (TF32 by default)")
    g.add_argument("--no_fused_adamw", action="store_true",
                   help="CUDA: AdamW's default multi-tensor implementation instead of the fused kernel")
    g.add_argument("--pin_memory", choices=("auto", "on", "off"), default="auto",
                   help="page-locked batches, so host-to-device copies run asynchronously (auto: on CUDA only)")
    g.add_argument("--no_persistent_workers", dest="persistent_workers", action="store_false",
                   help="start the training DataLoader workers anew every epoch (by default they live for the "
                        "whole run; WebDataset shards always restart them)")
    g.add_argument("--prefetch_factor", type=int, default=2,
                   help="batches each DataLoader worker prepares ahead (with --num_thread_reader > 0)")
    return parser


def configure_backends(args, env: DistEnv) -> None:
    """CUDA only: TF32 for fp32 matmuls and cuDNN convolutions (``--no_tf32``: full fp32) and cuDNN's
    autotuner (fixed input shapes). Nothing changes on other devices."""
    if env.device.type != "cuda":
        return
    tf32 = not getattr(args, "no_tf32", False)
    # The legacy switches, not torch.backends.*.fp32_precision: Inductor reads the legacy getter, which
    # refuses to answer once the two APIs have been mixed.
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    log.info("CUDA: fp32 matmuls and convolutions in %s; cuDNN autotuner on",
             "TF32" if tf32 else "full fp32 (--no_tf32)")


def wants_compile(args, env: DistEnv) -> bool:
    """``--compile``, or by default on CUDA unless ``--no_compile``."""
    asked, refused = getattr(args, "compile", False), getattr(args, "no_compile", False)
    if asked and refused:
        raise ValueError("--compile and --no_compile contradict each other; give one of them")
    return asked or (env.device.type == "cuda" and not refused)


def compile_towers(model, **options) -> list[str]:
    """torch.compile CLIP's vision and text towers in place (the state dict keeps its keys) with a
    dynamic batch dimension: one graph serves the training micro-batch, every evaluation batch size
    and the last, smaller batch, so evaluation compiles once (a no_grad graph) instead of once per
    shape. Returns the names of the compiled towers (none for a backbone without CLIP towers)."""
    clip = getattr(model, "clip", None)
    towers = [(name, getattr(clip, name, None)) for name in ("visual", "text")]
    towers = [(name, tower) for name, tower in towers if isinstance(tower, torch.nn.Module)]
    for _, tower in towers:
        tower.compile(dynamic=True, **options)
    return [name for name, _ in towers]


def compile_model(model, args, env: DistEnv) -> None:
    """torch.compile the two CLIP towers when :func:`wants_compile` says so. Compiled by default (not
    asked for), a tower that fails to compile runs eagerly, with Dynamo's warning, instead of
    stopping the run."""
    if not wants_compile(args, env):
        return
    if not getattr(args, "compile", False):
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
    names = compile_towers(model)
    if names:
        log.info("torch.compile: CLIP %s tower%s, dynamic batch dimension (--no_compile turns it off)",
                 " and ".join(names), "s" if len(names) > 1 else "")
    else:
        log.info("torch.compile: %s has no CLIP towers; nothing compiled", type(getattr(model, "clip", model)).__name__)


def pin_memory(args, device: torch.device) -> bool:
    """``--pin_memory``: on, off, or (auto) on when batches go to a CUDA device."""
    pin = getattr(args, "pin_memory", "auto")
    return device.type == "cuda" if pin == "auto" else pin == "on"


def loader_options(args, env: DistEnv, workers: int, persistent: bool = True) -> dict:
    """DataLoader keyword arguments of the engine's loaders: pinned memory (``--pin_memory``, by default
    on CUDA only), and with workers their persistence (``persistent`` and not
    ``--no_persistent_workers``) and prefetch depth (``--prefetch_factor``); workers leave SIGTERM,
    SIGUSR1 and SIGINT to the main process (``engine.preemption``)."""
    options = {"pin_memory": pin_memory(args, env.device)}
    if workers > 0:
        options["worker_init_fn"] = ignore_stop_signals
        options["persistent_workers"] = bool(persistent and getattr(args, "persistent_workers", True))
        options["prefetch_factor"] = max(1, int(getattr(args, "prefetch_factor", 2)))
    return options
