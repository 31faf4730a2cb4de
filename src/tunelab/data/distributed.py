"""Batches that mean the same thing on 1 process and on N: the global batch is the unit.

Lightning's automatic DistributedSampler always reshuffles training data per rank, so a 2-process
run sees different batches than a 1-process run with the same global batch. Here a seeded
permutation of the whole dataset is cut into global batches of `batch_size x world_size` and each
rank takes its own contiguous slice of every global batch. `trainer/ddp.yaml` therefore turns
Lightning's sampler off (`use_distributed_sampler: false`) and tunelab's data modules use this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        # (epoch, batches) to skip once: resuming mid-epoch continues with the next unseen batch.
        self.resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            skip = self.resume_at[1]
        self.resume_at = None
        for i, batch in enumerate(self._batches()):
            if i >= skip:
                yield batch

    def _batches(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        self.epoch += 1  # a fresh order every epoch even if nobody calls set_epoch
        global_bs = self.batch_size * self.world_size
        for start in range(0, self.n, global_bs):
            chunk = order[start : start + global_bs]
            if len(chunk) < global_bs and (self.drop_last or self.world_size > 1):
                # A ragged last global batch would give ranks different step counts (deadlock).
                if self.drop_last or len(chunk) < self.world_size:
                    return
                per = len(chunk) // self.world_size
                chunk = chunk[: per * self.world_size]
                yield chunk[self.rank * per : (self.rank + 1) * per]
                return
            yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        global_bs = self.batch_size * self.world_size
        full, rest = divmod(self.n, global_bs)
        return full + (1 if rest and not self.drop_last and rest >= self.world_size else 0)


def data_position(trainer) -> dict[str, int]:
    """Where training is in its data: saved in checkpoints by the data modules.

    Counted from optimizer steps (not Lightning's batch progress, which is one behind inside
    `on_train_batch_end`, where periodic checkpoints are written).
    """
    if trainer is None or not trainer.num_training_batches:
        return {}
    per_epoch = trainer.num_training_batches
    epoch = int(trainer.current_epoch)
    done = int(max(0, trainer.global_step * trainer.accumulate_grad_batches - epoch * per_epoch))
    if done >= per_epoch:  # saved after an epoch's last batch, before Lightning counted the epoch
        epoch, done = epoch + done // per_epoch, done % per_epoch
    return {"epoch": epoch, "batches_done": done}


def resume_point(state: dict[str, int] | None) -> tuple[int, int] | None:
    if not state or "epoch" not in state:
        return None
    return int(state["epoch"]), int(state["batches_done"])


def rank_and_world(trainer) -> tuple[int, int]:
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    collate_fn: Callable,
    trainer=None,
    num_workers: int = 0,
    resume_at: tuple[int, int] | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose global batches are identical for any number of processes.

    drop_last: leave out a last global batch smaller than the others (the book's train loaders).
    """
    rank, world = rank_and_world(trainer)
    sampler = GlobalBatchSampler(len(dataset), batch_size, shuffle, seed, rank, world, drop_last)
    sampler.resume_at = resume_at
    if resume_at is not None:
        # Lightning calls `set_epoch` only on samplers, not on a batch sampler like this one, so
        # its epoch counts itself from 0: a resumed process must start it at the saved epoch, or
        # every later epoch would be shuffled as the first ones were.
        sampler.epoch = resume_at[0]
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers
    )
