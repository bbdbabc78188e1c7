"""Command-line flags, grouped by concern, with CLIP4Clip's names where they exist.

``build_parser()`` assembles the groups; ``parse_args(argv)`` also reads ``--config FILE.yaml``, in which
every key is a flag name (without dashes) and anything given on the command line wins. Every error is
one line, ``error: ...`` with exit code 2: a flag typo names the closest flag, a config problem its
``FILE:LINE`` and key.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Sequence

import yaml

from dataloaders.datasets import list_datasets
from dataloaders.video import add_video_args
from engine.optim import add_optim_args
from engine.perf import add_perf_args
from modules.factory import add_model_args
from modules.heads.aliases import apply_flag_aliases


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return number


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("data")
    group.add_argument("--datatype", default="msrvtt", choices=list_datasets(), help="benchmark / annotation format")
    group.add_argument("--data_path", default=None,
                       help="folder with the annotation files (for msrvtt also the path of MSRVTT_data.json)")
    group.add_argument("--features_path", default=None, help="folder with the videos (default: --data_path)")
    group.add_argument("--train_csv", default=None,
                       help="msrvtt: training list (default MSRVTT_train.9k.csv); webvid/csv/jsonl: training annotations")
    group.add_argument("--val_csv", default=None,
                       help="msrvtt: the 1k-A test csv (default MSRVTT_JSFUSION_test.csv, CLIP4Clip's naming); "
                            "webvid/csv/jsonl: validation annotations")
    group.add_argument("--test_csv", default=None, help="csv/jsonl: test annotations (default test.csv / test.jsonl)")
    group.add_argument("--msrvtt_protocol", default="1k-A", choices=["1k-A", "full"],
                       help="msrvtt: 1k-A (9k/7k train, JSFusion 1k test) or full (json split field, 2,990 x 20 test)")
    group.add_argument("--expand_msrvtt_sentences", action="store_true",
                       help="msrvtt training: every (caption, video) pair per epoch instead of one random caption per video")
    group.add_argument("--max_words", type=int, default=32, help="text tokens incl. start/end (64 for paragraphs)")
    group.add_argument("--language", default="english", choices=["english", "chinese"], help="vatex captions: enCap or chCap")
    group.add_argument("--train_shards", default=None,
                       help="--datatype webdataset: the training shards, a brace pattern \"DIR/{000000..000099}.tar\" "
                            "(preprocess/make_shards.py writes them)")
    group.add_argument("--shuffle_buffer", type=int, default=1000, help="webdataset: samples in the shuffle buffer")
    group.add_argument("--verify_videos", action="store_true",
                       help="before training, probe every video of each split on all cores; unreadable ones are "
                            "listed in <output_dir>/unreadable_videos_<split>.txt and excluded (more than the "
                            "decode-failure limit stops the run)")
    group.add_argument("--max_decode_failures", type=int, default=None,
                       help="training stops once more videos than this fail to decode (default: use the fraction)")
    group.add_argument("--max_decode_failure_fraction", type=_non_negative, default=0.01,
                       help="as --max_decode_failures, as a fraction of the training videos")
    return parser


def add_selection_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("model selection")
    group.add_argument("--val_from_train", type=int, default=None,
                       help="hold out N training videos (smallest SHA-1 of the id) as a validation split to select on; "
                            "only for benchmarks without one (msrvtt 1k-A, activitynet)")
    group.add_argument("--select_on_test", action="store_true",
                       help="keep the epoch that is best on TEST (parity with published numbers only)")
    return parser


_RESERVED_SUBSET_NAMES = {"t2v", "v2t", "v2t_groupmax", "v2t_allcaps", "dsl", "qbnorm", "num_captions", "num_videos"}


def _query_subset(value: str) -> tuple[str, str]:
    """``NAME=FILE.json`` -> (NAME, FILE.json); NAME becomes the metric prefix (``NAME/t2v/R1``)."""
    name, sep, path = value.partition("=")
    name = name.strip()
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.json, got {value!r}")
    if "/" in name or not all(c.isalnum() or c in "_.-" for c in name):
        raise argparse.ArgumentTypeError(f"subset name {name!r}: use letters, digits, '_', '.', '-'")
    if name in _RESERVED_SUBSET_NAMES:
        raise argparse.ArgumentTypeError(f"subset name {name!r} is taken by a metric; choose another")
    return name, path


def add_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--batch_size_val", type=int, default=64, help="captions / videos per evaluation batch")
    group.add_argument("--num_thread_reader", type=int, default=1, help="data loader workers")
    group.add_argument("--legacy_metrics", action="store_true",
                       help="count ranks by CLIP4Clip's equality search (ties give several entries); square sets only")
    group.add_argument("--eval_tile_elements", type=int, default=1 << 24,
                       help="scores per similarity tile when ranking (memory bound of evaluation)")
    group.add_argument("--dsl", action="store_true", help="also report dual-softmax (DSL) post-processed numbers")
    group.add_argument("--dsl_temperature", type=float, default=None,
                       help="DSL: softmax(T * score) over the queries; default: the model's learned logit scale "
                            "(DSL works on logits; similarity returns cosines)")
    group.add_argument("--qb_norm", action="store_true",
                       help="also report QB-Norm (bank = training captions; beta, k chosen on the validation split)")
    group.add_argument("--qb_norm_betas", type=float, nargs="+", default=[1.0, 2.0, 5.0, 10.0, 20.0, 50.0],
                       help="QB-Norm beta grid searched on the validation split")
    group.add_argument("--qb_norm_topk", type=int, nargs="+", default=[1], help="QB-Norm k grid (activation set)")
    group.add_argument("--qb_norm_min_hits", type=int, default=1,
                       help="QB-Norm: a video is active when at least this many bank queries have it in their top k")
    group.add_argument("--qb_norm_bank_size", type=int, default=None,
                       help="QB-Norm: use the first N training captions as the bank (default all)")
    group.add_argument("--eval_query_subset", type=_query_subset, action="append", default=None, metavar="NAME=FILE",
                       help="also report T2V over a subset of the queries (against the whole gallery) as NAME/t2v/...; "
                            "FILE is JSON: a list of video ids and/or captions, or an object with 'video_ids' and/or "
                            "'captions' lists (e.g. the toy dataset's temporal_pairs.json); a video id selects all "
                            "its captions. FILE is looked up as given, then in --data_path. Repeatable")
    return parser


def add_run_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("run")
    group.add_argument("--config", default=None, help="YAML file of flag: value; the command line overrides it")
    group.add_argument("--output_dir", default=None, help="logs, metrics, checkpoints and data reports go here")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--tensorboard", action="store_true",
                       help="also write metrics.jsonl's scalars and the training loss/lr as TensorBoard events "
                            "in <output_dir>/tensorboard")
    return parser


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training loop's own flags (engine.trainer)."""
    g = parser.add_argument_group("training")
    g.add_argument("--do_train", action="store_true", help="train, then evaluate as the selection rule says")
    g.add_argument("--do_eval", action="store_true", help="evaluate (the --init_model weights) on the test split")
    g.add_argument("--epochs", type=int, default=5)
    g.add_argument("--batch_size", type=int, default=128, help="GLOBAL batch: pairs per optimiser step, all ranks")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="split each global batch into this many micro-steps (negatives per loss = batch / steps)")
    g.add_argument("--n_display", type=int, default=100, help="log every N optimiser steps")
    g.add_argument("--precision", choices=("fp32", "amp_bf16", "amp_fp16", "fp16_weights"), default="fp32",
                   help="fp16_weights = CLIP4Clip's fp16 CLIP weights, for parity")
    g.add_argument("--compile", action="store_true", help="torch.compile the two CLIP towers")
    g.add_argument("--resume", default=None,
                   help="a checkpoint_last.pt to continue from exactly, or 'auto': <output_dir>/checkpoint_last.pt "
                        "when it exists, else start fresh (requeued jobs, torchrun --max_restarts)")
    g.add_argument("--resume_allow_changes", action="store_true",
                   help="resume even when result-changing flags differ from the checkpoint's (logged)")
    g.add_argument("--save_every_steps", type=int, default=0, help="also checkpoint every N steps (0: per epoch)")
    g.add_argument("--max_nonfinite_steps", type=int, default=10,
                   help="stop with an error after this many steps with a non-finite loss (each is skipped)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    return parser


def add_pretrain_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """main_pretrain.py: the pre-training corpus is --datatype/--data_path (any registered dataset of
    (video, caption) pairs, or --datatype webdataset --train_shards); zero-shot retrieval is evaluated
    on the test split of --eval_datatype/--eval_data_path after every epoch."""
    group = parser.add_argument_group("pre-training")
    group.add_argument("--do_pretrain", action="store_true", help="pre-train the method head (main_pretrain.py)")
    group.add_argument("--eval_datatype", default=None, help="benchmark evaluated zero-shot after every epoch "
                                                              "(default: --datatype)")
    group.add_argument("--eval_data_path", default=None, help="its annotation folder (default: --data_path)")
    group.add_argument("--eval_features_path", default=None, help="its videos (default: --eval_data_path)")
    group.add_argument("--no_eval_each_epoch", dest="eval_each_epoch", action="store_false",
                       help="evaluate only after the last epoch")
    return parser


EVAL_OVERRIDES = {"eval_datatype": "datatype", "eval_data_path": "data_path", "eval_features_path": "features_path"}


def evaluation_args(args: argparse.Namespace) -> argparse.Namespace:
    """The flags with --eval_datatype/--eval_data_path/--eval_features_path in place of the training
    data's (pre-training evaluates on another benchmark than it trains on)."""
    if not getattr(args, "eval_datatype", None) and not getattr(args, "eval_data_path", None):
        return args
    view = argparse.Namespace(**vars(args))
    for source, target in EVAL_OVERRIDES.items():
        if getattr(args, source, None) is not None:
            setattr(view, target, getattr(args, source))
    if getattr(args, "eval_data_path", None) and not getattr(args, "eval_features_path", None):
        view.features_path = None  # the evaluation benchmark's videos sit under its own folder
    for name in ("train_csv", "val_csv", "test_csv", "val_from_train"):  # they name the training data's files
        setattr(view, name, None)
    return view


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr, ``error: MESSAGE``, exit code 2 and no usage block;
    an unknown flag names the closest known one."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras))
        return namespace

    def unrecognized(self, extras: Sequence[str]) -> str:
        """``--data_pth /x --zzz`` -> every unknown flag with its hint; the values after it are not listed."""
        names = [option.lstrip("-") for option in self._option_string_actions if option.startswith("--")]
        hints: list[tuple[str, str]] = []
        after_flag = False
        for token in extras:
            is_flag = token.startswith("-") and not _is_number(token)
            if after_flag and not is_flag:
                continue
            flag = token.partition("=")[0] if is_flag else token
            after_flag = is_flag
            hints.append((flag, _did_you_mean(flag.lstrip("-"), names, "--") if is_flag else "see --help"))
        if len(hints) == 1:
            return "unrecognized argument {}; {}".format(*hints[0])
        return "unrecognized arguments " + ", ".join(f"{flag} ({hint})" for flag, hint in hints)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _did_you_mean(name: str, known: Sequence[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {prefix}{match[0]}?" if match else "see --help"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Text-video retrieval with CLIP", allow_abbrev=False)
    for add in (add_run_args, add_data_args, add_video_args, add_selection_args, add_eval_args, add_model_args,
                add_optim_args, add_train_args, add_perf_args):
        add(parser)
    return parser


def load_config(parser: argparse.ArgumentParser, path: Path) -> tuple[dict, dict[str, int]]:
    """The {flag: value} mapping of a YAML file and the line of each key; errors are one line with the
    file and line."""
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        config = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark, opened = error.problem_mark or error.context_mark, error.context_mark
        where = f" ({error.context} from line {opened.line + 1})" if opened and opened.line != mark.line else ""
        parser.error(f"{path}:{mark.line + 1}: YAML syntax error: {error.problem or error.context}{where}")
    except yaml.YAMLError as error:
        parser.error(f"{path}: YAML error: {' '.join(str(error).split())}")
    if config is None:
        return {}, {}
    if not isinstance(config, dict):
        parser.error(f"{path}:{node.start_mark.line + 1}: expected a mapping of flag: value")
    return config, {str(key.value): key.start_mark.line + 1 for key, _ in node.value}


def config_tokens(parser: argparse.ArgumentParser, config: dict, source: str,
                  lines: dict[str, int] | None = None) -> list[tuple[str, str, list[str]]]:
    """{flag: value} -> (key, "FILE:LINE", command-line tokens) per key, so types and choices are checked as
    usual and a problem names its file, line and key."""
    by_dest = {action.dest: action for action in parser._actions if action.option_strings and action.dest != "config"}
    out = []
    for key, value in config.items():
        where = f"{source}:{lines[str(key)]}" if lines and str(key) in lines else source
        action = by_dest.get(key)
        if action is None:
            parser.error(f"{where}: unknown key {key!r}; {_did_you_mean(str(key), list(by_dest))}")
        flag = action.option_strings[0]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                parser.error(f"{where}: {key} is a switch; use true or false, not {value!r}")
            tokens = [flag] if value != action.default else []
        elif value is None:
            tokens = []
        elif isinstance(action, argparse._AppendAction) and isinstance(value, (list, tuple)):
            tokens = [f"{flag}={item}" for item in value]  # a repeatable flag: one item per use
        elif isinstance(value, (list, tuple)):
            tokens = [flag, *map(str, value)]
        else:
            tokens = [f"{flag}={value}"]  # '=': a value may start with '-'
        out.append((key, where, tokens))
    return out


def config_to_argv(parser: argparse.ArgumentParser, config: dict, source: str) -> list[str]:
    """Turn {flag: value} into command-line tokens, so types and choices are checked as usual."""
    return [token for _, _, tokens in config_tokens(parser, config, source) for token in tokens]


def parse_config(parser: argparse.ArgumentParser, path: Path) -> argparse.Namespace:
    """Every key of the file parsed on its own: a bad value is ``FILE:LINE: KEY: problem``."""
    config, lines = load_config(parser, path)
    namespace, exit_on_error = argparse.Namespace(), parser.exit_on_error
    parser.exit_on_error = False  # argparse raises ArgumentError instead of printing it
    try:
        for key, where, tokens in config_tokens(parser, config, str(path), lines):
            try:
                namespace, extras = parser.parse_known_args(tokens, namespace)
                problem = f"unexpected value {' '.join(extras)}" if extras else None
            except argparse.ArgumentError as error:
                problem = error.message
            if problem:
                parser.error(f"{where}: {key}: {problem}")
    finally:
        parser.exit_on_error = exit_on_error
    return namespace


def parse_args(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or build_parser()
    pre = ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)

    argv = apply_flag_aliases(sys.argv[1:] if argv is None else argv)
    namespace = None
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            parser.error(f"--config {path}: no such file")
        namespace = parse_config(parser, path)  # the command line is parsed on top: it wins
    return parser.parse_args(argv, namespace)
