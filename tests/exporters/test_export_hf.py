"""format=hf: transformers loads the folder with the same logits and ids; tunelab loads it back
bit-identically."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.exporters.conftest import TEXTS
from tunelab.data.prompts import get_style
from tunelab.data.records import Record
from tunelab.exporters import export_model
from tunelab.exporters.chat_templates import record_messages
from tunelab.models import load_pretrained


@pytest.mark.parametrize(("preset", "gpt2"), [("tiny-llama", False), ("tiny-gpt2", True)])
def test_hf_folder_matches_tunelab_in_transformers_and_back(preset, gpt2, tiny_ckpt, tmp_path):
    """tiny-gpt2 carries GPT-2's real 50,257-token tokenizer (tiktoken -> tokenizer.json)."""
    model, tok, ckpt = tiny_ckpt(preset, style="chatml", gpt2=gpt2)
    out = export_model(str(ckpt), "hf", tmp_path / "hf")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tunelab_export.json",
    ]
    x = torch.randint(0, model.cfg.vocab_size, (2, 13), generator=torch.Generator().manual_seed(1))
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(x)
        assert (hf(x).logits - ref).abs().max().item() <= 1e-4
    hf_tok = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == tok.encode(text)
    style = get_style("chatml")
    record = Record(instruction="Say hi.", system="Be brief.", history=[("Hello", "Hi!")])
    rendered = hf_tok.apply_chat_template(
        record_messages(record, style), tokenize=False, add_generation_prompt=True
    )
    assert rendered == style.prompt(record)
    assert hf_tok.eos_token_id == tok.eos_id
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == (tok.eos_id if gpt2 else tok.stop_ids)  # + <|im_end|>

    back = load_pretrained(str(out))
    state, original = back.model.state_dict(), model.state_dict()
    assert sorted(state) == sorted(original)
    assert all(torch.equal(state[k], original[k]) for k in original)
    with torch.no_grad():
        assert torch.equal(back.model(x), ref)
    for text in TEXTS:
        assert back.tokenizer.encode(text) == tok.encode(text)


def test_hf_sharded_weights_with_index(tiny_ckpt, tmp_path):
    model, _, ckpt = tiny_ckpt("tiny-llama")
    out = export_model(str(ckpt), "hf", tmp_path / "hf", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert all((out / s).is_file() for s in shards)
    n_params = sum(t.numel() for k, t in model.state_dict().items() if k != "lm_head.weight")
    assert index["metadata"]["total_size"] == 4 * n_params
    x = torch.arange(20).reshape(2, 10)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() <= 1e-4
        assert torch.equal(load_pretrained(str(out)).model(x), model(x))


def test_hf_bfloat16_weights(tiny_ckpt, tmp_path):
    model, _, ckpt = tiny_ckpt("tiny-llama")
    out = export_model(str(ckpt), "hf", tmp_path / "hf", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    w = weights["model.layers.0.mlp.down_proj.weight"]
    assert torch.equal(w, model.blocks[0].mlp.down.weight.to(torch.bfloat16))
