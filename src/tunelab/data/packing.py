"""Packing SFT examples into rows: no padding between examples, same loss as padded batches.

A padded batch spends compute on pad tokens (on the embedded instruction data about a third of
every batch padded to its longest example is padding). Packing puts several examples into one row
and keeps them apart with per-example positions (restarting at 0) and document ids, which the
decoder turns into block-diagonal causal attention. Each example keeps exactly its own targets,
end-of-text included, and no target crosses an example boundary, so the token-weighted mean loss
of a packed batch equals that of the padded batch holding the same examples. An example cut at
max_length targets the token after the cut, not end-of-text (see `tunelab.data.sft`).

Packing works on one batch at a time: a step still sees the same `batch_size` examples as
without packing (same data order, same number of optimizer steps), only laid out in fewer,
fuller rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tunelab.data.sft import IGNORE_INDEX, Example, apply_turn_mask, example_items


def assign_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Group example indices into as few rows of at most `max_length` tokens as the greedy finds.

    Balanced longest-first greedy: with `r = ceil(total / max_length)` rows, each example (longest
    first) goes to the currently shortest row; if a row overflows, try again with one more row.
    Balancing keeps the rows about equally full, so the batch width (the longest row) stays close
    to `total / r` and little padding remains. Indices inside a row keep their original order.
    """
    if max_length < 1:
        raise ValueError(f"packing: max_length must be >= 1, got {max_length}")
    too_long = [(i, n) for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        i, n = too_long[0]
        raise ValueError(
            f"packing: example {i} has {n} tokens, more than max_length={max_length}; "
            "truncate examples first (SFTDataModule does, with max_length)"
        )
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows_needed = max(1, math.ceil(sum(lengths) / max_length))
    for n_rows in range(rows_needed, len(lengths) + 1):
        fill = [0] * n_rows
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        for i in order:
            r = min(range(n_rows), key=lambda j: (fill[j], j))
            fill[r] += lengths[i]
            rows[r].append(i)
        if max(fill) <= max_length:
            return [sorted(row) for row in rows if row]
    raise AssertionError("unreachable: one example per row always fits")  # pragma: no cover


def collate_packed(
    batch: list[Example] | list[list[int]],
    pad_id: int,
    max_length: int,
    mask_prompt: bool = False,
    ignore_index: int = IGNORE_INDEX,
    pad_to_multiple_of: int = 1,
    spans: bool = False,
) -> dict[str, torch.Tensor | int]:
    """Pack one batch of examples into rows of at most `max_length` input tokens.

    Returns `input_ids`, `targets` (shifted by one inside each example; its last input token
    targets the end-of-text token = `pad_id`, or the token after a max_length cut, as in
    `collate_sft`), `positions` (restarting at 0
    for every example) and `doc_ids` (the example's index in `batch`; -1 on padding). Rows are
    padded to the longest row with `pad_id` inputs and `ignore_index` targets, rounded up to a
    multiple of `pad_to_multiple_of` (GPUs: fewer distinct shapes, tensor-core-friendly widths).

    spans: also return `cu_seqlens` (int32 span boundaries in the flattened rows, as
    `tunelab.models.decoder.packed_spans(doc_ids)` gives them) and `max_seqlen` (a Python int),
    computed here on the host so the decoder's varlen path reads nothing back from the GPU.
    """
    items = example_items(batch)
    if any(len(ids) == 0 for ids, _, _ in items):
        raise ValueError("packing: every example needs at least one token")
    rows = assign_rows([len(ids) for ids, _, _ in items], max_length)
    width = max(sum(len(items[i][0]) for i in row) for row in rows)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    shape = (len(rows), width)
    inputs = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, ignore_index, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    doc_ids = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            ids, prompt_len, next_id = items[i]
            n = len(ids)
            seq = torch.tensor(ids + [pad_id if next_id is None else next_id], dtype=torch.long)
            span = slice(start, start + n)
            inputs[r, span] = seq[:-1]
            tgt = seq[1:].clone()
            if mask_prompt and prompt_len > 1:
                tgt[: prompt_len - 1] = ignore_index
            if mask_prompt and isinstance(batch[i], Example) and batch[i].mask is not None:
                apply_turn_mask(tgt, batch[i], ignore_index)
            targets[r, span] = tgt
            positions[r, span] = torch.arange(n)
            doc_ids[r, span] = i
            start += n
    out: dict[str, torch.Tensor | int] = {
        "input_ids": inputs,
        "targets": targets,
        "positions": positions,
        "doc_ids": doc_ids,
    }
    if spans:
        lengths = [[len(items[i][0]) for i in row] for row in rows]
        cu, out["max_seqlen"] = row_spans(lengths, width)
        out["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32)
    return out


def row_spans(row_lengths: Sequence[Sequence[int]], width: int) -> tuple[list[int], int]:
    """(cu_seqlens, longest span) of rows holding examples of these lengths, padded to `width`.

    Each example is a span and so is each row's padding run, as in `packed_spans(doc_ids)`.
    """
    cu, longest = [0], 0
    for lengths in row_lengths:
        pad = width - sum(lengths)
        for n in [*lengths, pad] if pad else lengths:
            cu.append(cu[-1] + n)
            longest = max(longest, n)
    return cu, longest


def padding_fraction(batch: dict[str, torch.Tensor], pad_doc_id: int = -1) -> float:
    """Share of row slots that are padding (packed batches: doc id -1)."""
    if "doc_ids" in batch:
        return float((batch["doc_ids"] == pad_doc_id).float().mean())
    raise KeyError("padding_fraction needs a packed batch with `doc_ids`")
