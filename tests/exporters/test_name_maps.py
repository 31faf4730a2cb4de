"""The export direction of the HF name maps inverts the load direction exactly."""

from __future__ import annotations

import torch

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.loaders.hf import (
    gpt2_to_tunelab,
    llama_to_tunelab,
    tunelab_to_gpt2,
    tunelab_to_llama,
)


def test_llama_and_gpt2_maps_round_trip_bit_identically() -> None:
    for preset, fwd, inv in (
        ("tiny-llama", llama_to_tunelab, tunelab_to_llama),
        ("tiny-gpt2", gpt2_to_tunelab, tunelab_to_gpt2),
    ):
        torch.manual_seed(0)
        model = Decoder(Config.from_preset(preset))
        state = model.state_dict()
        back = fwd(inv(state, model.cfg), model.cfg)
        assert sorted(back) == sorted(state)
        assert all(torch.equal(back[k], state[k]) for k in state)


def test_llama_map_splits_grouped_qkv() -> None:
    cfg = Config.from_preset("tiny-llama")  # 4 query heads, 2 key/value heads of 16
    hf = tunelab_to_llama(Decoder(cfg).state_dict(), cfg)
    assert hf["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    assert hf["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    assert "lm_head.weight" not in hf  # tied: HF folders leave it out
