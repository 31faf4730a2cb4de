"""Token streaming for tunelab.serve: the per-token callback of `generate`, incremental UTF-8
decoding, stop strings held back across pieces, and both protocols streaming as tokens arrive."""

from __future__ import annotations

import pytest
import torch

from tunelab.models import load_pretrained
from tunelab.models.generation import generate, sample_next

PROMPT = [464, 2068, 7586, 21831]


@pytest.fixture(scope="module")
def loaded():
    return load_pretrained("tiny-gpt2", seed=1)


def test_on_token_sees_every_token_and_can_stop(loaded):
    full = generate(loaded.model, [PROMPT], max_new_tokens=6)[0]
    seen: list[int] = []
    assert generate(loaded.model, [PROMPT], max_new_tokens=6, on_token=seen.append)[0] == full
    assert seen == full and len(full) == 6
    # Returning True stops right after that token: 3 tokens generated, the same 3.
    seen.clear()
    out = generate(
        loaded.model,
        [PROMPT],
        max_new_tokens=6,
        on_token=lambda t: seen.append(t) or len(seen) == 3,
    )[0]
    assert out == seen == full[:3]
    with pytest.raises(ValueError, match="on_token streams one prompt, got 2"):
        generate(loaded.model, [PROMPT, PROMPT], on_token=seen.append)


def test_tiny_temperature_samples_the_argmax_without_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0], [50.0, -4.0, 49.0]])
    for temperature in (1e-300, 5e-324, 1e-30):
        gen = torch.Generator().manual_seed(0)
        assert sample_next(logits, temperature, generator=gen).tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    assert sample_next(logits, 1e-300, top_k=2, top_p=0.5, generator=gen).tolist() == [1, 0]
