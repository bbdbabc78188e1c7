"""``--datatype`` name -> annotation parser class."""
from __future__ import annotations

_PARSERS: dict[str, type] = {}
# Names other codebases use for the same format, so their commands work unchanged.
_ALIASES = {"activity": "activitynet"}  # CLIP4Clip's --datatype for ActivityNet Captions


def register_dataset(name: str):
    """Class decorator: make a parser available as ``--datatype name``."""

    def add(cls):
        if name in _PARSERS and _PARSERS[name] is not cls:
            raise ValueError(f"dataset {name!r} is registered twice")
        cls.name = name
        _PARSERS[name] = cls
        return cls

    return add


def list_datasets() -> list[str]:
    """Every accepted ``--datatype``, aliases included."""
    return sorted([*_PARSERS, *(a for a, target in _ALIASES.items() if target in _PARSERS)])


def get_parser(name: str) -> type:
    name = _ALIASES.get(name, name)
    if name not in _PARSERS:
        raise KeyError(f"unknown --datatype {name!r}; known: {', '.join(list_datasets())}")
    return _PARSERS[name]
