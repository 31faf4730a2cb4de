"""Residual hooks and the activation-statistics callback (GPT-2 and Llama shapes)."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from tunelab.callbacks.activations import ActivationStats, residual_stats
from tunelab.callbacks.hooks import capture_block_outputs, find_decoder, hook_count
from tunelab.callbacks.logit_lens import LogitLens
from tunelab.models import Config, Decoder
from tunelab.models.tokenizer import tokenizer_by_name

FAMILIES = ["tiny-gpt2", "tiny-llama"]


def tiny(preset: str, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(Config.from_preset(preset))


def manual_residuals(model: Decoder, ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream computed by hand: embeddings, then each block in turn."""
    B, T = ids.shape
    positions = torch.arange(T).expand(B, T)
    rope = model._rope_for(positions) if model.cfg.uses_rope else None
    x = model.embed(ids, positions)
    out = [x]
    for block in model.blocks:
        x = block(x, rope, None, None)
        out.append(x)
    return out


@pytest.mark.parametrize("preset", FAMILIES)
def test_captured_block_outputs_equal_a_manual_forward(preset):
    model = tiny(preset).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    before = hook_count(model)
    with torch.no_grad(), capture_block_outputs(model) as res:
        assert hook_count(model) == before + model.cfg.n_layer + 1
        logits = model(ids)
        manual = manual_residuals(model, ids)
    assert hook_count(model) == before
    assert sorted(res) == list(range(model.cfg.n_layer + 1))
    for i, x in enumerate(manual):
        assert torch.equal(res[i], x), f"residual {i}"
    assert torch.equal(model.lm_head(model.norm_f(res[model.cfg.n_layer])), logits)


def test_capture_removes_its_hooks_when_the_body_raises():
    model = tiny("tiny-gpt2")
    with pytest.raises(RuntimeError, match="boom"), capture_block_outputs(model):
        raise RuntimeError("boom")
    assert hook_count(model) == 0


def test_residual_stats_worked_by_hand():
    x = torch.tensor([[1.0, -1.0], [3.0, -3.0]])
    rms, mean, std, max_abs = residual_stats(x).tolist()
    assert rms == pytest.approx(math.sqrt(5.0))  # (1 + 1 + 9 + 9) / 4 = 5
    assert mean == 0.0
    assert std == pytest.approx(math.sqrt(20.0 / 3.0))  # unbiased: 20 / (4 - 1)
    assert max_abs == 3.0


def test_find_decoder_names_what_it_needs():
    with pytest.raises(TypeError, match="holds no tunelab Decoder"):
        find_decoder(torch.nn.Linear(2, 2))


# -- a minimal training loop: a fixed batch, lr 0 so the weights (and so every number) stay put --
class FixedBatchLM(L.LightningModule):
    def __init__(self, model: Decoder, ids: torch.Tensor, fail_at: int | None = None) -> None:
        super().__init__()
        self.model, self.ids, self.fail_at = model, ids, fail_at
        self.tokenizer = tokenizer_by_name("gpt2")
        self.prompt_style = "alpaca"

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step >= self.fail_at:
            raise RuntimeError("training failed on purpose")
        return self.loss(self.ids)

    def validation_step(self, batch, batch_idx):
        return self.loss(self.ids)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(range(64), batch_size=1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(range(2), batch_size=1)


def make_trainer(tmp_path, callbacks, max_steps=5, logger: bool | list = True) -> L.Trainer:
    """logger: True for a CSVLogger in tmp_path/csv, False for none, or a list of loggers."""
    loggers = logger
    if logger is True:
        loggers = [L.pytorch.loggers.CSVLogger(tmp_path, name="csv", version="")]
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )


def expected_numbers(model: Decoder, ids: torch.Tensor) -> dict[str, float]:
    """What the callback should log, computed by hand with autograd."""
    model.zero_grad()
    res = manual_residuals(model, ids[:, :-1])
    for x in res:
        x.retain_grad()
    h = res[-1]
    logits = model.lm_head(model.norm_f(h))
    F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    out = {}
    for i, x in enumerate(res):
        xs = x.detach()
        out[f"act/layer_{i}/rms"] = float(xs.pow(2).mean().sqrt())
        out[f"act/layer_{i}/max_abs"] = float(xs.abs().max())
        out[f"act/layer_{i}/grad_norm"] = float(x.grad.norm())
    for b, block in enumerate(model.blocks):
        sq = sum(float(p.grad.pow(2).sum()) for p in block.parameters())
        out[f"act/layer_{b + 1}/param_grad_norm"] = math.sqrt(sq)
    model.zero_grad()
    return out


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("preset", FAMILIES)
def test_fit_logs_every_n_steps_the_numbers_worked_out_by_hand(tmp_path, preset, checkpointing):
    model = tiny(preset)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(2))
    want = expected_numbers(model, ids)
    # with activation checkpointing the blocks run again in the backward pass: same numbers
    model.activation_checkpointing = checkpointing
    module = FixedBatchLM(model, ids)
    cb = ActivationStats(every_n_steps=2)
    start = hook_count(module)
    make_trainer(tmp_path, [cb], max_steps=5).fit(module)
    assert hook_count(module) == start and cb.hooks is None
    # Steps 0, 2 and 4 logged; validation (no grad) in between changed nothing.
    assert [h["step"] for h in cb.history] == [0.0, 2.0, 4.0]
    n = model.cfg.n_layer
    for h in cb.history:
        assert len(h) == 1 + 6 * (n + 1) - 1  # step + 4 stats + grad norm per residual + n params
        for name, value in want.items():
            assert h[name] == pytest.approx(value, rel=1e-4), name
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("act/layer_0/rms")]
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert float(rows[0][f"act/layer_{n}/grad_norm"]) == pytest.approx(
        want[f"act/layer_{n}/grad_norm"], rel=1e-4
    )


def test_hook_count_returns_to_start_after_a_failing_fit(tmp_path):
    model = tiny("tiny-llama")
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(3))
    module = FixedBatchLM(model, ids, fail_at=3)
    act = ActivationStats(every_n_steps=1)
    lens = LogitLens(str(tmp_path), prompts=["Hello there"], last_k=2)
    start = hook_count(module)
    with pytest.raises(RuntimeError, match="training failed on purpose"):
        make_trainer(tmp_path, [act, lens], max_steps=10, logger=False).fit(module)
    assert hook_count(module) == start
    assert act.hooks is None
    assert [h["step"] for h in act.history] == [0.0, 1.0, 2.0]
    assert "start" in lens.results and "end" not in lens.results  # no end probe after a failure


def test_every_n_steps_must_be_positive():
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        ActivationStats(every_n_steps=0)
