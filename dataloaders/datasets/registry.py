"""``--datatype`` name -> annotation parser class."""
from __future__ import annotations

_PARSERS: dict[str, type] = {}


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
    return sorted(_PARSERS)


def get_parser(name: str) -> type:
    if name not in _PARSERS:
        raise KeyError(f"unknown --datatype {name!r}; known: {', '.join(list_datasets())}")
    return _PARSERS[name]
