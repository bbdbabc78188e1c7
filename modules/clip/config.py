"""CLIP architectures as data: each JSON file in ``model_configs/`` is one architecture."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from modules.architectures import ArchitectureFiles

CONFIG_DIR = Path(__file__).with_name("model_configs")

# OpenAI's names use "/" and "@", file names cannot; both spellings resolve to the same config.
_ALIASES = {"ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336px"}


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CLIPConfig":
        unknown = set(data) - {"embed_dim", "vision", "text"}
        if unknown:
            raise ValueError(f"unknown CLIP config keys: {sorted(unknown)}")
        return cls(
            embed_dim=int(data.get("embed_dim", 512)),
            vision=VisionConfig(**data.get("vision", {})),
            text=TextConfig(**data.get("text", {})),
        )

    def to_dict(self) -> dict:
        return asdict(self)


ARCHITECTURES = ArchitectureFiles(CONFIG_DIR, _ALIASES, "CLIP")
canonical_name, list_architectures = ARCHITECTURES.canonical, ARCHITECTURES.names


def get_config(name_or_config: str | Mapping[str, Any] | CLIPConfig) -> CLIPConfig:
    """A CLIPConfig from an architecture name (``ViT-B/32`` or ``ViT-B-32``), a dict, or a config."""
    if isinstance(name_or_config, CLIPConfig):
        return name_or_config
    if isinstance(name_or_config, Mapping):
        return CLIPConfig.from_dict(name_or_config)
    return CLIPConfig.from_dict(ARCHITECTURES.read(name_or_config))
