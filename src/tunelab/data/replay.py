"""Replay mixing for continued pretraining: new-domain blocks plus a fraction r of old-domain blocks.

Compute-equivalent, as in Ibrahim et al. 2024 (arXiv 2403.08763): the token budget is fixed
(batches x batch_size x block_len targets, whatever r is) and a fraction r of those blocks are
replayed old data, so replay displaces new data instead of adding compute.

Mixing is exact and deterministic per batch: the number of old blocks in batch k is chosen so the
cumulative count after k batches is round(r * B * k) (error diffusion), and their positions in
the batch are a seeded shuffle. Each domain is read from its own seeded stream over its block pool
(a fresh permutation each pass), so batch k depends only on (seed, k): resumable, order-free.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tunelab.data.records import DataError
from tunelab.data.text import TextCorpus, build_corpus, end_of_text_id
from tunelab.models.tokenizer import Tokenizer

log = logging.getLogger(__name__)

NEW, OLD = 0, 1  # the `domain` id carried by every block of every batch
DOMAIN_NAMES = {NEW: "new", OLD: "old"}


def check_ratio(ratio: float, where: str = "data.replay_ratio") -> Fraction:
    """The replay ratio as an exact fraction; outside [0, 1] is a config error."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number in [0, 1], got {ratio!r}") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{where} must be in [0, 1], got {ratio}")
    return Fraction(value).limit_denominator(1_000_000)


def cumulative_old(ratio: float | Fraction, batch_size: int, k: int) -> int:
    """Old blocks in the first k batches: round(r * B * k), halves rounded up, exact arithmetic."""
    r = ratio if isinstance(ratio, Fraction) else check_ratio(ratio)
    return math.floor(r * batch_size * k + Fraction(1, 2))


def old_per_batch(ratio: float, batch_size: int, num_batches: int) -> list[int]:
    """Number of old blocks in each batch (error diffusion; every value is 0..batch_size)."""
    r = check_ratio(ratio)
    cum = [cumulative_old(r, batch_size, k) for k in range(num_batches + 1)]
    return [cum[k + 1] - cum[k] for k in range(num_batches)]


class BlockStream:
    """An endless seeded stream over a block pool: pass p is permutation p of the pool."""

    def __init__(self, num_blocks: int, seed: Sequence[int]) -> None:
        self.num_blocks = num_blocks
        self.seed = list(seed)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, p: int) -> np.ndarray:
        if p not in self._perms:
            self._perms[p] = np.random.default_rng([*self.seed, p]).permutation(self.num_blocks)
        return self._perms[p]

    def take(self, start: int, count: int) -> list[int]:
        """Pool indices of stream positions start .. start + count - 1."""
        if count and not self.num_blocks:
            raise DataError("replay: a block pool is empty but the mix needs blocks from it")
        return [
            int(self._perm(j // self.num_blocks)[j % self.num_blocks])
            for j in range(start, start + count)
        ]


class ReplayBatches(Dataset):
    """Map-style dataset of whole batches: item k is batch k of the mixed stream.

    Each item is {"input_ids": (B, T), "targets": (B, T), "domain": (B,)} with domain 1 = old.
    """

    def __init__(
        self,
        new_blocks: torch.Tensor,
        old_blocks: torch.Tensor | None,
        ratio: float,
        batch_size: int,
        num_batches: int,
        seed: int,
    ) -> None:
        if batch_size < 1 or num_batches < 1:
            raise ValueError(
                f"replay: batch_size and num_batches must be >= 1, got {batch_size}, {num_batches}"
            )
        self.ratio = check_ratio(ratio)
        self.new_blocks = new_blocks
        self.old_blocks = old_blocks if old_blocks is not None else new_blocks[:0]
        if self.ratio > 0 and len(self.old_blocks) == 0:
            raise DataError("replay: replay_ratio > 0 needs at least one old-domain corpus")
        if self.ratio < 1 and len(self.new_blocks) == 0:
            raise DataError("replay: the new-domain corpus has no training block")
        self.batch_size, self.num_batches, self.seed = batch_size, num_batches, seed
        self.cum_old = [cumulative_old(self.ratio, batch_size, k) for k in range(num_batches + 1)]
        self.new_stream = BlockStream(len(self.new_blocks), [seed, NEW])
        self.old_stream = BlockStream(len(self.old_blocks), [seed, OLD])

    def __len__(self) -> int:
        return self.num_batches

    def composition(self, k: int) -> tuple[list[int], list[int], np.ndarray]:
        """(new pool indices, old pool indices, row order) of batch k."""
        if not 0 <= k < self.num_batches:
            raise IndexError(k)
        n_old = self.cum_old[k + 1] - self.cum_old[k]
        new_start = k * self.batch_size - self.cum_old[k]
        new_idx = self.new_stream.take(new_start, self.batch_size - n_old)
        old_idx = self.old_stream.take(self.cum_old[k], n_old)
        order = np.random.default_rng([self.seed, 2, k]).permutation(self.batch_size)
        return new_idx, old_idx, order

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        new_idx, old_idx, order = self.composition(k)
        rows = torch.cat([self.new_blocks[new_idx], self.old_blocks[old_idx]])
        domain = torch.tensor([NEW] * len(new_idx) + [OLD] * len(old_idx), dtype=torch.long)
        order_t = torch.from_numpy(order)
        rows, domain = rows[order_t], domain[order_t]
        return {"input_ids": rows[:, :-1], "targets": rows[:, 1:], "domain": domain}

    @property
    def realised_ratio(self) -> float:
        return self.cum_old[-1] / (self.num_batches * self.batch_size)


class BlockDataset(Dataset):
    """Validation blocks of one domain, one item per block (batched by the default collate)."""

    def __init__(self, blocks: torch.Tensor, domain: int) -> None:
        self.blocks, self.domain = blocks, domain

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self.blocks[i]
        return {"input_ids": b[:-1], "targets": b[1:], "domain": torch.tensor(self.domain)}


def _as_list(spec: str | Sequence[str] | None) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [spec]
    return [str(s) for s in spec]


class ReplayDataModule(L.LightningDataModule):
    """Continued-pretraining data: new-domain corpora, optional old-domain (replay) corpora.

    new / old: corpus specs (file, folder, glob, `embedded:<name>`), one or a list; several
        corpora of a domain are pooled, each holding out its own `val_blocks`.
    replay_ratio: fraction r in [0, 1] of training blocks drawn from the old domain.
    train_batches / train_tokens: the budget (at most one); default one pass over the new
        training pool. Either way the budget does not depend on r (compute-equivalent).
    val_blocks: held-out blocks per corpus (a count, or a fraction in (0, 1)).
    Validation dataloaders: [new] or [new, old]; every batch carries `domain` (0 new, 1 old).
    """

    def __init__(
        self,
        new: str | Sequence[str],
        old: str | Sequence[str] | None = None,
        replay_ratio: float = 0.0,
        block_len: int = 128,
        batch_size: int = 8,
        train_batches: int | None = None,
        train_tokens: int | None = None,
        val_blocks: int | float = 16,
        val_batch_size: int | None = None,
        text_key: str = "text",
        max_docs: int | None = None,
        seed: int = 123,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.ratio = check_ratio(replay_ratio)
        self.replay_ratio = float(replay_ratio)
        self.new_specs, self.old_specs = _as_list(new), _as_list(old)
        if not self.new_specs:
            raise ValueError("data.new: give at least one new-domain corpus (file, folder or glob)")
        if self.ratio > 0 and not self.old_specs:
            raise ValueError(
                f"data.replay_ratio={replay_ratio} needs old-domain corpora in data.old"
            )
        if train_batches is not None and train_tokens is not None:
            raise ValueError("data: give train_batches or train_tokens, not both")
        for key, value in (("block_len", block_len), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {value}")
        if not val_blocks or val_blocks < 0:
            raise ValueError(
                f"data.val_blocks must be > 0 (a count or a fraction), got {val_blocks}"
            )
        self.block_len, self.batch_size = int(block_len), int(batch_size)
        self.train_batches, self.train_tokens = train_batches, train_tokens
        self.val_blocks = val_blocks
        self.val_batch_size = val_batch_size or batch_size
        self.text_key, self.max_docs, self.seed = text_key, max_docs, seed
        self.num_workers = num_workers
        self.tokenizer: Tokenizer | None = None
        self.corpora: dict[str, list[TextCorpus]] = {}
        self.train_set: ReplayBatches | None = None
        self.val_sets: list[BlockDataset] = []

    def connect(
        self, tokenizer: Tokenizer, prompt_style: object = None, max_length: int | None = None
    ) -> None:
        """Take the model's tokenizer; blocks must fit its context (prompt style is unused)."""
        if max_length is not None and self.block_len > max_length:
            raise ValueError(
                f"data.block_len={self.block_len} exceeds the model's context length {max_length}"
            )
        self.tokenizer = tokenizer

    def _build(self, specs: list[str], domain: int) -> list[TextCorpus]:
        out = []
        for i, spec in enumerate(specs):
            out.append(
                build_corpus(
                    spec,
                    self.tokenizer,
                    self.block_len,
                    self.val_blocks,
                    seed=int(np.random.default_rng([self.seed, domain, i]).integers(2**31)),
                    text_key=self.text_key,
                    max_docs=self.max_docs,
                    separator_id=end_of_text_id(self.tokenizer),
                )
            )
        return out

    def plan_batches(self, n_new_train: int) -> int:
        if self.train_batches is not None:
            n = int(self.train_batches)
        elif self.train_tokens is not None:
            n = math.ceil(int(self.train_tokens) / (self.batch_size * self.block_len))
        else:
            n = math.ceil(n_new_train / self.batch_size)
        if n < 1:
            raise ValueError(f"data: the training budget gives {n} batches; expected >= 1")
        return n

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("ReplayDataModule.connect(tokenizer) must be called first")
        if self.train_set is not None:
            return
        self.corpora = {"new": self._build(self.new_specs, NEW)}
        if self.old_specs:
            self.corpora["old"] = self._build(self.old_specs, OLD)
        pools = {d: torch.cat([c.train for c in cs]) for d, cs in self.corpora.items()}
        vals = {d: torch.cat([c.val for c in cs]) for d, cs in self.corpora.items()}
        num_batches = self.plan_batches(len(pools["new"]))
        self.train_set = ReplayBatches(
            pools["new"], pools.get("old"), self.ratio, self.batch_size, num_batches, self.seed
        )
        self.val_sets = [BlockDataset(vals["new"], NEW)]
        if "old" in vals:
            self.val_sets.append(BlockDataset(vals["old"], OLD))
        n_old = self.train_set.cum_old[-1]
        total = num_batches * self.batch_size
        log.info(
            "replay: r=%s -> %d batches x %d blocks x %d tokens = %d training tokens; "
            "%d old blocks of %d (realised ratio %.6f); pools: new %d, old %d blocks; "
            "validation: new %d, old %d blocks",
            self.replay_ratio,
            num_batches,
            self.batch_size,
            self.block_len,
            total * self.block_len,
            n_old,
            total,
            self.train_set.realised_ratio,
            len(pools["new"]),
            len(pools.get("old", [])),
            len(vals["new"]),
            len(vals.get("old", [])),
        )
        passes = (total - n_old) / max(1, len(pools["new"]))
        if passes > 1:
            log.warning("replay: the budget repeats the new-domain pool %.2f times", passes)

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: each item already is a whole batch.
        return DataLoader(
            self.train_set, batch_size=None, shuffle=False, num_workers=self.num_workers
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(
                ds, batch_size=self.val_batch_size, shuffle=False, num_workers=self.num_workers
            )
            for ds in self.val_sets
        ]
