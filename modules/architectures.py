"""Architectures as data, for every backbone family: a folder of JSON files, one architecture each,
looked up by name (with the published spellings, e.g. ``ViT-B/32``, as aliases of the file names)."""
from __future__ import annotations

import json
from pathlib import Path


class ArchitectureFiles:
    def __init__(self, folder: Path, aliases: dict[str, str], family: str):
        self.folder, self.aliases, self.family = folder, aliases, family

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json"))

    def exists(self, name: str | None) -> bool:
        return bool(name) and (self.folder / f"{self.canonical(str(name))}.json").exists()

    def read(self, name: str) -> dict:
        """The JSON of architecture ``name``; an unknown name is a ValueError listing the known ones."""
        if not self.exists(name):
            raise ValueError(f"unknown {self.family} architecture {name!r}; known: {', '.join(self.names())}")
        return json.loads((self.folder / f"{self.canonical(name)}.json").read_text())
