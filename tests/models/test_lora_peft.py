"""Adapters in PEFT's format: `peft` puts them on the transformers model, logits equal tunelab's."""

from __future__ import annotations

import json

import peft  # test-only dependencies ([dev]): the references
import pytest
import torch
import transformers

from tests.models.test_lora import randomise_b
from tunelab.models.loaders.hf import load_hf_folder
from tunelab.models.lora import apply_lora
from tunelab.models.lora_io import PEFT_CONFIG, PEFT_WEIGHTS, save_peft_adapter


def hf_model(kind: str, tie: bool):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=None
        )
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


CASES = [
    ("gpt2", True, ["all-linear", "lm_head"]),
    ("gpt2", True, ["q", "v"]),  # two of three slices of c_attn
    ("gpt2", True, ["k", "mlp_out"]),
    ("llama", False, ["all-linear", "lm_head"]),
    ("llama", True, ["q", "v", "mlp_gate"]),
]


@pytest.mark.parametrize(("kind", "tie", "targets"), CASES, ids=lambda v: str(v))
def test_peft_loads_the_adapters_onto_the_transformers_model_with_equal_logits(
    tmp_path, kind, tie, targets
):
    reference = hf_model(kind, tie)
    reference.save_pretrained(tmp_path / "base")
    ours = load_hf_folder(tmp_path / "base")
    apply_lora(ours, {"rank": 4, "alpha": 12.0, "targets": targets}, base={"source": "base"})
    randomise_b(ours, std=0.2)
    folder = save_peft_adapter(ours, tmp_path / "adapter")
    assert (folder / PEFT_WEIGHTS).is_file()
    config = json.loads((folder / PEFT_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 12.0

    model = peft.PeftModel.from_pretrained(reference, str(folder)).eval()
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).logits
        got = ours.eval()(x)
    assert (got - expected).abs().max() < 1e-5
    # and the adapters are not a no-op: switching them off in PEFT changes the logits
    with torch.no_grad(), model.disable_adapter():
        assert (model(x).logits - expected).abs().max() > 1e-3


def test_families_without_a_name_map_are_refused():
    from tunelab.models import load_pretrained
    from tunelab.models.lora_io import peft_adapter

    model = load_pretrained("tiny-gpt2", seed=0).model
    with pytest.raises(ValueError, match="no LoRA adapters"):
        peft_adapter(model)
