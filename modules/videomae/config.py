"""VideoMAE architectures as data: each JSON file in ``model_configs/`` is one joint trunk.

A file names the video side (tubelet Conv3d, fixed sin-cos positions, no CLS token), the trunk
(pre-LN ViT blocks with separate q/v biases, exact GELU, LayerNorm eps), the MAE pixel decoder
(width, depth, heads) and the BERT embedding layer that feeds text into the same trunk (any
``transformers.BertConfig`` field of the embedding part; the hidden size is the trunk's width).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from modules.architectures import ArchitectureFiles

CONFIG_DIR = Path(__file__).with_name("model_configs")
_ALIASES = {"ViT-S/16": "ViT-S-16", "ViT-B/16": "ViT-B-16", "ViT-L/16": "ViT-L-16"}
# The BertConfig fields the embedding layer reads (BertEmbeddings: word, position, type, LayerNorm, dropout).
TEXT_FIELDS = ("vocab_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
               "pad_token_id")


@dataclass
class DecoderConfig:
    width: int = 384
    layers: int = 4
    heads: int = 6
    mlp_ratio: float = 4.0


@dataclass
class VideoMAEConfig:
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    text: dict = field(default_factory=lambda: {"vocab_size": 30522, "max_position_embeddings": 512,
                                                "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                                                "hidden_dropout_prob": 0.1, "pad_token_id": 0})

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def num_tokens(self, frames: int | None = None) -> int:
        """Video tokens of a clip: (frames / tubelet) x grid x grid (1568 at B/16, 16 frames)."""
        return ((frames or self.num_frames) // self.tubelet_size) * self.grid ** 2

    @property
    def tube_pixels(self) -> int:
        """Values per tube: tubelet x patch x patch x 3 (1536 at B/16)."""
        return self.tubelet_size * self.patch_size ** 2 * 3

    def bert_config(self, **overrides):
        """The ``transformers.BertConfig`` of the text embedding layer (hidden size = trunk width)."""
        from transformers import BertConfig

        return BertConfig(**{**self.text, **overrides, "hidden_size": self.width})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VideoMAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown VideoMAE config keys: {sorted(unknown)} (known: {sorted(known)})")
        text = dict(cls().text) | dict(data.get("text", {}))
        bad_text = set(text) - set(TEXT_FIELDS)
        if bad_text:
            raise ValueError(f"unknown text-embedding keys {sorted(bad_text)}; known: {list(TEXT_FIELDS)}")
        values = {k: v for k, v in data.items() if k not in ("decoder", "text")}
        return cls(**values, decoder=DecoderConfig(**data.get("decoder", {})), text=text)

    def to_dict(self) -> dict:
        return asdict(self)


ARCHITECTURES = ArchitectureFiles(CONFIG_DIR, _ALIASES, "VideoMAE")
canonical_name, list_architectures, is_architecture = ARCHITECTURES.canonical, ARCHITECTURES.names, ARCHITECTURES.exists


def get_config(name_or_config: str | Mapping[str, Any] | VideoMAEConfig) -> VideoMAEConfig:
    """A VideoMAEConfig from an architecture name (``ViT-B/16`` or ``ViT-B-16``), a dict, or a config."""
    if isinstance(name_or_config, VideoMAEConfig):
        return name_or_config
    if isinstance(name_or_config, Mapping):
        return VideoMAEConfig.from_dict(name_or_config)
    return VideoMAEConfig.from_dict(ARCHITECTURES.read(name_or_config))
