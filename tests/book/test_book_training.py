"""tunelab's training equals the book's own training loops on identical weights and batches.

The book's GPTModel (ch04, tiny config) gets the same initial weights as tunelab's tiny GPT-2 and
trains on the same records in the same order (the book's ch07 `InstructionDataset` and
`custom_collate_fn`, `shuffle=False`, `drop_last=True`): every training loss and the final
weights agree to 1e-5 in fp32 on one thread, for ch05's `train_model_simple` (ch07's main text)
and for appendix D's `train_model` (`experiment=book_ch07`: warmup from 3e-5 over int(20%) of the
steps, cosine to 1e-6, clipping from the warmup's end, AdamW on every weight, untied LM head;
also every LR). The gradient norm is about 1.9 at the clipped steps, so clipping acts. Measured
at a peak LR of 1e-3 (one thread): losses within 1.9e-6, final weights within 8.8e-6 (constant
LR) and 2.5e-6 (appendix D); the LR here is 5e-4 to keep Adam's amplification of fp32 rounding
in weights whose gradients are near zero well inside the 1e-5 tolerance.
"""

from __future__ import annotations

import json
from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.book.book import RECORDS, book, book_model, gpt2_encoding, max_weight_diff
from tests.conftest import compose_train
from tunelab.callbacks.grad_clip import GradClip
from tunelab.train import build

EPOCHS, BATCH, PEAK_LR = 2, 8, 5e-4
# 24 records, 3 batches of 8 per epoch: 6 optimizer steps; warmup int(0.2 x 6) = 1 step.
TRAIN = [{**r, "instruction": f"{r['instruction']} ({i})"} for i in range(3) for r in RECORDS]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Record(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def tunelab_run(tmp_path, *overrides: str):
    """Train with experiment=book_ch07 on TRAIN in file order; (losses, lrs, model, start)."""
    path = tmp_path / "train.json"
    path.write_text(json.dumps(TRAIN), encoding="utf-8")
    cfg = compose_train(
        [
            "experiment=book_ch07",
            "model=tiny-gpt2",
            "trainer=cpu",
            "data=instructions_file",
            f"data.path={path}",
            "data.split=[1.0,0.0,0.0]",
            "data.shuffle=false",
            f"optimizer.lr={PEAK_LR}",
            "+trainer.limit_val_batches=0",
            "+trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "~callbacks.progress_bar",
            "~callbacks.responses",
            "~callbacks.model_checkpoint",
            *overrides,
        ],
        tmp_path,
    )
    parts = build(cfg)
    model = parts["loaded"].model
    start = book_model(model)  # the same initial weights, in the book's GPTModel
    record = _Record()
    parts["trainer"].callbacks.append(record)
    parts["trainer"].fit(parts["task"], datamodule=parts["datamodule"])
    clip = [c for c in parts["trainer"].callbacks if isinstance(c, GradClip)]
    return record.losses, record.lrs, model, start, clip


def book_loader():
    ch07 = book("ch07")
    collate = partial(ch07.custom_collate_fn, device="cpu", allowed_max_length=1024)
    data = ch07.InstructionDataset(TRAIN, gpt2_encoding())
    return DataLoader(data, batch_size=BATCH, shuffle=False, drop_last=True, collate_fn=collate)


def recorded(module, monkeypatch) -> list[float]:
    """Record the training losses of `module.calc_loss_batch` (not its no-grad evaluations)."""
    losses: list[float] = []
    original = module.calc_loss_batch

    def calc_loss_batch(*args, **kwargs):
        loss = original(*args, **kwargs)
        if torch.is_grad_enabled():
            losses.append(float(loss))
        return loss

    monkeypatch.setattr(module, "calc_loss_batch", calc_loss_batch)
    return losses


def test_sft_equals_the_books_train_model_simple(tmp_path, monkeypatch, one_thread):
    losses, _, model, gpt, _ = tunelab_run(
        tmp_path, "callbacks.lr_schedule.schedule=constant", "callbacks.grad_clip=null"
    )
    ch05 = book("ch05")
    book_losses = recorded(ch05, monkeypatch)
    loader = book_loader()
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=PEAK_LR, weight_decay=0.1)
    ch05.train_model_simple(
        gpt, loader, loader, optimizer, "cpu", EPOCHS, 10**6, 1, "Hi", gpt2_encoding()
    )
    assert len(losses) == len(book_losses) == EPOCHS * len(TRAIN) // BATCH
    assert losses == pytest.approx(book_losses, abs=1e-5, rel=0)
    assert losses[-1] < losses[0] - 0.2  # it trained
    assert max_weight_diff(model, gpt) < 1e-5


def book_appendix_d_run(gpt, monkeypatch):
    appendix_d = book("appendix_d")
    book_losses = recorded(appendix_d, monkeypatch)
    loader = book_loader()
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=PEAK_LR, weight_decay=0.1)
    total = EPOCHS * len(loader)
    *_, lrs = appendix_d.train_model(
        gpt,
        loader,
        loader,
        optimizer,
        "cpu",
        n_epochs=EPOCHS,
        eval_freq=10**6,
        eval_iter=1,
        start_context="Hi",
        tokenizer=gpt2_encoding(),
        warmup_steps=int(0.2 * total),
        initial_lr=3e-5,
        min_lr=1e-6,
    )
    return book_losses, lrs


def test_book_ch07_equals_appendix_d_train_model(tmp_path, monkeypatch, one_thread):
    losses, lrs, model, gpt, clip = tunelab_run(tmp_path)
    book_losses, book_lrs = book_appendix_d_run(gpt, monkeypatch)
    assert lrs == pytest.approx(book_lrs, abs=1e-12, rel=0)
    assert losses == pytest.approx(book_losses, abs=1e-5, rel=0)
    assert max_weight_diff(model, gpt) < 1e-5
    assert clip and clip[0].first_clipped_step(None) == 1
