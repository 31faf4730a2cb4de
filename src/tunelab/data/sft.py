"""Supervised fine-tuning data: records -> prompt style -> token ids -> padded batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from tunelab.data.distributed import data_position, make_loader, resume_point
from tunelab.data.prompts import PromptStyle, get_style
from tunelab.data.records import DataError, Record, load_records
from tunelab.data.splits import check_split_order, split_by_order
from tunelab.models.tokenizer import Tokenizer
from tunelab.utils.checks import check_data_sizes

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
EMBEDDED_DIR = Path(__file__).parent / "embedded"


def embedded_path(name: str) -> Path:
    return EMBEDDED_DIR / name


@dataclass
class Example:
    ids: list[int]  # prompt + answer (without the final end-of-text token the collate adds)
    prompt_len: int
    record: Record
    # Set when `ids` was cut at max_length: the token that followed the cut. The last input then
    # targets it (as the book's collate does), never end-of-text, so the model does not learn to
    # stop mid-answer.
    next_id: int | None = None
    # Per token of `ids` (and of `next_id`): trained with mask_prompt. Set for multi-turn
    # examples of prompt style `model` (every assistant turn trained); None: from prompt_len on.
    mask: list[bool] | None = None


def apply_turn_mask(targets: torch.Tensor, ex: Example, ignore_index: int) -> None:
    """Mask, in one example's targets (`targets[j]` predicts token j + 1), every token that
    `ex.mask` does not train; the end-of-text target the collate appends stays trained."""
    n = len(ex.ids)
    flags = list(ex.mask[1 : n + 1])
    flags += [True] * (n - len(flags))
    targets[:n][~torch.tensor(flags, dtype=torch.bool)] = ignore_index


def example_items(
    batch: list[Example] | list[list[int]],
) -> list[tuple[list[int], int, int | None]]:
    """(ids, prompt_len, next_id) per example; a plain id list is a whole, untruncated example."""
    return [
        (b.ids, b.prompt_len, b.next_id) if isinstance(b, Example) else (list(b), 0, None)
        for b in batch
    ]


def encode_example(
    record: Record, style: PromptStyle, tokenizer: Tokenizer, mask_response_header: bool = True
) -> Example:
    """Token ids of prompt + answer. `prompt_len` (what `mask_prompt` hides) covers the whole
    prompt, or, with `mask_response_header=False`, the prompt without its response header (the
    book's exercise 7.2 masks `format_input` only, so it trains on `### Response:`)."""
    if getattr(style, "trains_every_turn", False):  # prompt style `model`: multi-turn masks
        if not mask_response_header:
            raise ValueError("data.mask_response_header=false needs a fixed prompt style")
        ids, trained = style.encode_sft(record, tokenizer)
        if ids and ids[-1] == tokenizer.eos_id:
            ids, trained = ids[:-1], trained[:-1]  # the collate appends end-of-text itself
        first = trained.index(True) if True in trained else len(ids)
        return Example(ids, first, record, mask=trained)
    prompt_ids = style.encode_prompt(record, tokenizer)  # record text never becomes specials
    answer_ids = style.encode_answer(record.output, tokenizer)
    if answer_ids and answer_ids[-1] == tokenizer.eos_id:
        answer_ids = answer_ids[:-1]  # the collate appends end-of-text itself
    masked = len(prompt_ids)
    if not mask_response_header:
        masked = len(style.encode_instruction(record, tokenizer))
    return Example(prompt_ids + answer_ids, masked, record)


class SFTDataset(Dataset):
    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def truncate_examples(examples: list[Example], max_length: int | None, split: str) -> list[Example]:
    """Cut sequences to `max_length` input tokens (keeping the start), and count what happened.

    A cut example keeps the token after the cut as its last target (`Example.next_id`), so it
    never learns end-of-text there. An example whose prompt alone is longer than `max_length`
    would have no answer token left to learn: it is dropped, and counted.
    """
    if not max_length:
        return examples
    cut = dropped = 0
    out = []
    for ex in examples:
        if len(ex.ids) > max_length:
            if ex.prompt_len > max_length:
                dropped += 1
                continue
            cut += 1
            ex = Example(ex.ids[:max_length], ex.prompt_len, ex.record, ex.ids[max_length], ex.mask)
        out.append(ex)
    if cut:
        log.warning(
            "%s: truncated %d of %d examples to max_length=%d tokens",
            split,
            cut,
            len(examples),
            max_length,
        )
    if dropped:
        log.warning(
            "%s: dropped %d of %d examples whose prompt is longer than max_length=%d tokens "
            "(no answer token left to train on)",
            split,
            dropped,
            len(examples),
            max_length,
        )
    return out


def collate_sft(
    batch: list[Example] | list[list[int]],
    pad_id: int,
    mask_prompt: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Pad to the batch's longest sequence; targets are inputs shifted by one.

    Each sequence gets one end-of-text token (= pad id) appended, which stays in the targets so
    the model learns to stop; the padding after it is replaced by `ignore_index` (the seed's
    rule, applied by position so a genuine end-of-text inside a text is never masked). A
    sequence cut at max_length targets the real token after the cut instead (`Example.next_id`).
    """
    items = example_items(batch)
    width = max(len(ids) for ids, _, _ in items)
    inputs = torch.full((len(items), width), pad_id, dtype=torch.long)
    targets = torch.full((len(items), width), ignore_index, dtype=torch.long)
    for row, (ids, prompt_len, next_id) in enumerate(items):
        n = len(ids)
        seq = torch.tensor(ids + [pad_id if next_id is None else next_id], dtype=torch.long)
        inputs[row, :n] = seq[:-1]
        targets[row, :n] = seq[1:]
        if mask_prompt and prompt_len > 1:
            targets[row, : prompt_len - 1] = ignore_index
        if mask_prompt and isinstance(batch[row], Example) and batch[row].mask is not None:
            apply_turn_mask(targets[row], batch[row], ignore_index)
    return {"input_ids": inputs, "targets": targets}


class SFTDataModule(L.LightningDataModule):
    """Instruction data for SFT. `connect()` gives it the tokenizer and prompt style of the model.

    Either one file split by seed (`path` + `split`), or explicit `train_path`/`val_path`/
    `test_path`. `path: null` uses the embedded instruction data shipped with tunelab.
    """

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        split: tuple[float, float, float] = (0.85, 0.05, 0.10),
        batch_size: int = 8,
        max_length: int | None = 512,
        mask_prompt: bool = False,
        limit: int | None = None,
        seed: int = 123,
        num_workers: int = 0,
        packing: bool = False,
        shuffle: bool = True,
        split_order: str = "shuffled",
        mask_response_header: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        check_data_sizes(batch_size, max_length, limit, num_workers)
        check_split_order(split_order)
        # The book's settings: split_order=file, mask_response_header=false (exercise 7.2),
        # drop_last=true (its train loader); see README "Coming from the book".
        self.split_order = split_order
        self.mask_response_header = mask_response_header
        self.drop_last = drop_last
        self.path, self.train_path, self.val_path, self.test_path = (
            path,
            train_path,
            val_path,
            test_path,
        )
        self.split = tuple(split)
        self.batch_size = batch_size
        self.max_length = max_length
        self.mask_prompt = mask_prompt
        self.limit = limit
        self.seed = seed
        self.num_workers = num_workers
        self.shuffle = shuffle
        self._resume_state: dict[str, int] | None = None
        # Pack each batch's examples into rows of <= max_length tokens (tunelab.data.packing).
        self.packing = packing
        self.tokenizer: Tokenizer | None = None
        self.style: PromptStyle | None = None
        self.records: dict[str, list[Record]] = {}
        self.datasets: dict[str, SFTDataset] = {}

    def connect(
        self, tokenizer: Tokenizer, prompt_style: str | PromptStyle, max_length: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.style = get_style(prompt_style, tokenizer)
        if max_length is not None:
            self.max_length = min(self.max_length or max_length, max_length)

    def load_splits(self) -> dict[str, list[Record]]:
        if self.records:
            return self.records
        if self.train_path:
            if self.path:
                raise DataError(
                    "data: give either `path` (split by seed) or `train_path`, not both"
                )
            self.records = {"train": load_records(self.train_path)}
            for name, p in (("val", self.val_path), ("test", self.test_path)):
                self.records[name] = load_records(p) if p else []
        else:
            path = self.path or embedded_path("instructions.json")
            records = load_records(path)
            if self.limit:
                records = records[: self.limit]
            train, val, test = split_by_order(records, self.split, self.seed, self.split_order)
            self.records = {"train": train, "val": val, "test": test}
        if not self.records["train"]:
            raise DataError("data: the training split is empty")
        log.info("data: %s", ", ".join(f"{k}={len(v)}" for k, v in self.records.items()))
        return self.records

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None or self.style is None:
            raise RuntimeError(
                "SFTDataModule.connect(tokenizer, prompt_style) must be called first"
            )
        if self.datasets:
            return
        for split, records in self.load_splits().items():
            examples = [
                encode_example(r, self.style, self.tokenizer, self.mask_response_header)
                for r in records
            ]
            self.datasets[split] = SFTDataset(truncate_examples(examples, self.max_length, split))
        if not self.datasets["train"].examples:
            raise DataError(
                f"data.max_length={self.max_length}: every training example's prompt is longer; "
                "no answer token is left to train on (raise data.max_length)"
            )

    def _collate(self):
        if self.packing:
            from tunelab.data.packing import collate_packed

            width = self.max_length or max(
                len(e.ids) for d in self.datasets.values() for e in d.examples
            )
            return partial(
                collate_packed,
                pad_id=self.tokenizer.pad_id,
                max_length=width,
                mask_prompt=self.mask_prompt,
                spans=True,  # varlen spans computed here, on the host
            )
        return partial(collate_sft, pad_id=self.tokenizer.pad_id, mask_prompt=self.mask_prompt)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # Same global batches on 1 or N processes (see tunelab.data.distributed).
        resume = resume_point(self._resume_state) if split == "train" else None
        if split == "train":
            self._resume_state = None
        return make_loader(
            self.datasets[split],
            self.batch_size,
            shuffle,
            self.seed,
            self._collate(),
            self.trainer,
            self.num_workers,
            resume,
            drop_last=self.drop_last and split == "train",
        )

    def state_dict(self) -> dict[str, int]:
        """The data position, so a resumed run continues with the same next batch."""
        return data_position(self.trainer)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_state = dict(state_dict)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if self.datasets["val"].examples else "train", shuffle=False)

    def test_records(self) -> list[Record]:
        return self.load_splits()["test"]
