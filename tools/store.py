"""The on-disk video index: float16 features in safetensors shards plus metadata, appendable and resumable.

    INDEX/index.json          format, the model (checkpoint, head, CLIP config, flags), frame settings, counts
    INDEX/videos.jsonl        one line per embedded video: id, path, size, mtime, duration, fps, frames used,
                              shard and row; a later line for the same path supersedes an earlier one
    INDEX/unreadable.tsv      path <TAB> reason of every video that could not be decoded (never embedded)
    INDEX/shards/NNNNNN.safetensors   the features of one chunk: every tensor the head's encode_video
                              returns (``f0``, ``f1``, ...), floating ones in float16, rows = that chunk's videos
    INDEX/thumbs/XX/SHA1.jpg  a strip of frames per video (SHA-1 of its path)
    INDEX/ann.faiss           the approximate index when one was built (``ann`` in index.json says its settings)

A chunk is committed by writing its shard (atomically), then appending its lines to videos.jsonl: a run
killed at any point resumes from the last committed chunk (a shard without lines is deleted and redone).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT = "univtr-index-v1"


class IndexFolderError(ValueError):
    """A problem with an index folder (missing, of another format, built with another model)."""


@dataclass
class Entry:
    id: int
    path: str
    size: int
    mtime: float
    duration: float | None
    fps: float
    num_frames: int
    frames: list[int]
    shard: str
    row: int

    @property
    def name(self) -> str:
        return Path(self.path).name


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def file_signature(path) -> tuple[int, float]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime


class IndexStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.header_path = self.root / "index.json"
        self.lines_path = self.root / "videos.jsonl"
        self.unreadable_path = self.root / "unreadable.tsv"
        self.shard_dir = self.root / "shards"
        self.thumb_dir = self.root / "thumbs"
        self.ann_path = self.root / "ann.faiss"

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, root, header: dict) -> "IndexStore":
        """A new index with ``header``, or the existing one when it was built with the same model."""
        store = cls(root)
        if store.header_path.exists():
            old = store.header()
            mismatch = [key for key in ("model", "settings") if old.get(key) != header.get(key)]
            if mismatch:
                differs = {k: (old.get(k), header.get(k)) for k in mismatch}
                raise IndexFolderError(f"{store.root} was built with another {' and '.join(mismatch)} "
                                  f"({_first_difference(differs)}); choose another --out or pass --rebuild")
            return store
        if store.root.exists() and any(store.root.iterdir()):
            raise IndexFolderError(f"{store.root} exists and is not a video index; choose another --out")
        store.shard_dir.mkdir(parents=True, exist_ok=True)
        store.thumb_dir.mkdir(parents=True, exist_ok=True)
        _write_json(store.header_path, {"format": FORMAT, **header, "count": 0, "ann": None})
        return store

    @classmethod
    def open(cls, root) -> "IndexStore":
        store = cls(root)
        if not store.header_path.is_file():
            raise IndexFolderError(f"{store.root}: not a video index (no index.json); build one with python -m tools.index")
        return store

    def header(self) -> dict:
        header = json.loads(self.header_path.read_text())
        if header.get("format") != FORMAT:
            raise IndexFolderError(f"{self.root}: index format {header.get('format')!r}, this version reads {FORMAT!r}")
        return header

    def update_header(self, **fields) -> None:
        _write_json(self.header_path, {**self.header(), **fields})

    # -- entries -------------------------------------------------------------------------------
    def all_entries(self) -> list[Entry]:
        """Every committed line (a torn last line, from a kill mid-write, is ignored)."""
        if not self.lines_path.exists():
            return []
        entries = []
        for line in self.lines_path.read_text().splitlines():
            try:
                entries.append(Entry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                break
        return entries

    def entries(self) -> list[Entry]:
        """The searchable videos: the latest line of each path, in the order first added."""
        latest: dict[str, Entry] = {}
        for entry in self.all_entries():
            latest.pop(entry.path, None)
            latest[entry.path] = entry
        return sorted(latest.values(), key=lambda e: e.id)

    def thumb_path(self, video_path: str) -> Path:
        """The frame strip of a video, named by a hash of its path (written before the video is committed)."""
        digest = hashlib.sha1(video_path.encode()).hexdigest()
        return self.thumb_dir / digest[:2] / f"{digest}.jpg"

    def unreadable(self) -> dict[str, str]:
        if not self.unreadable_path.exists():
            return {}
        out = {}
        for line in self.unreadable_path.read_text().splitlines():
            path, _, reason = line.partition("\t")
            out[path] = reason
        return out

    def write_unreadable(self, failures: dict[str, str]) -> None:
        tmp = self.unreadable_path.with_name(".unreadable.tsv.tmp")
        tmp.write_text("".join(f"{p}\t{r}\n" for p, r in sorted(failures.items())))
        tmp.replace(self.unreadable_path)

    # -- writing -------------------------------------------------------------------------------
    def clean_uncommitted(self) -> None:
        """Delete shards no committed line refers to (a kill between a shard and its lines), and cut a
        torn last line."""
        entries = self.all_entries()
        if self.lines_path.exists():
            with open(self.lines_path, "w") as f:
                f.writelines(json.dumps(e.__dict__) + "\n" for e in entries)
        used = {e.shard for e in entries}
        for shard in self.shard_dir.glob("*.safetensors"):
            if shard.name not in used:
                shard.unlink()
        for tmp in self.shard_dir.glob(".*.tmp"):
            tmp.unlink()

    def next_shard_name(self) -> str:
        numbers = [int(p.stem) for p in self.shard_dir.glob("*.safetensors") if p.stem.isdigit()]
        return f"{max(numbers, default=-1) + 1:06d}.safetensors"

    def commit(self, features: tuple[torch.Tensor, ...], lines: list[dict]) -> None:
        """One chunk: its features (rows in the order of ``lines``), then its lines."""
        from safetensors.torch import save_file

        shard = self.next_shard_name()
        tensors = {f"f{i}": (t.half() if t.is_floating_point() else t).contiguous() for i, t in enumerate(features)}
        tmp = self.shard_dir / f".{shard}.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(self.shard_dir / shard)
        with open(self.lines_path, "a") as f:
            for row, line in enumerate(lines):
                f.write(json.dumps({**line, "shard": shard, "row": row}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- reading -------------------------------------------------------------------------------
    def load_features(self, entries: list[Entry] | None = None, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
        """The stored feature tuple of ``entries`` (default: every searchable video), floating tensors
        as ``dtype``, rows in the order of ``entries``."""
        from safetensors import safe_open

        entries = self.entries() if entries is None else entries
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for position, entry in enumerate(entries):
            by_shard.setdefault(entry.shard, []).append((position, entry.row))
        parts: list[list[torch.Tensor]] = []
        order: list[torch.Tensor] = []
        for shard, rows in sorted(by_shard.items()):
            with safe_open(str(self.shard_dir / shard), framework="pt") as f:
                names = sorted(f.keys(), key=lambda k: int(k[1:]))
                take = torch.tensor([r for _, r in rows])
                loaded = [f.get_tensor(name).index_select(0, take) for name in names]
            parts.append([t.to(dtype) if t.is_floating_point() else t for t in loaded])
            order.append(torch.tensor([p for p, _ in rows]))
        if not parts:
            raise IndexFolderError(f"{self.root}: the index holds no video yet")
        position = torch.cat(order)
        inverse = torch.empty_like(position)
        inverse[position] = torch.arange(len(position))
        return tuple(torch.cat([p[i] for p in parts]).index_select(0, inverse) for i in range(len(parts[0])))


def fingerprint(path, block: int = 1 << 22) -> str:
    """BLAKE2b of a file's bytes: the checkpoint an index was built with, wherever it is copied to."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def index_header(checkpoint: Path, model, strip_frames: int, strip_height: int) -> dict:
    """What must not change between the runs that fill one index: the model and the frame strips."""
    from engine.checkpoint import INPUT_FLAGS, model_flag_names, read_model_record  # start-up: see the top

    recorded = read_model_record(checkpoint)["args"]
    names = set(model_flag_names()) | set(INPUT_FLAGS)
    return {"model": {"checkpoint": str(checkpoint), "fingerprint": fingerprint(checkpoint), "head": model.head_name,
                      "clip_config": model.clip.config.to_dict(),
                      "flags": {k: v for k, v in sorted(recorded.items()) if k in names}},
            "settings": {"strip_frames": strip_frames, "strip_height": strip_height}}


def _first_difference(differs: dict, prefix: str = "") -> str:
    """``key.sub: OLD there, NEW now`` for the first leaf that differs."""
    for key, (old, new) in differs.items():
        if isinstance(old, dict) and isinstance(new, dict):
            inner = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
            return _first_difference(inner, f"{prefix}{key}.")
        return f"{prefix}{key}: {old!r} there, {new!r} now"
    return ""
