"""Load VideoMAE-family weights from a local path: one reader, every layout converted to our names.

Layouts recognised (``VideoMAEWeights.layout``):

* ``videomae_pretrain``: VideoMAE's official pre-training ``.pth`` ({"model": ...}, ``encoder.`` /
  ``decoder.`` prefixes, ``encoder_to_decoder``, ``mask_token``);
* ``simvtp_pretrain``: SimVTP's pre-training checkpoint, the above plus ``text_embeddings.`` (BERT),
  ``text_cls.`` (MLM) and ``vtm_head.``;
* ``videomae_finetune``: a VideoMAE fine-tuned ``.pth`` (no prefix; its classifier is dropped);
* ``simvtp_finetune``: SimVTP's fine-tuned dual encoder (``video_encoder.`` / ``text_encoder.``);
* ``hf``: a Hugging Face ``VideoMAEModel`` or ``VideoMAEForPreTraining`` folder (config.json + weights);
* ``univtr``: our ``.safetensors`` (``save_videomae``), the architecture in its metadata.

Pickles are read with ``weights_only=True``. A missing file names every path searched; an empty,
truncated or unreadable file and an unknown layout are one line each. Nothing is ever downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from modules.clip.loading import CheckpointError, read_state_dict

from .config import DecoderConfig, VideoMAEConfig, get_config, list_architectures

MODULES_DIR = Path(__file__).resolve().parents[1]
INDEX_BUFFERS = ("position_ids", "token_type_ids")  # BERT's arange / zeros buffers, derived from the shapes
WHERE_PUBLISHED = ("VideoMAE's official weights are listed in MODEL_ZOO.md of github.com/MCG-NJU/VideoMAE (SimVTP "
                   "starts from ViT-B, Kinetics-400, 1600-epoch pre-training) and on the Hugging Face hub as "
                   "MCG-NJU/videomae-base (pass that folder's local path); SimVTP's own checkpoints are linked from "
                   "github.com/mayuelala/SimVTP")


@dataclass
class VideoMAEWeights:
    """Tensors of a checkpoint in our names, by part (None: the checkpoint does not have that part)."""

    path: Path
    layout: str
    config: VideoMAEConfig
    trunk: dict[str, Tensor]  # visual.proj.*, blocks.*, norm.* (JointTrunk names, without the text side)
    text: dict[str, Tensor] | None = None  # BertEmbeddings names
    decoder: dict[str, Tensor] | None = None  # PixelDecoder names
    heads: dict[str, Tensor] = field(default_factory=dict)  # mlm_head.*, vtm_head.* (SimVTP pre-training)
    text_trunk: dict[str, Tensor] | None = None  # the text copy of a fine-tuned dual encoder (blocks.*)
    fc_norms: dict[str, Tensor] = field(default_factory=dict)  # video_fc_norm.*, text_fc_norm.*


def search_dirs(pretrained_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = [Path(pretrained_dir)] if pretrained_dir else []
    if os.environ.get("VIDEOMAE_HOME"):
        dirs.append(Path(os.environ["VIDEOMAE_HOME"]))
    return dirs + [Path.home() / ".cache" / "videomae", MODULES_DIR]


def resolve_checkpoint(name_or_path: str | os.PathLike, pretrained_dir: str | os.PathLike | None = None) -> Path:
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    tried = [path] + [d / path.name for d in search_dirs(pretrained_dir)]
    for candidate in tried[1:]:
        if candidate.exists():
            return candidate
    raise CheckpointError(f"VideoMAE checkpoint {str(name_or_path)!r} not found. Searched: "
                          f"{', '.join(str(p) for p in tried)}. Put it in one of these places or set --pretrained_dir "
                          f"/ $VIDEOMAE_HOME. {WHERE_PUBLISHED}.")


# ----------------------------------------------------------------------------------------------------
# Reading


def _unwrap(state) -> dict:
    for key in ("model", "module", "state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"expected a state dict, found {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict | None, dict | None]:
    """(tensors, Hugging Face config or None, our config from safetensors metadata or None)."""
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise CheckpointError(f"{path}: a Hugging Face VideoMAE folder needs config.json beside the weights")
        hf_config = json.loads(config_file.read_text())
        if hf_config.get("model_type") != "videomae":
            raise CheckpointError(f"{path}: config.json describes a {hf_config.get('model_type')!r} model, "
                                  "not videomae")
        weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
        if not weights:
            raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin next to config.json")
        return _read_file(weights[0])[0], hf_config, None
    state, meta = _read_file(path)
    return state, None, meta


def _read_file(path: Path) -> tuple[dict[str, Tensor], dict | None]:
    """(tensors, our metadata config or None) of one weights file."""
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # truncated or not a safetensors file
            raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}). Is the file "
                                  "complete? Re-download or re-save it.") from None
        return state, json.loads(meta["videomae_config"]) if "videomae_config" in meta else None
    # VideoMAE's and SimVTP's .pth files also pickle the run's argparse.Namespace: allowed, nothing else is.
    with torch.serialization.safe_globals([argparse.Namespace]):
        state, _, _ = read_state_dict(path)  # empty / truncated / unsafe pickles: one line each
    try:
        return _unwrap(state), None
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None


# ----------------------------------------------------------------------------------------------------
# Converting to our names


def _split(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _official_trunk(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """VideoMAE encoder names (``patch_embed.proj``, ``blocks``, ``norm``) -> ours; ours keep its block names."""
    out = {}
    for key, value in state.items():
        if key.startswith("patch_embed.proj."):
            out["visual.proj" if key.endswith(".weight") else "visual.proj_bias"] = value
        elif key.startswith(("blocks.", "norm.")):
            out[key] = value
    return out


def _text(state: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    text = {k: v for k, v in state.items() if not k.endswith(INDEX_BUFFERS)}
    return text or None


_HF_BLOCK = {"attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
             "layernorm_before": "norm1", "layernorm_after": "norm2"}


def _from_hf_blocks(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Hugging Face layer ``prefix{i}.…`` -> ``blocks.{i}.…``; separate q/k/v fused into ``qkv``. The q and v
    biases are ``query.bias``/``value.bias`` in memory and ``q_bias``/``v_bias`` in saved files."""
    out, qkv = {}, {}
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.+)$")
    for key, value in state.items():
        m = pattern.match(key)
        if not m:
            continue
        block, rest = f"blocks.{m[1]}", m[2]
        name, _, kind = rest.rpartition(".")
        if rest in ("attention.attention.q_bias", "attention.attention.v_bias"):
            out[f"{block}.attn.{kind}"] = value
        elif name.startswith("attention.attention.") and name.rsplit(".", 1)[1] in ("query", "key", "value"):
            part = name.rsplit(".", 1)[1][0]  # q, k or v
            if kind == "weight":
                qkv.setdefault(block, {})[part] = value
            else:
                out[f"{block}.attn.{part}_bias"] = value
        elif name in _HF_BLOCK:
            out[f"{block}.{_HF_BLOCK[name]}.{kind}"] = value
        else:
            raise CheckpointError(f"unexpected Hugging Face VideoMAE key {key!r}")
    for block, parts in qkv.items():
        out[f"{block}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _from_hf(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    encoder = _split(state, "videomae.") or dict(state)
    trunk = _from_hf_blocks(encoder, "encoder.layer.")
    for kind, ours in (("weight", "visual.proj"), ("bias", "visual.proj_bias")):
        if f"embeddings.patch_embeddings.projection.{kind}" in encoder:
            trunk[ours] = encoder[f"embeddings.patch_embeddings.projection.{kind}"]
        if f"layernorm.{kind}" in encoder:
            trunk[f"norm.{kind}"] = encoder[f"layernorm.{kind}"]
    decoder = None
    if "encoder_to_decoder.weight" in state:
        decoder = _from_hf_blocks(state, "decoder.decoder_layers.")
        decoder |= {k: state[k] for k in ("encoder_to_decoder.weight", "mask_token")}
        decoder |= {k[len("decoder."):]: v for k, v in state.items()
                    if k.startswith(("decoder.norm.", "decoder.head."))}
    return trunk, decoder


def _decoder(state: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    if "encoder_to_decoder.weight" not in state:
        return None
    out = _split(state, "decoder.")
    out.pop("pos_embed", None)
    return out | {k: state[k] for k in ("encoder_to_decoder.weight", "mask_token")}


def classify(state: Mapping[str, Tensor], hf_config: dict | None, meta: dict | None) -> str:
    if meta is not None:
        return "univtr"
    if hf_config is not None or any(k.startswith(("embeddings.patch_embeddings.", "videomae.")) for k in state):
        return "hf"
    if "video_encoder.patch_embed.proj.weight" in state:
        return "simvtp_finetune"
    if "encoder.patch_embed.proj.weight" in state:
        return "simvtp_pretrain" if "text_embeddings.word_embeddings.weight" in state else "videomae_pretrain"
    if "patch_embed.proj.weight" in state:
        return "videomae_finetune"
    shown = ", ".join(sorted(state)[:6])
    raise CheckpointError(f"unknown checkpoint layout (first keys: {shown}): expected VideoMAE's (encoder./decoder. or "
                          "patch_embed./blocks.), SimVTP's (text_embeddings., video_encoder./text_encoder.), a Hugging "
                          "Face VideoMAE folder or a UniVTR .safetensors")


def convert(state: Mapping[str, Tensor], layout: str) -> dict:
    """The parts of a checkpoint, in our names: trunk, text, decoder, heads, text_trunk, fc_norms."""
    if layout == "univtr":
        return {"trunk": {k: v for k, v in state.items() if k.startswith(("visual.", "blocks.", "norm."))},
                "text": _text(_split(state, "text.")), "decoder": _split(state, "decoder.") or None}
    if layout == "hf":
        trunk, decoder = _from_hf(state)
        return {"trunk": trunk, "decoder": decoder}
    if layout == "simvtp_finetune":
        video, text = _split(state, "video_encoder."), _split(state, "text_encoder.")
        fc = {f"{side}_fc_norm.{k}": v for side, part in (("video", video), ("text", text))
              for k, v in _split(part, "fc_norm.").items()}
        blocks = {k: v for k, v in _official_trunk(text).items() if k.startswith("blocks.")}  # its patch_embed is unused
        return {"trunk": _official_trunk(video), "text": _text(_split(text, "text_embeddings.")),
                "text_trunk": blocks, "fc_norms": fc}
    if layout == "videomae_finetune":
        return {"trunk": _official_trunk(state)}
    heads = {f"mlm_head.{k}": v for k, v in _split(state, "text_cls.").items()}
    heads |= {f"vtm_head.{k}": v for k, v in _split(state, "vtm_head.").items()}
    return {"trunk": _official_trunk(_split(state, "encoder.")), "text": _text(_split(state, "text_embeddings.")),
            "decoder": _decoder(state), "heads": heads}


def infer_config(parts: dict, hf_config: dict | None, meta: dict | None) -> VideoMAEConfig:
    if meta is not None:
        return VideoMAEConfig.from_dict(meta)
    if hf_config is not None:
        return hf_to_config(hf_config)
    trunk = parts["trunk"]
    try:
        width, _, tubelet, patch, _ = trunk["visual.proj"].shape
        layers = len({k.split(".")[1] for k in trunk if k.startswith("blocks.")})
        hidden = trunk["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not a VideoMAE trunk: missing {exc}") from None
    shape = dict(patch_size=patch, tubelet_size=tubelet, width=width, layers=layers, mlp_ratio=hidden / width,
                 qkv_bias="blocks.0.attn.q_bias" in trunk)
    decoder = parts.get("decoder")
    for name in list_architectures():  # a registered architecture of the same shape: exact heads, size, frames
        known = get_config(name)
        if all(getattr(known, k) == v for k, v in shape.items()) and (
                decoder is None or known.decoder.width == decoder["encoder_to_decoder.weight"].shape[0]):
            return known
    config = VideoMAEConfig(**shape, heads=max(1, width // 64))
    if decoder is not None:
        dec_width = decoder["encoder_to_decoder.weight"].shape[0]
        config.decoder = DecoderConfig(width=dec_width, layers=len({k.split(".")[1] for k in decoder
                                                                   if k.startswith("blocks.")}),
                                       heads=max(1, dec_width // 64))
    return config


def hf_to_config(hf: Mapping) -> VideoMAEConfig:
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"the VideoMAE trunk implements exact GELU; this checkpoint uses {hf['hidden_act']!r}")
    width = hf["hidden_size"]
    return VideoMAEConfig(
        image_size=hf["image_size"], patch_size=hf["patch_size"], num_frames=hf["num_frames"],
        tubelet_size=hf["tubelet_size"], width=width, layers=hf["num_hidden_layers"], heads=hf["num_attention_heads"],
        mlp_ratio=hf["intermediate_size"] / width, norm_eps=hf.get("layer_norm_eps", 1e-12),
        qkv_bias=hf.get("qkv_bias", True),
        decoder=DecoderConfig(width=hf.get("decoder_hidden_size", 384), layers=hf.get("decoder_num_hidden_layers", 4),
                              heads=hf.get("decoder_num_attention_heads", 6),
                              mlp_ratio=hf.get("decoder_intermediate_size", 1536) / hf.get("decoder_hidden_size", 384)))


def load_videomae(name_or_path: str | os.PathLike, pretrained_dir: str | os.PathLike | None = None) -> VideoMAEWeights:
    """Every part a VideoMAE / SimVTP / Hugging Face / UniVTR checkpoint holds, in our names, with its
    architecture (read from config.json or our metadata, else off the tensor shapes)."""
    path = resolve_checkpoint(name_or_path, pretrained_dir)
    state, hf_config, meta = read_checkpoint(path)
    try:
        layout = classify(state, hf_config, meta)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    parts = convert(state, layout)
    if not parts["trunk"]:
        raise CheckpointError(f"{path}: a {layout} checkpoint without trunk tensors")
    config = infer_config(parts, hf_config, meta)
    floats = {name: {k: v.float() if v.is_floating_point() else v for k, v in part.items()}
              for name, part in parts.items() if isinstance(part, dict)}
    return VideoMAEWeights(path, layout, config, **floats)


def load_part(module: torch.nn.Module, tensors: Mapping[str, Tensor], what: str, path: Path,
              optional: tuple[str, ...] = ()) -> list[str]:
    """``tensors`` into ``module`` (strict except for keys starting with ``optional``); returns the
    optional keys that were missing (they keep their initialisation). Mismatches are one line. BERT's
    index buffers are neither required nor refused: transformers < 4.31 saved ``position_ids``."""
    try:
        missing, unexpected = module.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as error:  # shape mismatches
        shapes = "; ".join(line.strip() for line in str(error).splitlines()[1:4])
        raise CheckpointError(f"{path}: the {what} does not match the architecture being built ({shapes})") from None
    missing = [k for k in missing if not k.endswith(INDEX_BUFFERS)]
    unexpected = [k for k in unexpected if not k.endswith(INDEX_BUFFERS)]
    required = [k for k in missing if not k.startswith(optional)]
    if required or unexpected:
        raise CheckpointError(f"{path}: the {what} does not match the architecture being built (missing "
                              f"{required[:5]}, unexpected {unexpected[:5]})")
    return missing


def save_videomae(trunk, path: str | os.PathLike, decoder=None) -> Path:
    """Our layout as safetensors, the architecture in the metadata; written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v for k, v in trunk.state_dict().items() if not k.endswith(INDEX_BUFFERS)}
    if decoder is not None:
        state |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(tmp), metadata={"videomae_config": json.dumps(trunk.config.to_dict()), "format": "univtr"})
    tmp.replace(path)
    return path
