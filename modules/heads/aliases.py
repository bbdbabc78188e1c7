"""Flags of the seed repositories' README commands, rewritten onto ours before parsing: one table per seed.

UMP (X-Pool's framework)::

    python main_task_retrieval.py --method ump --exp_name run1 --videos_dir V --batch_size 32 \
        --noclip_lr 3e-5 --transformer_dropout 0.3 --dataset_name MSRVTT --msrvtt_train_file 9k ...

becomes ``--output_dir outputs/run1 --features_path V --lr 3e-5 --ump_pool_dropout 0.3 --datatype msrvtt
--train_csv MSRVTT_train.9k.csv``. HMMC (CLIP4Clip's framework, launched with
``python -m torch.distributed.launch``): ``--dataset msrvtt`` is ``--datatype msrvtt``, ``--frame_sample``
picks our ``--sample_mode``, the launcher's ``--local_rank``/``--local-rank`` and ``--task retrieval``
are dropped (the rank comes from the environment), and HMMC's own flags imply ``--method hmmc``.
T2VLP's ``--visual_pretrain_path``/``--cross_config_path`` name CLIP's weights (file / folder) and imply
``--method t2vlp``; ``t2vlp_command`` maps its stage-1, stage-2 and retrieval commands. Both
``--flag value`` and ``--flag=value`` are accepted; every other token passes through unchanged.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

Rewrite = Callable[[str], "str | None"]  # None: drop the flag and its value

UMP_FLAGS: dict[str, tuple[str, Rewrite]] = {
    "--noclip_lr": ("--lr", str),  # X-Pool's rate for everything that is not CLIP = our new-module rate
    "--transformer_dropout": ("--ump_pool_dropout", str),  # only its text-conditioned pooler uses it
    "--videos_dir": ("--features_path", str),
    "--exp_name": ("--output_dir", lambda name: f"outputs/{name}"),
    "--dataset_name": ("--datatype", str.lower),  # MSRVTT, DiDeMo, LSMDC -> our dataset names
    "--msrvtt_train_file": ("--train_csv", lambda split: f"MSRVTT_train.{split}.csv"),  # 9k / 7k
    "--num_frames": ("--max_frames", str),
}


def _task(value: str) -> None:
    if value != "retrieval":
        print(f"error: --task {value}: this entry point does retrieval; captioning and QA have their own scripts",
              file=sys.stderr)
        raise SystemExit(2)
    return None


# HMMC's --frame_sample: 'random' is a sorted random subset of the stored frames, 'uniform_random' one
# random frame per equal segment; our 'rand' is the latter for both (see docs).
HMMC_FRAME_SAMPLE = {"uniform": "uniform", "random": "rand", "uniform_random": "rand"}

HMMC_FLAGS: dict[str, tuple[str, Rewrite]] = {
    "--dataset": ("--datatype", str.lower),  # chvtt / msrvtt / vatex
    "--frame_sample": ("--sample_mode", lambda v: HMMC_FRAME_SAMPLE.get(v, v)),
    "--local_rank": ("", lambda v: None),  # torch.distributed.launch; the rank is read from the environment
    "--local-rank": ("", lambda v: None),
    "--task": ("", _task),
}
# Flags only HMMC has: a command that uses any of them and names no method means --method hmmc.
HMMC_IMPLIED = ("--use_temp", "--use_frame_fea", "--top_frames", "--frame_sample", "--contrast_num_negative",
                "--contrast_momentum")

# T2VLP (CLIP4Clip's framework, launched with Tencent's light.pytorch.launch): its CLIP weights are named by
# file (stage 1) or by the folder holding ViT-B-16.pt and cross_config.json; either flag means --method t2vlp.
T2VLP_FLAGS: dict[str, tuple[str, Rewrite]] = {
    "--visual_pretrain_path": ("--pretrained_clip_name", str),
    "--cross_config_path": ("--pretrained_dir", str),
}
T2VLP_IMPLIED = ("--visual_pretrain_path", "--cross_config_path")
T2VLP_CORPUS = "frozen_train_labels.json"  # its pre-training captions: the command is a pre-training stage
T2VLP_FUSION_LR = {"2": "1e-5", "retrieval": "5e-6"}  # fixed in T2VLP's stage-2 and retrieval scripts

# SimVTP (VideoMAE's run_simvtp_*.py flags): --finetune names the pre-trained weights; --lr there is a base
# rate scaled by batch / 256, which is our --blr (write it so). Its own flags imply --method simvtp.
SIMVTP_MODELS = {"pretrain_simvtp_base_patch16_224": "ViT-B-16", "vit_base_patch16_224": "ViT-B-16"}


def _simvtp_model(name: str) -> str:
    if name not in SIMVTP_MODELS:
        print(f"error: --model {name}: SimVTP's models are {', '.join(SIMVTP_MODELS)} (or use --videomae_arch)",
              file=sys.stderr)
        raise SystemExit(2)
    return SIMVTP_MODELS[name]


def _tube_only(value: str) -> None:
    if value != "tube":
        print(f"error: --mask_type {value}: only tube masking is implemented", file=sys.stderr)
        raise SystemExit(2)


SIMVTP_FLAGS: dict[str, tuple[str, Rewrite]] = {
    "--mask_ratio": ("--video_mask_ratio", str),
    "--mask_type": ("", _tube_only),
    "--sampling_rate": ("--frame_stride", str),
    "--num_frames": ("--max_frames", str),
    "--finetune": ("--videomae_checkpoint", str),
    "--data_set": ("--datatype", str.lower),  # MSRVTT, WebVid
    "--input_size": ("--image_resolution", str),
    "--model": ("--videomae_arch", _simvtp_model),
    "--opt": ("--optim", str),
    "--opt_eps": ("--adam_eps", str),
    "--log_dir": ("", lambda v: None),  # logs go to --output_dir
}
SIMVTP_SWITCHES = {"--only_test": "--do_eval", "--dist_eval": None, "--enable_deepspeed": None}  # None: dropped
SIMVTP_IMPLIED = ("--mask_ratio", "--mask_type", "--sampling_rate", "--finetune", "--decoder_depth", "--only_test")

# T2VLP's main_task_qa_msrvtt.py (main_task_qa.py passes this table): its QA files and videos; the retrieval
# and WebVid files it also names are not read by question answering, so they are dropped.
T2VLP_QA_FLAGS: dict[str, tuple[str, Rewrite]] = {
    "--msrvtt_qa_train_json": ("--qa_train_json", str),
    "--msrvtt_qa_val_json": ("--qa_val_json", str),
    "--msrvtt_qa_test_json": ("--qa_test_json", str),
    "--msrvtt_qa_anslabel_json": ("--qa_ans2label_json", str),
    "--msrvtt_features_path": ("--features_path", str),
    **{flag: ("", lambda v: None) for flag in ("--msrvtt_train_csv", "--msrvtt_val_csv", "--msrvtt_train_json",
                                               "--webvid_train_json", "--webvid_tfrecord")},
}


def t2vlp_downstream_command(tokens: Sequence[str], default_lr: float) -> list[str]:
    """T2VLP's captioning and QA commands fine-tune its stage-2 model and name neither method nor stage:
    the head is built at stage 2 (its fusion encoder and vocabulary head are reused) and the fusion modules
    train at --lr (``default_lr`` when the command gives none; those scripts set no other rate). A flag the
    command gives wins; a command with --method is left as it is."""
    tokens, values = list(tokens), _flag_values(tokens)
    if "--method" in values or not set(values) & set(T2VLP_IMPLIED):
        return tokens
    implied = {"--t2vlp_stage": "2", "--fusion_lr": values.get("--lr", str(default_lr))}
    return tokens + [token for flag, value in implied.items() if flag not in values for token in (flag, value)]


SEED_FLAGS: dict[str, tuple[str, Rewrite]] = {**UMP_FLAGS, **HMMC_FLAGS, **T2VLP_FLAGS, **SIMVTP_FLAGS}
SEED_SWITCHES: dict[str, str | None] = {**SIMVTP_SWITCHES}  # flags without a value
IMPLIED_METHODS: dict[str, Sequence[str]] = {"hmmc": HMMC_IMPLIED, "t2vlp": T2VLP_IMPLIED, "simvtp": SIMVTP_IMPLIED}


def _flag_values(tokens: Sequence[str]) -> dict[str, str]:
    """{flag: its value} for ``--flag value`` and ``--flag=value`` (a switch maps to the next token)."""
    values = {}
    for i, token in enumerate(tokens):
        flag, has_value, value = token.partition("=")
        if flag.startswith("--"):
            values[flag] = value if has_value else (tokens[i + 1] if i + 1 < len(tokens) else "")
    return values


def t2vlp_command(tokens: Sequence[str]) -> list[str]:
    """T2VLP's README commands, which name neither method nor stage: the backbone is ViT-B/16; a command
    training on frozen_train_labels.json is pre-training (main_pretrain.py: --do_train is --do_pretrain,
    its MSR-VTT --datatype/--features_path/--val_csv name the zero-shot evaluation, its videos come from
    --webvid_tfrecord or the json's folder), stage 1 when it names --visual_pretrain_path (main_task_clip.py),
    else stage 2 on a frozen backbone (main_task_fusion.py); any other is retrieval fine-tuning with the
    fusion encoder. The fusion modules get the scripts' fixed rates."""
    tokens, values = list(tokens), _flag_values(tokens)
    extra = [] if {"--pretrained_clip_name", "--visual_pretrain_path"} & set(values) else ["--pretrained_clip_name",
                                                                                            "ViT-B/16"]
    corpus = Path(values.get("--data_path", ""))
    pretraining = corpus.name == T2VLP_CORPUS
    stage = values.get("--t2vlp_stage") or ("retrieval" if not pretraining else
                                           "1" if "--visual_pretrain_path" in values else "2")
    if "--t2vlp_stage" not in values:
        extra += ["--t2vlp_stage", stage] + (["--freeze_backbone"] if stage == "2" else [])
    if stage in T2VLP_FUSION_LR and "--fusion_lr" not in values:
        extra += ["--fusion_lr", T2VLP_FUSION_LR[stage]]
    if not pretraining:
        return tokens + extra
    renamed = {"--datatype": "--eval_datatype", "--features_path": "--eval_features_path", "--val_csv": None,
               "--train_csv": None, "--webvid_tfrecord": "--features_path"}
    out, i = [], 0
    while i < len(tokens):
        flag, has_value, value = tokens[i].partition("=")
        if flag in renamed:
            if not has_value:
                i += 1
                value = tokens[i] if i < len(tokens) else ""
            out += [renamed[flag], value] if renamed[flag] else []
        else:
            out.append("--do_pretrain" if tokens[i] == "--do_train" else tokens[i])
        i += 1
    evaluation = Path(values.get("--val_csv", str(corpus))).parent
    return out + ["--datatype", "frozen", "--eval_data_path", str(evaluation)] + extra


def apply_flag_aliases(argv: Sequence[str], extra: dict[str, tuple[str, Rewrite]] | None = None) -> list[str]:
    """``argv`` with the seeds' flags rewritten onto ours (``extra``: an entry script's own table)."""
    table = {**SEED_FLAGS, **(extra or {})}
    out: list[str] = []
    tokens = list(argv)
    flags = {token.partition("=")[0] for token in tokens}
    if "--method" not in flags and flags & set(T2VLP_IMPLIED):
        tokens = t2vlp_command(tokens)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag, has_value, value = token.partition("=")
        if flag in SEED_SWITCHES and not has_value:
            out += [SEED_SWITCHES[flag]] if SEED_SWITCHES[flag] else []
        elif flag in table:
            ours, rewrite = table[flag]
            if not has_value:
                if i + 1 >= len(tokens):
                    print(f"error: {flag} needs a value", file=sys.stderr)
                    raise SystemExit(2)  # argparse's code for a usage error
                i += 1
                value = tokens[i]
            rewritten = rewrite(value)
            if rewritten is not None:
                out += [ours, rewritten]
        else:
            out.append(token)
        i += 1
    if "--method" not in flags:
        for method, implying in IMPLIED_METHODS.items():
            if flags & set(implying):
                out += ["--method", method]
                break
    return out
