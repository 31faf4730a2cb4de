"""A tied embedding's sparse gradient on the CPU (Decoder.embed): the same gradient, dense."""

from __future__ import annotations

import pytest
import torch

from tunelab.losses import linear_cross_entropy, masked_cross_entropy
from tunelab.models import load_pretrained
from tunelab.tasks.base import next_token_loss


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 12), generator=g)
    ids[1, 3] = ids[0, 5] = ids[1, 7]  # an id seen three times: its row sums three gradients
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    return {"input_ids": ids, "targets": targets}


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("source", ["tiny-gpt2", "tiny-llama"])
def test_tied_embedding_gradient_is_dense_and_equals_the_dense_path(source, chunked):
    model = load_pretrained(source, seed=0).model.train()
    w = model.wte.weight
    if model.lm_head.weight is not w:
        pytest.skip(f"{source} does not tie its embeddings")
    batch = _batch(model.cfg.vocab_size)
    # the dense path: hidden states not marked as followed by the head
    hidden = model.hidden_states(batch["input_ids"])
    assert model.wte.sparse is False
    loss, _ = (
        linear_cross_entropy(hidden, w, batch["targets"])
        if chunked
        else masked_cross_entropy(model.logits(hidden), batch["targets"])
    )
    loss.backward()
    dense, w.grad = w.grad.clone(), None

    loss, _ = next_token_loss(model, batch, chunked)
    assert model.wte.sparse is True
    loss.backward()
    assert w.grad.layout == torch.strided
    torch.testing.assert_close(w.grad, dense, rtol=0, atol=1e-7)


def test_hidden_states_alone_and_no_grad_keep_the_dense_embedding():
    model = load_pretrained("tiny-gpt2", seed=0).model.train()
    ids = _batch(model.cfg.vocab_size)["input_ids"]
    model.hidden_states(ids).sum().backward()  # a reward head, not the LM head, follows
    assert model.wte.sparse is False and model.wte.weight.grad.layout == torch.strided
    with torch.no_grad():
        model(ids)
    assert model.wte.sparse is False
