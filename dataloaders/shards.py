"""Training pairs from WebDataset tar shards written by ``preprocess/make_shards.py``.

A shard ``DIR/000012.tar`` holds samples ``KEY.json`` ({"video_id", "captions", "start", "end"}) and
``KEY.mp4`` (the video file's bytes as they were; another container keeps its extension, ``KEY.webm``).
``DIR/shards.json`` lists every shard with its sample count, so epoch sizes are known without a scan.

    dataset = ShardDataset("DIR/{000000..000099}.tar", VideoClipLoader.from_args(args, train=True),
                           max_words=args.max_words, seed=args.seed, rank=env.rank, world_size=env.world_size,
                           micro_batch=micro, num_workers=args.num_thread_reader)
    loader = DataLoader(dataset, batch_size=micro, num_workers=args.num_thread_reader)  # not persistent workers
    progress = dataset.progress()
    if resuming:
        progress.load_state_dict(checkpoint["shards"])        # its epoch and its completed shards
    for epoch in range(progress.epoch, epochs):
        if epoch != progress.epoch:
            progress.start_epoch(epoch)
        dataset.set_epoch(epoch, skip_shards=progress.done)
        steps = dataset.steps_per_epoch()                    # the same on every rank
        for batch in loader:                                 # exactly `steps` batches
            ...train...
            progress.update(batch["shard_index"])
            # checkpoint: save ShardProgress.merged(every rank's progress.state_dict()).state_dict()

Order. Epoch e permutes the shard list by (seed, e); rank r takes shards r, r+W, r+2W, ... of it and
DataLoader worker w every K-th of those (K = num_workers, at least 1). A worker reads its shards in that
order through a shuffle buffer whose draws depend on (seed, e, r, w) only; a sample's caption (one of
its captions) and any random frame sampling depend on (seed, e, key) only. Videos are decoded in memory
after the buffer, so the buffer holds bytes, not decoded clips.

DataLoader workers get a copy of the dataset when an epoch's iterator starts: call ``set_epoch`` before
it, and do not use persistent workers; give the DataLoader ``batch_size=micro_batch`` and the
``num_workers`` the dataset was built with (a different worker count stops with DataError).

Equal steps. Each worker forms its own batches, so with ``micro_batch`` set a worker yields whole
batches only, and every rank yields exactly ``steps_per_epoch()`` batches: the minimum over ranks of
the sum over its workers of (samples in the worker's shards // micro_batch), from shards.json counts.
With one worker this is the minimum over ranks of (samples in the rank's shards // micro_batch).
Samples past that cut are not seen in that epoch (the permutation changes which ones each epoch).

Broken samples. A sample whose json or video cannot be read is logged with its shard and key, counted
(``broken_samples``, per process) and never yielded; its slot is given to another sample of the same
shard drawn again, so a shard read to its end yields exactly its listed count and the ranks stay in
step. Only a shard with no readable sample at all leaves slots that are filled from the worker's
latest good sample, with a warning. No item is ever a zero tensor in place of a video.

Resume guarantee (shard granularity). ``ShardProgress`` counts the consumed samples of each shard; a
shard is done when all of its listed samples have been consumed. After ``load_state_dict`` and
``set_epoch(epoch, skip_shards=progress.done)`` the epoch is replayed with the same shard -> rank ->
worker assignment minus the done shards: no completed shard is read again, and every shard that was
not completed is read again from its first sample (so the samples of shards partially consumed at the
checkpoint are seen twice in that epoch), subject to the equal-steps cut above, which is computed for
what is left. Sample order inside the resumed epoch differs from the interrupted run's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from dataloaders.base import DataError
from dataloaders.video.backends import VideoBytes
from dataloaders.video.errors import VideoDecodeError
from modules.clip import tokenize

logger = logging.getLogger(__name__)

INDEX_FILE = "shards.json"
FORMAT_VERSION = 1
META_FIELD = "json"


def expand_shards(shards: str | os.PathLike | Sequence[str]) -> list[str]:
    """A brace pattern ``DIR/{000000..000099}.tar``, a list of paths, or a shard folder (every shard its
    ``shards.json`` lists) -> the list of shard paths."""
    if isinstance(shards, (str, os.PathLike)) and os.path.isdir(shards):
        if not os.path.isfile(os.path.join(shards, INDEX_FILE)):  # named as given, not as the pattern's parent
            raise DataError(f"shard folder {shards} holds no {INDEX_FILE}, so no finished shards: "
                            "preprocess/make_shards.py writes the shards and then the index there")
        return [os.path.join(shards, entry["name"]) for entry in read_index(shards)["shards"]]
    if isinstance(shards, (str, os.PathLike)):
        from webdataset.shardlists import expand_urls

        return list(expand_urls(str(shards)))
    return [str(s) for s in shards]


def read_index(folder: str | os.PathLike) -> dict:
    """The ``shards.json`` of a shard folder."""
    path = os.path.join(folder, INDEX_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path} not found: preprocess/make_shards.py writes it once every shard is complete") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error})") from None
    if index.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: shard format {index.get('format_version')!r}, this reader reads {FORMAT_VERSION}")
    return index


def shard_counts(paths: Sequence[str]) -> tuple[list[int], bool]:
    """(samples of each shard, whether the captions form one paragraph) from each folder's shards.json."""
    folders: dict[str, tuple[dict[str, int], bool]] = {}
    sizes, paragraph = [], set()
    for path in paths:
        folder = os.path.dirname(path) or "."
        if folder not in folders:
            index = read_index(folder)
            folders[folder] = ({s["name"]: int(s["samples"]) for s in index["shards"]}, bool(index.get("paragraph")))
        counts, is_paragraph = folders[folder]
        name = os.path.basename(path)
        if name not in counts:
            raise DataError(f"{path} is not listed in {os.path.join(folder, INDEX_FILE)}")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such shard file")
        sizes.append(counts[name])
        paragraph.add(is_paragraph)
    if len(paragraph) > 1:
        raise DataError("the shards mix paragraph and single-caption datasets; read them separately")
    return sizes, paragraph.pop()


def check_meta(meta) -> None:
    """Raise ValueError unless ``meta`` is a sample's json as make_shards writes it."""
    if not isinstance(meta, dict):
        raise ValueError(f"expected an object, got {type(meta).__name__}")
    captions = meta.get("captions")
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError("'captions' must be a non-empty list of strings")
    for name in ("start", "end"):
        if meta.get(name) is not None and not isinstance(meta[name], (int, float)):
            raise ValueError(f"'{name}' must be a number or null")


def _key_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "little")


def split_batches(full: Sequence[int], steps: int) -> list[int]:
    """``steps`` batches over workers that can make at most ``full[w]`` each, as evenly as possible."""
    if steps > sum(full):
        raise ValueError(f"{steps} batches do not fit in {list(full)}")
    take = [0] * len(full)
    left = steps
    while left:
        for w in range(len(full)):
            if left and take[w] < full[w]:
                take[w] += 1
                left -= 1
    return take


@dataclass
class _Sample:
    """A sample as read from its shard; ``error`` is set when it could not be read."""

    shard: int
    key: str
    meta: dict | None = None
    video: bytes | None = None
    field: str = ""
    error: str | None = None


class ShardDataset(IterableDataset):
    """Training items from tar shards: dicts with ``text_ids``, ``text_mask``, ``video``, ``video_mask``
    (as :class:`~dataloaders.base.RetrievalDataset` gives them), ``sample_key`` (str) and ``shard_index``
    (int, position in :attr:`shard_paths`). See the module docstring for order, steps and resume."""

    def __init__(self, shards: str | os.PathLike | Sequence[str], video_loader: Callable, *, max_words: int = 32,
                 tokenizer: Callable | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, micro_batch: int | None = None, num_workers: int = 0):
        if getattr(video_loader, "backend", None) == "lmdb":
            raise ValueError("shards carry the video files; the lmdb video backend does not apply to them")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if shuffle_buffer < 1 or (micro_batch is not None and micro_batch < 1) or num_workers < 0:
            raise ValueError("shuffle_buffer and micro_batch must be at least 1 and num_workers at least 0")
        self.shard_paths = expand_shards(shards)
        if not self.shard_paths:
            raise DataError(f"no shards in {shards!r}")
        self.shard_sizes, self.paragraph = shard_counts(self.shard_paths)
        self.video_loader = video_loader
        self.max_words = max_words
        self._tokenize = tokenizer
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle_buffer = int(shuffle_buffer)
        self.micro_batch = micro_batch
        self.num_workers = int(num_workers)
        self.epoch = 0
        self.skip_shards: frozenset[int] = frozenset()
        self.broken_samples = 0

    # the epoch's plan ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, skip_shards: Iterable[int] = ()) -> None:
        """Choose epoch ``epoch``; ``skip_shards`` (a resumed epoch's ``ShardProgress.done``) are left out."""
        skip = frozenset(int(s) for s in skip_shards)
        bad = [s for s in skip if not 0 <= s < len(self.shard_paths)]
        if bad:
            raise ValueError(f"skip_shards holds shard index {bad[0]}, outside 0..{len(self.shard_paths) - 1}")
        self.epoch, self.skip_shards = int(epoch), skip

    def assignment(self) -> list[list[list[int]]]:
        """``[rank][worker]`` -> the shard indices that worker reads this epoch, in reading order."""
        order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(len(self.shard_paths)).tolist()
        workers = max(1, self.num_workers)
        plan = []
        for rank in range(self.world_size):
            mine = order[rank::self.world_size]
            plan.append([[s for s in mine[w::workers] if s not in self.skip_shards] for w in range(workers)])
        return plan

    def _batches(self, micro_batch: int) -> tuple[int, list[list[int]]]:
        """(steps, [rank][worker] -> batches that worker yields)."""
        full = [[sum(self.shard_sizes[s] for s in shards) // micro_batch for shards in workers]
                for workers in self.assignment()]
        steps = min(sum(per_worker) for per_worker in full)
        return steps, [split_batches(per_worker, steps) for per_worker in full]

    def steps_per_epoch(self, micro_batch: int | None = None) -> int:
        """Batches of ``micro_batch`` (default: the constructor's) every rank yields in the epoch set by
        :meth:`set_epoch` (shards skipped there are not counted). Raises DataError when it is 0."""
        micro_batch = micro_batch or self.micro_batch
        if not micro_batch:
            raise ValueError("steps_per_epoch needs a micro_batch")
        steps = self._batches(micro_batch)[0]
        if steps == 0 and not self.skip_shards:  # (a resumed epoch may have nothing left)
            raise DataError(f"{len(self.shard_paths)} shards of {sum(self.shard_sizes)} samples leave some rank of "
                            f"{self.world_size} ({max(1, self.num_workers)} workers each) without a whole batch of "
                            f"{micro_batch}; write smaller shards or use fewer ranks or workers")
        return steps

    def progress(self) -> "ShardProgress":
        return ShardProgress(self.shard_sizes, epoch=self.epoch)

    # items -----------------------------------------------------------------------------------------
    def tokenize(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokenize is None:
            self._tokenize = tokenize
        ids, mask = self._tokenize([caption], max_words=self.max_words)
        return ids[0], mask[0]

    def _item(self, sample: _Sample) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, 2, _key_seed(sample.key)])
        captions = sample.meta["captions"]
        caption = " ".join(captions) if self.paragraph else captions[int(rng.integers(len(captions)))]
        name = f"{os.path.basename(self.shard_paths[sample.shard])}/{sample.key}.{sample.field}"
        video, video_mask = self.video_loader(VideoBytes(sample.video, name), start=sample.meta.get("start"),
                                              end=sample.meta.get("end"), rng=rng)
        text_ids, text_mask = self.tokenize(caption)
        fields = getattr(self.video_loader, "batch_fields", dict)()  # uint8 frames: normalised on the device
        return {"text_ids": text_ids, "text_mask": text_mask, "video": video, "video_mask": video_mask,
                "sample_key": sample.key, "shard_index": sample.shard, **fields}

    def _note_broken(self, shard: int, key: str, reason: str, count: int = 1) -> None:
        self.broken_samples += count
        logger.warning("shard %s, sample %s: %s; skipped (%d broken samples so far in this process)",
                       self.shard_paths[shard], key, reason, self.broken_samples)

    def _parse(self, shard: int, raw: dict) -> _Sample:
        key = raw["__key__"]
        fields = sorted(k for k in raw if not k.startswith("__") and k != META_FIELD)
        try:
            if len(fields) != 1:
                raise ValueError(f"expected one video file beside {key}.{META_FIELD}, found {fields or 'none'}")
            if META_FIELD not in raw:
                raise ValueError(f"no {key}.{META_FIELD}")
            meta = json.loads(raw[META_FIELD])
            check_meta(meta)
        except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._note_broken(shard, key, f"bad sample: {error}")
            return _Sample(shard, key, error=str(error))
        return _Sample(shard, key, meta, raw[fields[0]], fields[0])

    def _read_shard(self, shard: int) -> Iterator[_Sample]:
        """The samples of one shard, exactly as many as shards.json lists: a shard that ends early (or
        cannot be opened) yields the missing ones as broken samples."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        path, size, read, damage = self.shard_paths[shard], self.shard_sizes[shard], 0, []

        def stop(error: Exception) -> bool:  # webdataset's error handler: note the damage, stop the shard
            damage.append(error)  # (the sample grouped so far is still yielded, whole or not)
            return False

        try:
            with open(path, "rb") as stream:
                for raw in group_by_keys(tar_file_expander([{"url": path, "stream": stream}], handler=stop),
                                         handler=stop):
                    if read == size:
                        logger.warning("shard %s holds more samples than the %d %s lists; the rest are ignored",
                                       path, size, INDEX_FILE)
                        break
                    read += 1
                    yield self._parse(shard, raw)
        except OSError as error:
            damage.append(error)
        if read < size:  # what was read stays, the rest counts as broken
            # webdataset appends the stream and url to a message: keep the message only
            reason = (f"the shard is damaged ({type(damage[0]).__name__}: {str(damage[0].args[0]).split(' @ ')[0]})"
                      if damage and damage[0].args else f"the shard ends after {read} samples")
            self._note_broken(shard, f"#{read + 1}..#{size}", reason, size - read)
        for _ in range(size - read):
            yield _Sample(shard, "?", error="missing from the shard")

    def _items(self, shards: list[int], rng: np.random.Generator, budget: int | None) -> Iterator[dict]:
        """Decoded items of ``shards`` through the shuffle buffer, at most ``budget`` (exactly, when the
        shards hold any readable sample)."""
        source = (sample for shard in shards for sample in self._read_shard(shard))
        buffer: list[_Sample] = []
        last_good: dict[int, _Sample] = {}  # per open shard: a readable sample to give a broken slot to
        owed: Counter = Counter()  # per shard: broken slots waiting for a readable sample of it
        delivered: Counter = Counter()
        yielded, latest = 0, None
        while budget is None or yielded < budget:
            buffer.extend(islice(source, max(0, self.shuffle_buffer - len(buffer))))  # refills may overfill it
            if not buffer:
                break
            pick = int(rng.integers(len(buffer)))
            buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
            sample = buffer.pop()
            if sample.error is None:
                try:
                    item = self._item(sample)
                except VideoDecodeError as error:
                    self._note_broken(sample.shard, sample.key, f"cannot decode the video ({error.reason})")
                    if last_good.get(sample.shard) is sample:
                        del last_good[sample.shard]
                    sample.error = error.reason
            if sample.error is not None:  # its slot goes to another sample of the shard
                if sample.shard in last_good:
                    buffer.append(last_good[sample.shard])
                else:
                    owed[sample.shard] += 1
                continue
            yield item
            yielded, latest = yielded + 1, sample
            delivered[sample.shard] += 1
            if delivered[sample.shard] >= self.shard_sizes[sample.shard]:
                last_good.pop(sample.shard, None)
            else:
                last_good[sample.shard] = sample
                buffer.extend([sample] * owed.pop(sample.shard, 0))
        for shard, count in owed.items():
            logger.warning("shard %s: %d slots of broken samples stay empty: no sample of the shard is readable",
                           self.shard_paths[shard], count)
        if budget is not None and yielded < budget:
            if latest is None:
                raise DataError(f"rank {self.rank}: no sample of its {len(shards)} shards can be read (e.g. "
                                f"{self.shard_paths[shards[0]]})")
            logger.warning("rank %d: %d items short of this worker's %d (unreadable shards); repeating sample %s",
                           self.rank, budget - yielded, budget, latest.key)
            for _ in range(budget - yielded):
                yield self._item(latest)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != max(1, self.num_workers):
            raise DataError(f"ShardDataset was built for num_workers={self.num_workers} but runs in {workers} "
                            "DataLoader worker(s); give both the same number")
        shards = self.assignment()[self.rank][worker]
        budget = None
        if self.micro_batch:
            budget = self._batches(self.micro_batch)[1][self.rank][worker] * self.micro_batch
        rng = np.random.default_rng([self.seed, self.epoch, 1, self.rank, worker])
        return self._items(shards, rng, budget)


class ShardProgress:
    """Consumed samples per shard in one epoch, fed with every consumed batch's ``shard_index``; a shard
    is :attr:`done` once all its listed samples were consumed. Each rank sees only its own batches:
    merge every rank's :meth:`state_dict` with :meth:`merged` before saving a checkpoint."""

    def __init__(self, shard_sizes: Sequence[int], epoch: int = 0):
        self.sizes = [int(n) for n in shard_sizes]
        self.start_epoch(epoch)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.consumed = [0] * len(self.sizes)

    def update(self, shard_index) -> None:
        """Count a consumed batch (a tensor or list of shard indices, or one index)."""
        for shard in torch.as_tensor(shard_index).reshape(-1).tolist():
            self.consumed[shard] += 1

    @property
    def done(self) -> set[int]:
        return {i for i, (used, size) in enumerate(zip(self.consumed, self.sizes)) if used >= size}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "sizes": list(self.sizes), "consumed": list(self.consumed)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint's progress. Shards not done restart at 0, because the resumed epoch
        (``set_epoch(epoch, skip_shards=done)``) reads them again from their first sample."""
        if list(state["sizes"]) != self.sizes:
            raise ValueError(f"the checkpoint's shard progress is for another shard set ({len(state['sizes'])} shards, "
                             f"{sum(state['sizes'])} samples; now {len(self.sizes)}, {sum(self.sizes)}); "
                             "resume with the same shards")
        self.epoch = int(state["epoch"])
        self.consumed = [used if used >= size else 0 for used, size in zip(state["consumed"], self.sizes)]

    @classmethod
    def merged(cls, states: Iterable[dict]) -> "ShardProgress":
        """One progress from every rank's ``state_dict()`` (e.g. gathered with all_gather_object)."""
        states = list(states)
        if len({s["epoch"] for s in states}) != 1:
            raise ValueError("the ranks' shard progress is from different epochs")
        merged = cls(states[0]["sizes"], epoch=states[0]["epoch"])
        merged.consumed = [sum(column) for column in zip(*(s["consumed"] for s in states))]
        return merged
