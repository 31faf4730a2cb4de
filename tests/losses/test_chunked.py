"""Chunked LM head + loss: the same values and gradients as the full-logits path, no full logits."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.losses import (
    linear_cross_entropy,
    linear_target_logprobs,
    masked_cross_entropy,
    token_logprobs,
)
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.tasks.base import batch_target_logprobs, next_token_loss


def test_linear_cross_entropy_by_hand():
    # Two positions, identity-like head over 3 words; the second target is word 2.
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([[0, 2, -100]])
    loss, n = linear_cross_entropy(hidden, weight, targets, chunk_rows=1)
    # logits [1, 0, 0] -> NLL log(e + 2) - 1; logits [0, 1, 0] -> NLL log(e + 2) - 0
    assert int(n) == 2
    assert math.isclose(float(loss), math.log(math.e + 2) - 0.5, rel_tol=1e-6)
    loss.backward()
    # d loss / d hidden[0] = (softmax - onehot) @ W / 2 = ([e, 1, 1] / (e + 2) - [1, 0, 0]) @ W / 2
    s = math.e + 2
    expected_h0 = torch.tensor([(math.e / s - 1) / 2, 1 / s / 2])
    torch.testing.assert_close(hidden.grad[0, 0], expected_h0)
    assert hidden.grad[0, 2].abs().sum() == 0  # an ignored position gets no gradient


@pytest.mark.parametrize("pad_vocab_to", [1, 64])  # 64: the GPU default, 50 words padded to 64
@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_values_and_gradients_equal_the_full_logits_path(chunk_rows, pad_vocab_to):
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :3] = -100
    targets[2, 5:] = -100

    full = hidden @ weight.t()
    loss_a, n_a = masked_cross_entropy(full.double(), targets)
    grads_a = torch.autograd.grad(loss_a, (hidden, weight))
    loss_b, n_b = linear_cross_entropy(
        hidden, weight, targets, chunk_rows=chunk_rows, pad_vocab_to=pad_vocab_to
    )
    grads_b = torch.autograd.grad(loss_b, (hidden, weight))
    assert int(n_a) == int(n_b) == 16
    torch.testing.assert_close(loss_b, loss_a.to(loss_b.dtype), atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)

    # per-position log-probs, with a different upstream gradient per sequence (as DPO has)
    seq_weights = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    sums_a, counts = token_logprobs(hidden @ weight.t(), targets)
    grads_a = torch.autograd.grad((sums_a * seq_weights).sum(), (hidden, weight))
    logp = linear_target_logprobs(
        hidden, weight, targets, chunk_rows=chunk_rows, pad_vocab_to=pad_vocab_to
    )
    assert logp.dtype == torch.float64 and (logp[targets == -100] == 0).all()
    grads_b = torch.autograd.grad((logp.sum(-1) * seq_weights).sum(), (hidden, weight))
    torch.testing.assert_close(logp.sum(-1), sums_a.double(), atol=1e-5, rtol=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_counted_target_gives_zero_and_zero_gradients():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    loss, n = linear_cross_entropy(hidden, weight, torch.full((1, 4), -100))
    assert int(n) == 0 and float(loss) == 0.0
    loss.backward()
    assert hidden.grad.abs().sum() == 0


def test_backward_twice_through_one_loss_is_refused():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    loss, _ = linear_cross_entropy(hidden, weight, torch.tensor([[1, 2, 3, 4]]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_bf16_autocast_matches_the_full_logits_path():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 32, requires_grad=True)
    weight = torch.randn(64, 32, requires_grad=True)
    targets = torch.randint(0, 64, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_a, _ = masked_cross_entropy(hidden @ weight.t(), targets)
        loss_b, _ = linear_cross_entropy(hidden, weight, targets, chunk_rows=4, pad_vocab_to=48)
    grads_a = torch.autograd.grad(loss_a, (hidden, weight))
    grads_b = torch.autograd.grad(loss_b, (hidden, weight))
    assert loss_b.dtype == torch.float32
    torch.testing.assert_close(loss_b, loss_a, atol=2e-2, rtol=1e-2)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2e-2, rtol=5e-2)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_model_gradients_equal_with_and_without_chunking(preset):
    # Tied (GPT-2) and untied (Llama) LM heads; packed rows with per-example positions.
    torch.manual_seed(0)
    model = Decoder(Config.from_preset(preset)).eval()
    ids = torch.randint(0, 1000, (2, 12))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    targets[1, :4] = -100
    batch = {
        "input_ids": ids,
        "targets": targets,
        "positions": torch.tensor([list(range(5)) + list(range(7))] * 2),
        "doc_ids": torch.tensor([[0] * 5 + [1] * 7] * 2),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for chunked in (False, True):
        loss, n = next_token_loss(model, batch, chunked=chunked)
        logp = batch_target_logprobs(model, batch, chunked=chunked)
        results[chunked] = (loss, n, logp, torch.autograd.grad(loss + logp.sum(), params))
    (la, na, pa, ga), (lb, nb, pb, gb) = results[False], results[True]
    assert int(na) == int(nb) == 11 + 7
    torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pb, pa, atol=1e-5, rtol=1e-5)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
