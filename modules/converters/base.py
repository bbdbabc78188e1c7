"""What every checkpoint converter shares: the ``Conversion`` record, the ``Converter`` interface, the
registry, and ``Layout`` (prefix renames, reshaped tensors and drop rules, applied both ways).

A converter describes one seed repository's state-dict layout: for every tensor of that layout it says
where the tensor goes in this project's model or why it is dropped. A checkpoint key that no rule
explains is *unexplained*, and the load fails naming it (``modules.converters.checkpoint``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Collection, Mapping, Sequence

from torch import Tensor

from modules.clip.loading import _OPENAI_TEXT_RENAMES  # OpenAI's text-tower names -> ours (one table)

# flag destination -> (the value the weights imply, which tensor says so)
ImpliedFlags = dict[str, tuple[Any, str]]


@dataclass
class Conversion:
    """A checkpoint in this project's names, and the account of every tensor that is not."""

    state: dict[str, Tensor]
    source_keys: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> checkpoint keys not loaded
    unexplained: list[str] = field(default_factory=list)  # checkpoint keys no rule of the layout knows
    not_needed: dict[str, str] = field(default_factory=dict)  # model key prefix -> why the file may lack it
    notes: list[str] = field(default_factory=list)  # values the conversion sets that the file lacks, and why
    refusal: str | None = None  # the layout is recognised but its model is not one this project computes

    def drop(self, reason: str, key: str) -> None:
        self.dropped.setdefault(reason, []).append(key)

    @property
    def explained(self) -> float:
        """Share of the checkpoint's tensors the layout accounts for (mapped or dropped by a rule)."""
        return 1.0 - len(self.unexplained) / max(1, self.source_keys)


def group_of(key: str) -> str:
    """Log group of one of our keys: the CLIP tower, or the head module it belongs to."""
    if key.startswith("clip."):
        part = key.split(".")[1]
        return {"visual": "CLIP vision", "text": "CLIP text"}.get(part, f"CLIP {part}")
    return key.split(".")[0]


@dataclass(frozen=True)
class Reshape:
    """One tensor whose shape differs between the two layouts (e.g. a leading singleton axis)."""

    theirs: str
    ours: str
    to_ours: Callable[[Tensor], Tensor]
    to_theirs: Callable[[Tensor], Tensor]


def _renamed(key: str, rules: Sequence[tuple[str, str]]) -> str | None:
    """A rule ``(old, new)`` whose ``old`` ends with '.' renames a prefix; otherwise one exact key."""
    for old, new in rules:
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old):]
    return None


class Layout:
    """Prefix renames (theirs -> ours), reshaped tensors and drop rules of one seed layout."""

    def __init__(self, renames: Sequence[tuple[str, str]], reshapes: Sequence[Reshape] = (),
                 drops: Sequence[tuple[str, str]] = ()):
        self.forward = sorted(renames, key=lambda rule: -len(rule[0]))  # the most specific rule first
        self.backward = sorted(((new, old) for old, new in renames), key=lambda rule: -len(rule[0]))
        self.reshapes = {r.theirs: r for r in reshapes}
        self.reshapes_ours = {r.ours: r for r in reshapes}
        self.drops = [(re.compile(pattern), reason) for pattern, reason in drops]

    def to_ours(self, state: Mapping[str, Tensor]) -> Conversion:
        conv = Conversion({}, source_keys=len(state))
        for key, value in state.items():
            if key in self.reshapes:
                rule = self.reshapes[key]
                conv.state[rule.ours] = rule.to_ours(value)
                continue
            reason = next((why for pattern, why in self.drops if pattern.search(key)), None)
            if reason is not None:
                conv.drop(reason, key)
                continue
            ours = _renamed(key, self.forward)
            if ours is None:
                conv.unexplained.append(key)
            else:
                conv.state[ours] = value
        return conv

    def to_theirs(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for key, value in state.items():
            if key in self.reshapes_ours:
                rule = self.reshapes_ours[key]
                out[rule.theirs] = rule.to_theirs(value)
                continue
            theirs = _renamed(key, self.backward)
            if theirs is None:
                raise KeyError(f"no place for {key!r} in this layout")
            out[theirs] = value
        return out


def openai_clip_renames(prefix: str) -> list[tuple[str, str]]:
    """OpenAI's CLIP names under ``prefix`` (CLIP4Clip and its forks keep them under ``clip.``) -> ours."""
    return [(prefix + "visual.", "clip.visual."), (prefix + "logit_scale", "clip.logit_scale"),
            *((prefix + theirs, "clip." + ours) for theirs, ours in _OPENAI_TEXT_RENAMES.items())]


def block_count(state: Mapping[str, Tensor], prefix: str) -> int:
    """Number of residual blocks ``prefix + "N."`` present in ``state``."""
    return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})


class Converter:
    """One seed repository's checkpoint layout. Subclasses set the class attributes and ``layout``."""

    name: ClassVar[str] = ""  # the --init_format value
    title: ClassVar[str] = ""  # what the log and the errors call the layout
    markers: ClassVar[tuple[str, ...]] = ()  # keys (or prefixes ending in '.') only this layout has
    layout: ClassVar[Layout]

    def matches(self, keys: Collection[str]) -> bool:
        return any(key == m or (m.endswith(".") and key.startswith(m)) for m in self.markers for key in keys)

    def to_ours(self, state: Mapping[str, Tensor]) -> Conversion:
        return self.layout.to_ours(state)

    def from_ours(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Our model's state dict in the seed's layout (round-trip tests, export)."""
        return self.layout.to_theirs(state)

    def implied_flags(self, conv: Conversion, args) -> ImpliedFlags:
        """The flags the converted weights determine (beyond the backbone, which is common)."""
        return {}


CONVERTERS: dict[str, Converter] = {}


def register_converter(cls: type[Converter]) -> type[Converter]:
    if cls.name in CONVERTERS:
        raise ValueError(f"a converter named {cls.name!r} is already registered")
    CONVERTERS[cls.name] = cls()
    return cls
