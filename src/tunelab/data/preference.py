"""Preference data for DPO: (prompt, chosen, rejected) records -> token ids -> concatenated batches.

Accepted record forms (JSON list or JSONL), validated at load time with the file, line and field:

- `prompt`, `chosen`, `rejected` (optional `system`): the prompt a string, or a list of
  role/content messages ending with a user turn; each answer a string, or a one-message list
  with an assistant turn (TRL's conversational form);
- the seed's form: `instruction`, `input` (optional `output`, ignored), `chosen`, `rejected`,
  plus anything `tunelab.data.records` accepts for a prompt (`system`, `history`).

Truncation, stated once: a prompt longer than `max_prompt_length` keeps its *end* (the question
sits there); then a completion that does not fit in `max_length` together with the prompt keeps
its *start* (and so loses its end-of-text token). Counts per split are logged and kept in
`PreferenceDataModule.truncation`.

Batches put the chosen sequences first and the rejected after them (2B rows), so one forward
computes both; prompt tokens and padding are -100 in the targets. With `packing`, the 2B
sequences are packed into as few rows as fit `max_length` tokens (block-diagonal attention via
`doc_ids`, positions restarting per sequence, `seq_ids` saying which sequence each target is in).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from tunelab.data.distributed import data_position, make_loader, resume_point
from tunelab.data.packing import assign_rows
from tunelab.data.prompts import PromptStyle, get_style
from tunelab.data.records import (
    _ROLE_ALIASES,
    DataError,
    Record,
    parse_record,
    read_json_records,
)
from tunelab.data.splits import check_split_order, split_by_order
from tunelab.models.tokenizer import Tokenizer
from tunelab.utils.checks import check_data_sizes

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
EMBEDDED_PREFERENCES = Path(__file__).parent / "embedded" / "preferences.json"


@dataclass
class PreferencePair:
    """One preference: the prompt as a `Record` (its `output` is the chosen answer), two answers."""

    record: Record
    chosen: str
    rejected: str


# -- reading and validating ----------------------------------------------------------------


def _answer(obj: dict, key: str, where: str) -> str:
    if key not in obj or obj[key] is None:
        raise DataError(
            f"{where}: missing field {key!r} (a preference record needs chosen and rejected)"
        )
    value = obj[key]
    if isinstance(value, list):  # conversational: [{"role": "assistant", "content": ...}]
        if (
            len(value) != 1
            or not isinstance(value[0], dict)
            or _ROLE_ALIASES.get(str(value[0].get("role", value[0].get("from")))) != "assistant"
        ):
            raise DataError(
                f"{where}: field {key!r} as a list must hold exactly one assistant message"
            )
        value = value[0].get("content", value[0].get("value"))
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def _prompt_from_messages(msgs: list, where: str) -> Record:
    system = None
    turns: list[tuple[str, str]] = []
    for j, m in enumerate(msgs):
        mwhere = f"{where}: prompt[{j}]"
        if not isinstance(m, dict):
            raise DataError(f"{mwhere}: expected an object, got {type(m).__name__}")
        role_key, text_key = ("role", "content") if "role" in m else ("from", "value")
        role = _ROLE_ALIASES.get(str(m.get(role_key)))
        text = m.get(text_key)
        if role is None:
            raise DataError(
                f"{mwhere}: unknown role {m.get(role_key)!r}; expected user/assistant/system"
            )
        if not isinstance(text, str):
            raise DataError(f"{mwhere}: field {text_key!r} must be a string")
        if role == "system":
            if j != 0:
                raise DataError(f"{mwhere}: a system message must come first")
            system = text
        else:
            turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise DataError(f"{where}: field 'prompt' as messages must end with a user message")
    history = []
    for k in range(0, len(turns) - 1, 2):
        if turns[k][0] != "user" or turns[k + 1][0] != "assistant":
            raise DataError(
                f"{where}: 'prompt' messages must alternate user/assistant (position {k})"
            )
        history.append((turns[k][1], turns[k + 1][1]))
    return Record(instruction=turns[-1][1], system=system, history=history)


def parse_preference(obj: dict[str, Any], where: str) -> PreferencePair:
    """One record in either accepted form -> PreferencePair (raises DataError naming `where`)."""
    if "prompt" in obj:
        prompt = obj["prompt"]
        if isinstance(prompt, list) and prompt:
            record = _prompt_from_messages(prompt, where)
            if obj.get("system") is not None:
                raise DataError(
                    f"{where}: give the system prompt in 'prompt' or 'system', not both"
                )
        elif isinstance(prompt, str):
            if not prompt.strip():
                raise DataError(f"{where}: field 'prompt' is empty")
            system = obj.get("system")
            if system is not None and not isinstance(system, str):
                raise DataError(f"{where}: field 'system' must be a string")
            record = Record(instruction=prompt, system=system or None)
        else:
            raise DataError(
                f"{where}: field 'prompt' must be a string or a non-empty list of messages"
            )
    elif "instruction" in obj:
        record = parse_record(obj, where, require_output=False)
    else:
        raise DataError(
            f"{where}: missing field 'prompt' (or 'instruction'); a preference record is "
            "prompt/chosen/rejected or instruction/input/chosen/rejected"
        )
    chosen = _answer(obj, "chosen", where)
    rejected = _answer(obj, "rejected", where)
    record.output = chosen
    record.raw = obj
    return PreferencePair(record, chosen, rejected)


def load_preferences(path: str | Path, identical_pairs: str = "error") -> list[PreferencePair]:
    """Read and validate a preference file.

    identical_pairs: a pair whose chosen and rejected answers are the same teaches nothing (its
    DPO gradient is zero) and is usually a data bug: "error" (default) or "drop" (counted).
    """
    if identical_pairs not in ("error", "drop"):
        raise ValueError(
            f"data.identical_pairs: expected 'error' or 'drop', got {identical_pairs!r}"
        )
    pairs, dropped = [], 0
    for where, obj in read_json_records(path):
        pair = parse_preference(obj, where)
        if pair.chosen.strip() == pair.rejected.strip():
            if identical_pairs == "error":
                raise DataError(
                    f"{where}: 'chosen' and 'rejected' are identical; a preference pair must "
                    "differ (or set data.identical_pairs=drop)"
                )
            dropped += 1
            continue
        pairs.append(pair)
    if dropped:
        log.warning(
            "%s: dropped %d pairs whose chosen and rejected answers are identical", path, dropped
        )
    if not pairs:
        raise DataError(f"{path}: no preference records")
    return pairs


# -- tokenising and truncating ---------------------------------------------------------------


@dataclass
class PairExample:
    """Token ids of one pair. `chosen`/`rejected` end with end-of-text unless truncated (or
    built with `end_of_text=False`)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    index: int  # position in its split: the key of its reference log-probs
    record: Record
    ref_logps: tuple[float, float] | None = None  # (chosen, rejected), summed, when precomputed
    truncated: dict[str, bool] = field(default_factory=dict)


def completion_ids(
    text: str,
    style: PromptStyle,
    tokenizer: Tokenizer,
    end_of_text: bool = True,
    record: Record | None = None,
) -> list[int]:
    """The answer, the style's end-of-turn suffix and exactly one end-of-text token (none with
    `end_of_text=False`, as the DPO notebook, whose answers end without one). With `record`, the
    answer as the style renders it after that conversation (prompt style `model`)."""
    # answer text never becomes special tokens
    if record is None:
        ids = style.encode_answer(text, tokenizer)
    else:
        ids = style.encode_completion(record, text, tokenizer)
    if ids and ids[-1] == tokenizer.eos_id:
        ids = ids[:-1]
    return ids + [tokenizer.eos_id] if end_of_text else ids


SCORED = ("answer", "response_and_answer")


def notebook_scored_start(pair: PreferencePair, style: PromptStyle, tokenizer: Tokenizer) -> int:
    """Where the DPO notebook starts scoring: its prompt (the style's prompt without the
    response header) plus 2 tokens (`mask[:prompt.shape[0]+2] = False`: with GPT-2's BPE the
    two "\n" tokens before "### Response:", which is scored with the answer)."""
    return len(style.encode_instruction(pair.record, tokenizer)) + 2


def encode_pair(
    pair: PreferencePair,
    style: PromptStyle,
    tokenizer: Tokenizer,
    max_length: int,
    max_prompt_length: int,
    index: int = 0,
    scored: str = "answer",
    end_of_text: bool = True,
) -> PairExample:
    """Tokenise and truncate: the prompt keeps its end, the completions keep their start.

    scored: `answer` scores the answer (and end-of-text); `response_and_answer` also the end of
    the response header, as the DPO notebook (`notebook_scored_start`): those header tokens
    then belong to both completions instead of the shared prompt."""
    prompt = style.encode_prompt(pair.record, tokenizer)
    chosen = completion_ids(pair.chosen, style, tokenizer, end_of_text, pair.record)
    rejected = completion_ids(pair.rejected, style, tokenizer, end_of_text, pair.record)
    if scored == "response_and_answer":
        start = min(notebook_scored_start(pair, style, tokenizer), len(prompt))
        prompt, header = prompt[:start], prompt[start:]
        chosen, rejected = header + chosen, header + rejected
    truncated = {"prompt": len(prompt) > max_prompt_length}
    if truncated["prompt"]:
        prompt = prompt[len(prompt) - max_prompt_length :]
    room = max_length - len(prompt)
    truncated["chosen"] = len(chosen) > room
    truncated["rejected"] = len(rejected) > room
    return PairExample(prompt, chosen[:room], rejected[:room], index, pair.record, None, truncated)


class PreferenceDataset(Dataset):
    def __init__(self, examples: list[PairExample]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> PairExample:
        return self.examples[i]


# -- batching --------------------------------------------------------------------------------


def _sequences(batch: list[PairExample]) -> list[tuple[list[int], int]]:
    """(ids, prompt length) of the 2B sequences: all chosen first, then all rejected."""
    return [(ex.prompt + ex.chosen, len(ex.prompt)) for ex in batch] + [
        (ex.prompt + ex.rejected, len(ex.prompt)) for ex in batch
    ]


def _shifted(ids: list[int], prompt_len: int, ignore_index: int) -> tuple[list[int], list[int]]:
    """Inputs = ids[:-1]; targets = ids[1:] with the prompt's targets masked."""
    targets = ids[1:]
    n_masked = max(prompt_len - 1, 0)
    return ids[:-1], [ignore_index] * n_masked + targets[n_masked:]


def collate_pairs(
    batch: list[PairExample],
    pad_id: int,
    packing: bool = False,
    pack_length: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """One batch for the concatenated forward: 2B sequences (chosen rows, then rejected rows).

    Keys: input_ids, targets (B2, T); index (B,) the examples' keys; ref_chosen_logps and
    ref_rejected_logps (B,) when every example has precomputed reference log-probs; with
    packing also positions, doc_ids and seq_ids (which of the 2B sequences a target belongs to).
    """
    seqs = [_shifted(ids, p, ignore_index) for ids, p in _sequences(batch)]
    out: dict[str, torch.Tensor] = {"index": torch.tensor([ex.index for ex in batch])}
    if packing:
        out.update(_pack(seqs, pad_id, pack_length, ignore_index))
    else:
        width = max(len(inp) for inp, _ in seqs)
        inputs = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        targets = torch.full((len(seqs), width), ignore_index, dtype=torch.long)
        for row, (inp, tgt) in enumerate(seqs):
            inputs[row, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            targets[row, : len(tgt)] = torch.tensor(tgt, dtype=torch.long)
        out["input_ids"], out["targets"] = inputs, targets
    if all(ex.ref_logps is not None for ex in batch):
        ref = torch.tensor([ex.ref_logps for ex in batch], dtype=torch.float32)
        out["ref_chosen_logps"], out["ref_rejected_logps"] = ref[:, 0], ref[:, 1]
    return out


def _pack(
    seqs: list[tuple[list[int], list[int]]], pad_id: int, capacity: int | None, ignore_index: int
) -> dict[str, torch.Tensor]:
    lengths = [len(inp) for inp, _ in seqs]
    # balanced rows (the SFT packer's): the width stays near total / rows, so little padding
    rows = assign_rows(lengths, max(capacity or 0, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    inputs = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, ignore_index, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    doc_ids = torch.full(shape, -1, dtype=torch.long)
    seq_ids = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            inp, tgt = seqs[i]
            end = start + len(inp)
            inputs[r, start:end] = torch.tensor(inp, dtype=torch.long)
            targets[r, start:end] = torch.tensor(tgt, dtype=torch.long)
            positions[r, start:end] = torch.arange(len(inp))
            doc_ids[r, start:end] = i
            seq_ids[r, start:end] = i
            start = end
    return {
        "input_ids": inputs,
        "targets": targets,
        "positions": positions,
        "doc_ids": doc_ids,
        "seq_ids": seq_ids,
    }


# -- the datamodule --------------------------------------------------------------------------


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs for DPO; the same `connect()` / `test_records()` interface as SFT.

    Either one file split by seed (`path` + `split`), or explicit `train_path`/`val_path`/
    `test_path`. `path: null` uses the embedded preference pairs shipped with tunelab.
    """

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        split: tuple[float, float, float] = (0.85, 0.05, 0.10),
        batch_size: int = 4,
        max_length: int | None = 256,
        max_prompt_length: int | None = None,
        packing: bool = False,
        identical_pairs: str = "error",
        limit: int | None = None,
        seed: int = 123,
        num_workers: int = 0,
        split_order: str = "shuffled",
        scored: str = "answer",
        end_of_text: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        check_data_sizes(batch_size, max_length, limit, num_workers)
        check_split_order(split_order)
        if scored not in SCORED:
            raise ValueError(
                f"data.scored: expected 'answer' or 'response_and_answer', got {scored!r}"
            )
        # The DPO notebook's settings: split_order=file, scored=response_and_answer,
        # end_of_text=false, drop_last=true; see README "Coming from the book".
        self.split_order, self.scored = split_order, scored
        self.end_of_text, self.drop_last = end_of_text, drop_last
        self.path, self.train_path, self.val_path, self.test_path = (
            path,
            train_path,
            val_path,
            test_path,
        )
        self.split = tuple(split)
        self.batch_size = batch_size
        self.max_length = max_length
        self.configured_max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.packing = packing
        if identical_pairs not in ("error", "drop"):
            raise ValueError(
                f"data.identical_pairs: expected 'error' or 'drop', got {identical_pairs!r}"
            )
        self.identical_pairs = identical_pairs
        self.limit = limit
        self.seed = seed
        self.num_workers = num_workers
        self._resume_state: dict[str, int] | None = None
        self.tokenizer: Tokenizer | None = None
        self.style: PromptStyle | None = None
        self.pairs: dict[str, list[PreferencePair]] = {}
        self.datasets: dict[str, PreferenceDataset] = {}
        self.truncation: dict[str, dict[str, int]] = {}

    def connect(
        self, tokenizer: Tokenizer, prompt_style: str | PromptStyle, max_length: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.style = get_style(prompt_style, tokenizer)
        if max_length is not None:
            self.max_length = min(self.max_length or max_length, max_length)

    def lengths(self) -> tuple[int, int]:
        """(max_length, max_prompt_length) in effect; the prompt limit defaults to half."""
        if not self.max_length or self.max_length < 2:
            raise ValueError(f"data.max_length must be at least 2 for DPO, got {self.max_length}")
        max_prompt = self.max_prompt_length or self.max_length // 2
        if max_prompt >= self.max_length:
            if self.max_length < (self.configured_max_length or self.max_length + 1):
                # connect() cut max_length to the model's context: halve, as for null.
                log.warning(
                    "data.max_prompt_length=%d does not fit the model's context of %d tokens: "
                    "using %d",
                    max_prompt,
                    self.max_length,
                    self.max_length // 2,
                )
                return self.max_length, self.max_length // 2
            raise ValueError(
                f"data.max_prompt_length ({max_prompt}) must be below data.max_length "
                f"({self.max_length}) so that completions keep at least one token"
            )
        return self.max_length, max_prompt

    def load_splits(self) -> dict[str, list[PreferencePair]]:
        if self.pairs:
            return self.pairs
        load = partial(load_preferences, identical_pairs=self.identical_pairs)
        if self.train_path:
            if self.path:
                raise DataError(
                    "data: give either `path` (split by seed) or `train_path`, not both"
                )
            self.pairs = {"train": load(self.train_path)}
            for name, p in (("val", self.val_path), ("test", self.test_path)):
                self.pairs[name] = load(p) if p else []
        else:
            pairs = load(self.path or EMBEDDED_PREFERENCES)
            if self.limit:
                pairs = pairs[: self.limit]
            train, val, test = split_by_order(pairs, self.split, self.seed, self.split_order)
            self.pairs = {"train": train, "val": val, "test": test}
        if not self.pairs["train"]:
            raise DataError("data: the training split is empty")
        log.info("preference data: %s", ", ".join(f"{k}={len(v)}" for k, v in self.pairs.items()))
        return self.pairs

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None or self.style is None:
            raise RuntimeError(
                "PreferenceDataModule.connect(tokenizer, prompt_style) must be called first"
            )
        if self.datasets:
            return
        max_length, max_prompt = self.lengths()
        for split, pairs in self.load_splits().items():
            examples = [
                encode_pair(
                    p,
                    self.style,
                    self.tokenizer,
                    max_length,
                    max_prompt,
                    index=i,
                    scored=self.scored,
                    end_of_text=self.end_of_text,
                )
                for i, p in enumerate(pairs)
            ]
            counts = {
                k: sum(ex.truncated[k] for ex in examples) for k in ("prompt", "chosen", "rejected")
            }
            self.truncation[split] = counts
            if any(counts.values()):
                log.warning(
                    "%s: of %d pairs, %d prompts kept their last %d tokens; %d chosen and %d "
                    "rejected answers kept their first tokens to fit max_length=%d",
                    split,
                    len(examples),
                    counts["prompt"],
                    max_prompt,
                    counts["chosen"],
                    counts["rejected"],
                    max_length,
                )
            self.datasets[split] = PreferenceDataset(examples)

    def collate_fn(self):
        return partial(
            collate_pairs,
            pad_id=self.tokenizer.pad_id,
            packing=self.packing,
            pack_length=self.max_length,
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # The same global batches on 1 or N processes, resumable mid-epoch (tunelab.data.distributed).
        resume = resume_point(self._resume_state) if split == "train" else None
        if split == "train":
            self._resume_state = None
        return make_loader(
            self.datasets[split],
            self.batch_size,
            shuffle,
            self.seed,
            self.collate_fn(),
            self.trainer,
            self.num_workers,
            resume,
            drop_last=self.drop_last and split == "train",
        )

    def state_dict(self) -> dict[str, int]:
        return data_position(self.trainer)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_state = dict(state_dict)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_split(), shuffle=False)

    def eval_split(self) -> str:
        return "val" if self.datasets.get("val") and self.datasets["val"].examples else "train"

    def set_reference_logps(self, split: str, logps: torch.Tensor) -> None:
        """Attach precomputed reference log-probs (N, 2: chosen, rejected), keyed by index."""
        examples = self.datasets[split].examples
        if logps.shape != (len(examples), 2):
            raise ValueError(
                f"reference log-probs for {split}: expected shape ({len(examples)}, 2), "
                f"got {tuple(logps.shape)}"
            )
        for ex in examples:
            ex.ref_logps = (float(logps[ex.index, 0]), float(logps[ex.index, 1]))

    def test_records(self) -> list[Record]:
        return [p.record for p in self.load_splits()["test"]]
