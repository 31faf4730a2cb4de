"""tunelab's data options against the book's own data code, token for token.

The book's ch07 `InstructionDataset` + `custom_collate_fn` (from the package); exercise 7.1's
Phi-3 format and exercise 7.2's masking collate, and the DPO notebook's `PreferenceDataset` +
`custom_collate_fn`, are not in the package: they are re-typed below from the book's exercise
solutions and the notebook (ch07/04_preference-tuning-with-dpo/dpo-from-scratch.ipynb).
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.book.book import EOT, PAIRS, RECORDS, book, gpt2_encoding
from tunelab.data.preference import PreferenceDataModule
from tunelab.data.sft import SFTDataModule
from tunelab.data.splits import split_by_order
from tunelab.models.tokenizer import tokenizer_by_name


def _sft_batch(tmp_path, records, **kw):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    style = kw.pop("style", "alpaca")
    kw = {"shuffle": False, "split_order": "file", **kw}
    dm = SFTDataModule(
        path=str(path), split=(1.0, 0.0, 0.0), batch_size=len(records), max_length=None, **kw
    )
    dm.connect(tokenizer_by_name("gpt2"), style)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_sft_batches_equal_the_books_instruction_dataset_and_collate(tmp_path):
    ch07 = book("ch07")
    data = ch07.InstructionDataset(RECORDS, gpt2_encoding())
    inputs, targets = ch07.custom_collate_fn([data[i] for i in range(len(RECORDS))])
    batch = _sft_batch(tmp_path, RECORDS)
    assert torch.equal(batch["input_ids"], inputs)
    assert torch.equal(batch["targets"], targets)


# -- exercise 7.2: mask the instruction (format_input), train on "### Response:" -----------------
def _exercise_7_2_collate(batch, pad_token_id=EOT, ignore_index=-100):
    """The exercise solution's collate: the ch07 collate plus targets[:instruction_length-1]."""
    batch_max_length = max(len(item) + 1 for _, item in batch)
    inputs_lst, targets_lst = [], []
    for instruction_length, item in batch:
        new_item = item.copy() + [pad_token_id]
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs, targets = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        indices = torch.nonzero(targets == pad_token_id).squeeze()
        if indices.numel() > 1:
            targets[indices[1:]] = ignore_index
        targets[: instruction_length - 1] = -100
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst), torch.stack(targets_lst)


def test_mask_without_the_response_header_equals_exercise_7_2(tmp_path):
    ch07, enc = book("ch07"), gpt2_encoding()
    items = []
    for entry in RECORDS:
        prompt = ch07.format_input(entry)
        full = prompt + f"\n\n### Response:\n{entry['output']}"
        items.append((len(enc.encode(prompt)), enc.encode(full)))
    inputs, targets = _exercise_7_2_collate(items)
    batch = _sft_batch(tmp_path, RECORDS, mask_prompt=True, mask_response_header=False)
    assert torch.equal(batch["input_ids"], inputs)
    assert torch.equal(batch["targets"], targets)
    # tunelab's default also hides the 6 tokens of "\n\n### Response:\n" ("\n" "\n" "###" ...).
    default = _sft_batch(tmp_path, RECORDS, mask_prompt=True)
    counted = (targets != -100).sum(1) - (default["targets"] != -100).sum(1)
    assert counted.tolist() == [6] * len(RECORDS)


# -- exercise 7.1: the Phi-3 format ------------------------------------------------------------
def _format_input_phi(entry):
    instruction_text = f"<|user|>\n{entry['instruction']}"
    input_text = f"\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


def test_phi3_book_style_equals_exercise_7_1(tmp_path):
    enc = gpt2_encoding()
    expected = [
        enc.encode(_format_input_phi(e) + f"\n<|assistant|>:\n{e['output']}") for e in RECORDS
    ]
    inputs, targets = book("ch07").custom_collate_fn(expected)
    batch = _sft_batch(tmp_path, RECORDS, style="phi3_book")
    assert torch.equal(batch["input_ids"], inputs)
    assert torch.equal(batch["targets"], targets)


def test_file_order_split_is_the_books_train_test_val_slicing():
    data = list(range(1100))
    train_portion, test_portion = int(len(data) * 0.85), int(len(data) * 0.1)
    book_train = data[:train_portion]
    book_test = data[train_portion : train_portion + test_portion]
    book_val = data[train_portion + test_portion :]
    train, val, test = split_by_order(data, (0.85, 0.05, 0.10), seed=123, order="file")
    assert (train, val, test) == (book_train, book_val, book_test)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    with pytest.raises(ValueError, match="data.split_order: expected 'shuffled' or 'file'"):
        SFTDataModule(split_order="random")


# -- the DPO notebook's data --------------------------------------------------------------------
def notebook_preference_items(pairs, tokenizer):
    """The notebook's PreferenceDataset: prompt, chosen and rejected token ids."""
    format_input = book("ch07").format_input
    items = []
    for entry in pairs:
        prompt = format_input(entry)
        items.append(
            {
                "prompt": tokenizer.encode(prompt),
                "chosen": tokenizer.encode(f"{prompt}\n\n### Response:\n{entry['chosen']}"),
                "rejected": tokenizer.encode(f"{prompt}\n\n### Response:\n{entry['rejected']}"),
            }
        )
    return items


def notebook_collate(batch, pad_token_id=EOT, allowed_max_length=None, mask_prompt_tokens=True):
    """The notebook's custom_collate_fn (padding to the longest sequence + 1, masks)."""
    batch_data = {
        "prompt": [],
        "chosen": [],
        "rejected": [],
        "rejected_mask": [],
        "chosen_mask": [],
    }
    max_length_common = 0
    for key in ["chosen", "rejected"]:
        current_max = max(len(item[key]) + 1 for item in batch)
        max_length_common = max(max_length_common, current_max)
    for item in batch:
        prompt = torch.tensor(item["prompt"])
        batch_data["prompt"].append(prompt)
        for key in ["chosen", "rejected"]:
            sequence = item[key]
            padded = sequence + [pad_token_id] * (max_length_common - len(sequence))
            mask = torch.ones(len(padded)).bool()
            mask[len(sequence) :] = False
            if mask_prompt_tokens:
                mask[: prompt.shape[0] + 2] = False
            batch_data[key].append(torch.tensor(padded))
            batch_data[f"{key}_mask"].append(mask)
    for key in ["chosen", "rejected", "chosen_mask", "rejected_mask"]:
        tensor_stack = torch.stack(batch_data[key])
        if allowed_max_length is not None:
            tensor_stack = tensor_stack[:, :allowed_max_length]
        batch_data[key] = tensor_stack
    return batch_data


def preference_batch(tmp_path, pairs, **kw):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(pairs), encoding="utf-8")
    dm = PreferenceDataModule(
        path=str(path), split=(1.0, 0.0, 0.0), batch_size=len(pairs), max_length=1024, **kw
    )
    dm.connect(tokenizer_by_name("gpt2"), "alpaca")
    dm.setup("fit")
    return dm, dm.collate_fn()(dm.datasets["train"].examples)


def test_preference_batches_score_the_notebooks_tokens(tmp_path):
    items = notebook_preference_items(PAIRS, gpt2_encoding())
    nb = notebook_collate(items)
    _, batch = preference_batch(
        tmp_path, PAIRS, split_order="file", scored="response_and_answer", end_of_text=False
    )
    n = len(PAIRS)
    for rows, key in ((slice(0, n), "chosen"), (slice(n, 2 * n), "rejected")):
        ids, mask = nb[key], nb[f"{key}_mask"]
        width = batch["input_ids"].shape[1]
        # tunelab's inputs are each sequence but its last token (which predicts nothing).
        for r, item in enumerate(items):
            length = len(item[key])
            assert torch.equal(batch["input_ids"][rows][r, : length - 1], ids[r, : length - 1])
        # Notebook: label ids[:, 1:] counted where mask[:, 1:]; tunelab: targets != -100.
        counted = batch["targets"][rows] != -100
        assert torch.equal(counted, mask[:, 1 : width + 1])
        assert torch.equal(batch["targets"][rows][counted], ids[:, 1 : width + 1][counted])
    # The first scored token is "###": the notebook's +2 leaves out the two "\n" tokens.
    enc = gpt2_encoding()
    first = batch["targets"][0][batch["targets"][0] != -100][0]
    assert enc.decode([int(first)]) == "###"
    # tunelab's default scores the answer and one end-of-text: 3 tokens fewer per sequence
    # ("###", " Response", ":", "\n" out, end-of-text in).
    _, default = preference_batch(tmp_path, PAIRS, split_order="file")
    diff = (batch["targets"] != -100).sum(1) - (default["targets"] != -100).sum(1)
    assert diff.tolist() == [3] * (2 * n)
    with pytest.raises(ValueError, match="data.scored: expected 'answer' or 'response_and_answer'"):
        PreferenceDataModule(scored="header")


def test_phi3_book_refuses_a_system_prompt_or_earlier_turns():
    from tunelab.data.prompts import get_style
    from tunelab.data.records import DataError, Record

    style = get_style("phi3_book")
    for record in (Record("Hi", system="Be brief."), Record("Hi", history=[("a", "b")])):
        with pytest.raises(DataError, match="prompt style phi3_book .* has no system prompt or"):
            style.prompt(record)
