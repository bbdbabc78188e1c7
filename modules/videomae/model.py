"""The one factory of the VideoMAE family: architecture + checkpoint + vocabulary -> a ``JointTrunk``."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from modules.clip.loading import CheckpointError, read_state_dict

from .config import TEXT_FIELDS, get_config, is_architecture, list_architectures
from .loading import VideoMAEWeights, load_part, load_videomae
from .text import TextVocabulary, bert_vocabulary, clip_vocabulary
from .transformer import JointTrunk

log = logging.getLogger(__name__)


def add_videomae_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("VideoMAE joint trunk (--backbone videomae_joint, SimVTP)")
    g.add_argument("--videomae_arch", default=None,
                   help=f"architecture, one of {list_architectures()} (default: the checkpoint's; without one "
                        "--pretrained_clip_name when it names one of these, e.g. tiny, else ViT-B-16)")
    g.add_argument("--videomae_checkpoint", default=None,
                   help="local weights: VideoMAE's official .pth (SimVTP starts from ViT-B K400 1600-epoch "
                        "pre-training), a Hugging Face VideoMAE folder, SimVTP's checkpoints or our .safetensors")
    g.add_argument("--bert_path", default=None,
                   help="a local bert-base-uncased folder (or its vocab.txt): the tokenizer, and the text embedding "
                        "weights when the checkpoint has none; unset: CLIP's BPE plus a [MASK] row (toy runs only)")
    g.add_argument("--drop_path", type=float, default=0.0,
                   help="stochastic depth of the trunk (SimVTP fine-tuning: 0.1)")
    g.add_argument("--text_dropout", type=float, default=None,
                   help="dropout after the BERT embedding layer (default: BERT's 0.1)")


def bert_embedding_state(path: str | Path) -> dict | None:
    """The ``embeddings.*`` tensors of a local BERT folder (BertModel or BertForMaskedLM), or None
    when the folder has no weights (a vocabulary only)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()]
    if not files:
        return None
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(files[0]))
    else:
        state, _, _ = read_state_dict(files[0])
    for prefix in ("bert.embeddings.", "embeddings."):
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    raise CheckpointError(f"{files[0]}: no BERT embedding tensors (bert.embeddings.* / embeddings.*)")


def bert_config_fields(path: str | Path | None) -> dict:
    """The embedding fields of a local BERT folder's config.json (positions, token types, LayerNorm eps,
    dropout), so its weights fit; {} without one."""
    config = Path(path) / "config.json" if path else None
    if config is None or not config.is_file():
        return {}
    data = json.loads(config.read_text())
    return {k: data[k] for k in TEXT_FIELDS if k in data and k not in ("vocab_size", "pad_token_id")}


def _check_width(tensors: dict, trunk: JointTrunk, what: str, path) -> None:
    width = tensors["word_embeddings.weight"].shape[1]
    rows = tensors["word_embeddings.weight"].shape[0]
    if width != trunk.width:
        raise CheckpointError(f"{path}: {what} are {width} wide, the trunk {trunk.width}")
    expected = trunk.text.word_embeddings.num_embeddings
    if rows != expected:
        raise CheckpointError(f"{path}: {what} have {rows} rows but the tokenizer needs {expected} "
                              f"({trunk.vocabulary.source}); give --bert_path the vocabulary they were trained with")


def build_joint_trunk(arch: str | dict | None = None, checkpoint: str | None = None, bert_path: str | None = None,
                      pretrained_dir: str | None = None, drop_path_rate: float = 0.0,
                      text_dropout: float | None = None, bert_weights: bool = True) -> JointTrunk:
    """A ``JointTrunk`` with the checkpoint's trunk and text embedding (or BERT's from ``bert_path``;
    ``bert_weights=False`` reads only its vocabulary and config, when another file holds the weights).

    The returned trunk carries ``vocabulary`` (the tokenizer side: ids, specials, [MASK]) and ``source``
    (the checkpoint's other parts: decoder, MLM/VTM heads, a dual encoder's text copy) for the head."""
    weights: VideoMAEWeights | None = load_videomae(checkpoint, pretrained_dir) if checkpoint else None
    config = weights.config if weights is not None else get_config(arch or "ViT-B-16")
    arch = arch if isinstance(arch, str) else None
    if weights is not None and arch is not None:
        wanted = get_config(arch)
        if (wanted.width, wanted.layers, wanted.patch_size) != (config.width, config.layers, config.patch_size):
            raise CheckpointError(f"{weights.path}: a {config.width}-wide {config.layers}-block trunk, not "
                                  f"--videomae_arch {arch} ({wanted.width} wide, {wanted.layers} blocks)")
        config = wanted
    vocabulary: TextVocabulary = bert_vocabulary(bert_path) if bert_path else clip_vocabulary()
    overrides = bert_config_fields(bert_path) | {"vocab_size": vocabulary.embedding_rows,
                                                 "pad_token_id": vocabulary.pad_id}
    if text_dropout is not None:
        overrides["hidden_dropout_prob"] = text_dropout
    trunk = JointTrunk(config, drop_path_rate=drop_path_rate, text_overrides=overrides)
    trunk.vocabulary, trunk.source = vocabulary, weights
    if weights is not None:
        fresh = load_part(trunk, weights.trunk, "trunk", weights.path, optional=("text.", "norm."))
        if any(k.startswith("norm.") for k in fresh):
            log.info("%s: no final LayerNorm in the checkpoint (a mean-pooling model); it starts at 1 / 0",
                     weights.path)
    text, where = (weights.text, weights.path) if weights is not None and weights.text else (None, None)
    if text is None and bert_path and bert_weights:
        text, where = bert_embedding_state(bert_path), bert_path
    if text is not None:
        _check_width(text, trunk, "the text embeddings", where)
        load_part(trunk.text, text, "text embedding", Path(str(where)))
    elif weights is not None and bert_weights:
        log.info("%s has no text embeddings and no --bert_path weights: the BERT embedding layer starts random",
                 weights.path)
    return trunk


def trunk_from_args(args) -> JointTrunk:
    """``build_joint_trunk`` for a set of parsed flags (``--clip_init random`` needs no checkpoint)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    # --init_model holds the text embedding (the load refuses one without it): --bert_path gives the vocabulary.
    bert_weights = not get("init_model")
    if get("bert_path") and not bert_weights:
        log.info("--bert_path %s: its vocabulary and config only; the text embedding weights come from --init_model",
                 get("bert_path"))
    if get("clip_config"):  # a self-contained checkpoint's architecture; --init_model holds every weight
        return build_joint_trunk(dict(get("clip_config")), None, get("bert_path"),
                                 drop_path_rate=get("drop_path", 0.0) or 0.0, text_dropout=get("text_dropout"),
                                 bert_weights=bert_weights)
    arch = get("videomae_arch")
    if arch is None and not get("videomae_checkpoint"):
        clip_name = get("pretrained_clip_name")
        arch = clip_name if is_architecture(clip_name) else "ViT-B-16"
    if not get("videomae_checkpoint") and get("clip_init", "pretrained") != "random":
        raise ValueError("--backbone videomae_joint needs --videomae_checkpoint PATH (VideoMAE's official .pth, a "
                         "Hugging Face VideoMAE folder, a SimVTP checkpoint) or --clip_init random for random weights")
    return build_joint_trunk(arch, get("videomae_checkpoint"), get("bert_path"), get("pretrained_dir"),
                             get("drop_path", 0.0) or 0.0, get("text_dropout"), bert_weights)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
