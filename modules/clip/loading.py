"""Load CLIP weights from OpenAI's ``.pt`` files, Hugging Face ``CLIPModel`` folders and our safetensors.

Every format is converted to our parameter names; the architecture is read off the weights (OpenAI,
plain state dicts), from ``config.json`` (Hugging Face) or from the safetensors metadata (ours).
Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from .config import CLIPConfig, TextConfig, VisionConfig, canonical_name, get_config, list_architectures
from .model import CLIP

# Where OpenAI's official weights are published, for the "not found" message. CLIP4Clip users keep
# the file in modules/ under the same names.
OPENAI_FILES = {
    "ViT-B/32": "ViT-B-32.pt",
    "ViT-B/16": "ViT-B-16.pt",
    "ViT-L/14": "ViT-L-14.pt",
    "ViT-L/14@336px": "ViT-L-14-336px.pt",
}
HF_HUB_IDS = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}
MODULES_DIR = Path(__file__).resolve().parents[1]
# TorchScript archives carry these non-weight entries.
_SCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read or understood; the message says which file and why."""


def search_dirs(pretrained_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if pretrained_dir:
        dirs.append(Path(pretrained_dir))
    if os.environ.get("CLIP_HOME"):
        dirs.append(Path(os.environ["CLIP_HOME"]))
    dirs += [Path.home() / ".cache" / "clip", MODULES_DIR]
    return dirs


def resolve_checkpoint(name_or_path: str | os.PathLike, pretrained_dir: str | os.PathLike | None = None) -> Path:
    """The file or folder for a model name (``ViT-B/32``, ``ViT-B-32``) or an explicit path."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    by_canonical = {canonical_name(k): k for k in OPENAI_FILES}
    official = name if name in OPENAI_FILES else by_canonical.get(name.removesuffix(".pt"))
    file_name = OPENAI_FILES[official] if official else path.name
    tried = [d / file_name for d in search_dirs(pretrained_dir)]
    for candidate in tried:
        if candidate.exists():
            return candidate
    where = (
        f"OpenAI publishes {file_name} through the official CLIP repository (github.com/openai/CLIP, the _MODELS "
        f"table in clip/clip.py); the same weights are on the Hugging Face hub as {HF_HUB_IDS[official]} "
        f"(pass that folder's local path)" if official else
        "pass an existing file or folder, or one of " + ", ".join(OPENAI_FILES)
    )
    raise CheckpointError(
        f"CLIP checkpoint {name!r} not found. Searched: {', '.join(str(p) for p in tried)}. "
        f"Put the file in one of these places, or set --pretrained_dir / $CLIP_HOME. {where}."
    )


# ----------------------------------------------------------------------------------------------------
# Reading files


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _foreign_start(path: Path) -> bytes | None:
    """The first bytes of a file in none of the formats ``read_state_dict`` reads (zip, including
    TorchScript; pickle protocol 2+; the legacy tar format; safetensors' length-prefixed JSON header), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if (head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")
            or head[257:262] == b"ustar" or head[8:9] == b"{"):
        return None
    return head[:24]


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], str, dict | None]:
    """(state dict, format, config or None). Formats: 'hf', 'univtr', 'openai' (TorchScript), 'pickle'."""
    path = Path(path)
    try:
        if path.is_dir():
            return _read_hf_folder(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
            config = json.loads(meta["clip_config"]) if "clip_config" in meta else None
            return state, "univtr", config
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: the file is empty (an interrupted download or copy?)")
        if _is_torchscript(path):
            with warnings.catch_warnings():  # OpenAI's files are TorchScript; its deprecation is not the user's problem
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
            return {k: v for k, v in state.items() if k not in _SCRIPT_EXTRAS}, "openai", None
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt zip, truncated pickle, unsafe pickle, ...
        start = _foreign_start(path)
        if start is not None:  # a text file, a web page saved by a failed download: not truncated, just not one
            raise CheckpointError(f"{path} is not a checkpoint file (it starts with {start!r}; PyTorch's zip and "
                                  "pickle files, TorchScript and safetensors start otherwise): pass the weights "
                                  "file itself") from None
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}). "
                              "Is the file complete? Re-download or re-save it.") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k: v for k, v in state.items() if k not in _SCRIPT_EXTRAS}, "pickle", None


def _read_hf_folder(folder: Path) -> tuple[dict[str, Tensor], str, dict]:
    config_file = folder / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{folder}: a Hugging Face CLIP folder needs config.json beside the weights")
    hf_config = json.loads(config_file.read_text())
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin next to config.json")
    return dict(state), "hf", hf_config


# ----------------------------------------------------------------------------------------------------
# Converting to our names

_OPENAI_TEXT_RENAMES = {
    "token_embedding.": "text.token_embedding.",
    "positional_embedding": "text.positional_embedding",
    "transformer.": "text.transformer.",
    "ln_final.": "text.ln_final.",
    "text_projection": "text.proj",
}


def _rename_prefixes(state: Mapping[str, Tensor], renames: Mapping[str, str]) -> dict[str, Tensor]:
    """Replace the first matching key prefix; keys matching none are kept as they are."""
    out = {}
    for key, value in state.items():
        old = next((prefix for prefix in renames if key.startswith(prefix)), None)
        out[renames[old] + key[len(old):] if old is not None else key] = value
    return out


def from_openai(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI (and CLIP4Clip's ``clip.``-stripped) names -> ours: only the text tower moves."""
    return _rename_prefixes(state, _OPENAI_TEXT_RENAMES)


def to_openai(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return _rename_prefixes(state, {ours: theirs for theirs, ours in _OPENAI_TEXT_RENAMES.items()})


_HF_BLOCK = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def from_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``CLIPModel`` names -> ours; separate q/k/v projections are fused into in_proj."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    towers = {"vision_model.": "visual.", "text_model.": "text."}
    fixed = {
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
        "logit_scale": "logit_scale",
    }
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key in fixed:
            out[fixed[key]] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t()
        elif key == "text_projection.weight":
            out["text.proj"] = value.t()
        elif (m := re.match(r"(vision_model\.|text_model\.)(pre_layrnorm|post_layernorm|final_layer_norm)\.(\w+)$", key)):
            name = {"pre_layrnorm": "ln_pre", "post_layernorm": "ln_post", "final_layer_norm": "ln_final"}[m[2]]
            out[f"{towers[m[1]]}{name}.{m[3]}"] = value
        elif (m := re.match(r"(vision_model\.|text_model\.)encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)):
            block = f"{towers[m[1]]}transformer.resblocks.{m[2]}"
            if m[3] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((block, m[4]), {})[m[3].split(".")[1][0]] = value  # "q", "k" or "v"
            elif m[3] in _HF_BLOCK:
                out[f"{block}.{_HF_BLOCK[m[3]]}.{m[4]}"] = value
            else:
                raise CheckpointError(f"unexpected Hugging Face CLIP key {key!r}")
        else:
            raise CheckpointError(f"unexpected Hugging Face CLIP key {key!r}")
    for (block, kind), parts in qkv.items():
        out[f"{block}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_hf(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our names -> Hugging Face ``CLIPModel`` names (used by the parity tests and for export)."""
    inverse_fixed = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
        "logit_scale": "logit_scale",
    }
    towers = {"visual.": "vision_model.", "text.": "text_model."}
    norms = {"ln_pre": "pre_layrnorm", "ln_post": "post_layernorm", "ln_final": "final_layer_norm"}
    block_names = {v: k for k, v in _HF_BLOCK.items()}
    out = {}
    for key, value in state.items():
        if key in inverse_fixed:
            out[inverse_fixed[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key == "text.proj":
            out["text_projection.weight"] = value.t().contiguous()
        elif (m := re.match(r"(visual\.|text\.)(ln_pre|ln_post|ln_final)\.(\w+)$", key)):
            out[f"{towers[m[1]]}{norms[m[2]]}.{m[3]}"] = value
        elif (m := re.match(r"(visual\.|text\.)transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", key)):
            out[f"{towers[m[1]]}encoder.layers.{m[2]}.{block_names[m[3]]}.{m[4]}"] = value
        elif (m := re.match(r"(visual\.|text\.)transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key)):
            prefix = f"{towers[m[1]]}encoder.layers.{m[2]}.self_attn"
            for name, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}.{name}_proj.{m[3]}"] = chunk.contiguous()
        else:
            raise CheckpointError(f"cannot map key {key!r} to Hugging Face names")
    return out


def hf_to_config(hf_config: Mapping) -> CLIPConfig:
    vision, text = hf_config["vision_config"], hf_config["text_config"]
    for tower, cfg in (("vision", vision), ("text", text)):
        act = cfg.get("hidden_act", "quick_gelu")
        if act != "quick_gelu":
            raise CheckpointError(f"{tower} tower uses {act!r}; UniVTR's CLIP implements quick_gelu (all OpenAI CLIPs)")
    return CLIPConfig(
        embed_dim=hf_config.get("projection_dim", 512),
        vision=VisionConfig(image_size=vision["image_size"], patch_size=vision["patch_size"], width=vision["hidden_size"],
                            layers=vision["num_hidden_layers"], heads=vision["num_attention_heads"],
                            mlp_ratio=vision["intermediate_size"] / vision["hidden_size"]),
        text=TextConfig(context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
                        width=text["hidden_size"], layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
                        mlp_ratio=text["intermediate_size"] / text["hidden_size"]),
    )


def infer_config(state: Mapping[str, Tensor]) -> CLIPConfig:
    """Architecture read off our-layout weights."""
    inferred = _shape_config(state)
    # Head counts are not visible in the weights. Prefer a registered architecture of the same shape
    # (its head count is exact), else OpenAI's rule of 64 channels per head.
    for name in list_architectures():
        known = get_config(name)
        same_shape = CLIPConfig.from_dict(known.to_dict())
        same_shape.vision.heads, same_shape.text.heads = inferred.vision.heads, inferred.text.heads
        if same_shape == inferred:
            return known
    return inferred


def _shape_config(state: Mapping[str, Tensor]) -> CLIPConfig:
    def depth(prefix: str) -> int:
        return len({k.split(".")[3] for k in state if k.startswith(prefix + "transformer.resblocks.")})

    try:
        vision_width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        text_width = state["text.ln_final.weight"].shape[0]
        mlp_v = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vision_width
        mlp_t = state["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width
        return CLIPConfig(
            embed_dim=state["text.proj"].shape[1],
            vision=VisionConfig(image_size=patch * grid, patch_size=patch, width=vision_width,
                                layers=depth("visual."), heads=max(1, vision_width // 64), mlp_ratio=mlp_v),
            text=TextConfig(context_length=state["text.positional_embedding"].shape[0],
                            vocab_size=state["text.token_embedding.weight"].shape[0], width=text_width,
                            layers=depth("text."), heads=max(1, text_width // 64), mlp_ratio=mlp_t),
        )
    except KeyError as exc:
        raise CheckpointError(f"not a CLIP ViT state dict: missing {exc}") from None


def to_our_layout(state: Mapping[str, Tensor], fmt: str) -> dict[str, Tensor]:
    if fmt == "hf" or any(k.startswith("vision_model.") for k in state):
        return from_hf(state)
    if any(k.startswith("clip.") for k in state):  # a CLIP4Clip / UniVTR model checkpoint
        state = {k[len("clip."):]: v for k, v in state.items() if k.startswith("clip.")}
    if "text.proj" in state:
        return dict(state)
    return from_openai(state)


def load_clip(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
              pretrained_dir: str | os.PathLike | None = None) -> CLIP:
    """CLIP with pretrained weights, in fp32, from a model name or a file/folder path.

    Accepts OpenAI TorchScript ``.pt`` archives, plain state dicts (OpenAI or our names, loaded with
    ``weights_only=True``), Hugging Face ``CLIPModel`` folders and our ``.safetensors`` files.
    """
    path = resolve_checkpoint(name_or_path, pretrained_dir)
    state, fmt, config = read_state_dict(path)
    if fmt == "hf":
        cfg = hf_to_config(config)
    elif config is not None:
        cfg = CLIPConfig.from_dict(config)
    else:
        cfg = None
    state = to_our_layout(state, fmt)
    cfg = cfg or infer_config(state)
    with torch.device("meta"):
        model = CLIP(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the inferred architecture "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device)


def save_clip(model: CLIP, path: str | os.PathLike) -> Path:
    """Save in our layout as safetensors, with the architecture in the metadata; written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"clip_config": json.dumps(model.config.to_dict()), "format": "univtr"})
    tmp.replace(path)
    return path
