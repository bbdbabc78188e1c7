"""What the training loop iterates: micro-batches of one epoch, for a map-style dataset (every
registered benchmark) or a stream of WebDataset shards, behind one small interface:

* ``steps_per_epoch`` (optimiser steps of an epoch) and ``total_steps(epochs)`` (for the schedule);
* ``epoch(epoch, start_step) -> (micro-batch iterator, last step)``: the loop runs steps
  ``start_step .. last step - 1``, taking ``accumulation`` micro-batches per step;
* ``consumed(batch)`` after each micro-batch, and ``state_dict(env)`` / ``load_state_dict`` for what a
  checkpoint must carry to resume the epoch (nothing for map-style data, whose order is a function of
  (seed, epoch); the completed shards for a stream).
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from dataloaders import build_dataset, verify_split
from dataloaders.base import DecodeFailureBudget
from dataloaders.shards import ShardDataset, ShardProgress
from dataloaders.video import VideoClipLoader
from engine.distributed import DistEnv, all_reduce_flag, broadcast_object
from engine.perf import loader_options

log = logging.getLogger("univtr")




class EpochSampler(Sampler):
    """This rank's indices for one epoch, deterministic from (seed, epoch).

    Global batch s takes permutation entries [s*B, (s+1)*B); micro-step a of it takes the a-th of
    ``accumulation`` equal chunks, and rank r the r-th slice of that chunk, so gathering the ranks'
    features in rank order gives the same rows, in the same order, as one process would have.
    Incomplete final batches are dropped. ``start_step`` skips the batches already done (resume).
    """

    def __init__(self, size: int, global_batch: int, env: DistEnv, accumulation: int, seed: int):
        self.size, self.global_batch, self.env, self.accumulation, self.seed = size, global_batch, env, accumulation, seed
        self.micro = global_batch // (env.world_size * accumulation)
        self.steps = size // global_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        out = []
        for step in range(self.start_step, self.steps):
            batch = perm[step * self.global_batch:(step + 1) * self.global_batch]
            for a in range(self.accumulation):
                chunk = batch[a * self.micro * self.env.world_size:(a + 1) * self.micro * self.env.world_size]
                out += chunk[self.env.rank * self.micro:(self.env.rank + 1) * self.micro]
        return out

    def __iter__(self):
        return iter(self._order())

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accumulation * self.micro




class EpochKeys(Sampler):
    """``sampler``'s indices as (epoch, index) keys, for :class:`EpochItems`."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochItems(Dataset):
    """``dataset`` read by (epoch, index) keys. Persistent DataLoader workers keep the copy of the
    dataset they started with, so ``set_epoch`` in the main process would not reach them (every epoch
    would draw epoch 0's captions and augmentation); the epoch travels with each index instead."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class MapTrainData:
    """A map-style dataset in the order of :class:`EpochSampler`: a resumed run replays exactly."""

    def __init__(self, dataset, args, env: DistEnv):
        if len(dataset) < args.batch_size:
            raise ValueError(f"--batch_size {args.batch_size} exceeds the {len(dataset)} training items")
        self.dataset = dataset
        self.sampler = EpochSampler(len(dataset), args.batch_size, env, args.gradient_accumulation_steps, args.seed)
        self.loader = DataLoader(EpochItems(dataset), batch_size=self.sampler.micro, sampler=EpochKeys(self.sampler),
                                 num_workers=args.num_thread_reader, drop_last=False,
                                 **loader_options(args, env, args.num_thread_reader))
        self.steps_per_epoch = self.sampler.steps
        self.failures = DecodeFailureBudget(dataset, args.features_path)
        self._new_failures: set[int] = set()

    def total_steps(self, epochs: int) -> int:
        return self.steps_per_epoch * epochs

    def epoch(self, epoch: int, start_step: int):
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_step)
        return iter(self.loader), self.steps_per_epoch

    def consumed(self, batch) -> None:
        before = set(self.failures.failed)
        self.failures.add(batch.get("decode_failures", ()))
        self._new_failures |= self.failures.failed - before

    def end_step(self, env: DistEnv) -> None:
        """After each optimiser step: share newly failed videos between ranks (only when some rank has
        any: one flag all-reduce otherwise) and stop, on every rank at once, past the limit."""
        if not all_reduce_flag(bool(self._new_failures), env):
            return
        reports = [sorted(self._new_failures)]
        if env.distributed:
            reports = [None] * env.world_size
            dist.all_gather_object(reports, sorted(self._new_failures))
        self.failures.add(i for report in reports for i in report)
        self._new_failures.clear()
        self.failures.check()

    def state_dict(self, env: DistEnv) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ShardTrainData:
    """A stream of WebDataset shards (``dataloaders.shards``). Every rank takes the same number of
    steps; a resumed epoch skips the shards completed before the checkpoint and re-reads the others
    from their start (shard granularity: see ``dataloaders/shards.py``)."""

    def __init__(self, dataset, args, env: DistEnv):
        from torch.utils.data import DataLoader

        self.dataset, self.accumulation = dataset, args.gradient_accumulation_steps
        # Not persistent: a worker's copy of the stream must see each epoch's set_epoch (shard order, skips).
        self.loader = DataLoader(dataset, batch_size=dataset.micro_batch, num_workers=dataset.num_workers,
                                 **loader_options(args, env, dataset.num_workers, persistent=False))
        self.progress = dataset.progress()
        dataset.set_epoch(0)
        self.steps_per_epoch = dataset.steps_per_epoch() // self.accumulation
        if self.steps_per_epoch == 0:
            raise ValueError(f"the shards give fewer micro-batches per rank than --gradient_accumulation_steps "
                             f"{self.accumulation}")

    def total_steps(self, epochs: int) -> int:
        total = 0
        for epoch in range(epochs):  # counts from shards.json: nothing is read
            self.dataset.set_epoch(epoch)
            total += self.dataset.steps_per_epoch() // self.accumulation
        return total

    def epoch(self, epoch: int, start_step: int):
        if start_step == 0 or epoch != self.progress.epoch:
            self.progress.start_epoch(epoch)
        self.dataset.set_epoch(epoch, skip_shards=self.progress.done)
        remaining = self.dataset.steps_per_epoch() // self.accumulation if start_step == 0 or \
            len(self.progress.done) < len(self.dataset.shard_paths) else 0
        if start_step:
            log.info("resumed epoch %d: %d shards already done are skipped, the others are read again (%d steps)",
                     epoch + 1, len(self.progress.done), remaining)
        return iter(self.loader), start_step + remaining

    def consumed(self, batch) -> None:
        self.progress.update(batch["shard_index"])

    def end_step(self, env: DistEnv) -> None:
        pass  # a broken sample inside a shard is logged and replaced by the reader (dataloaders/shards.py)

    def state_dict(self, env: DistEnv) -> dict:
        """Every rank's progress merged (a collective: call it on every rank)."""
        states = [self.progress.state_dict()]
        if env.distributed:
            states = [None] * env.world_size
            dist.all_gather_object(states, self.progress.state_dict())
        return {"shards": ShardProgress.merged(states).state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "shards" in state:
            self.progress.load_state_dict(state["shards"])


def build_split(args, split: str, env: DistEnv, tokenizer=None):
    """``build_dataset`` with ``--verify_videos`` run by rank 0 alone (on all its cores) and its result
    shared with the other ranks, instead of every rank probing every video."""
    unreadable = None
    if getattr(args, "verify_videos", False):
        unreadable = broadcast_object(verify_split(args, split) if env.is_main else None, env)
    return build_dataset(args, split, tokenizer=tokenizer, unreadable=unreadable)


def build_train_data(args, env: DistEnv, tokenizer=None):
    """The training data of a run: WebDataset shards for ``--datatype webdataset``, else the
    registered benchmark's training split."""
    per_step = env.world_size * args.gradient_accumulation_steps
    if args.batch_size % per_step:
        raise ValueError(f"--batch_size {args.batch_size} must divide by world size x accumulation = {per_step}")
    if args.datatype == "webdataset":
        if not getattr(args, "train_shards", None):
            raise ValueError("--datatype webdataset needs --train_shards \"DIR/{000000..000099}.tar\" "
                             "(written by preprocess/make_shards.py)")
        dataset = ShardDataset(args.train_shards, VideoClipLoader.from_args(args, train=True, device_side=True), max_words=args.max_words,
                               tokenizer=tokenizer, seed=args.seed, rank=env.rank, world_size=env.world_size,
                               shuffle_buffer=args.shuffle_buffer, micro_batch=args.batch_size // per_step,
                               num_workers=args.num_thread_reader)
        log.info("webdataset train: %d shards, %d samples (%s)", len(dataset.shard_paths), sum(dataset.shard_sizes),
                 args.train_shards)
        return ShardTrainData(dataset, args, env)
    dataset = build_split(args, "train", env, tokenizer)
    log.info(dataset.describe())
    return MapTrainData(dataset, args, env)
