"""format=gguf: tunelab's GGUF loader and transformers' read the file back.

Logit tolerances, measured here on the tiny Llama (seed 0, max |logit| about 1.3): F32 is exact
(0.0 in both readers), F16 2.9e-4, BF16 2.5e-3, Q8_0 7.7e-3. Asserted with about 3x headroom;
the SmolLM2 figures are in the slow test (test_export_smollm2.py).
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM

from tests.exporters.conftest import TEXTS
from tunelab.data.prompts import get_style
from tunelab.exporters import export_model
from tunelab.exporters.chat_templates import chat_templates
from tunelab.models.loaders.gguf import chat_template_from_gguf, clear_cache, load_gguf

TOLERANCE = {"f32": 1e-5, "f16": 1e-3, "bf16": 1e-2, "q8_0": 2.5e-2}


def _logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "bf16", "q8_0"])
def test_llama_gguf_reads_back_in_tunelab_and_transformers(gguf_type, tiny_ckpt, tmp_path):
    model, tok, ckpt = tiny_ckpt("tiny-llama", style="chatml")
    out = export_model(str(ckpt), "gguf", tmp_path / "g", gguf_type=gguf_type)
    path = out / "model.gguf"
    x = torch.randint(0, model.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    ref = _logits(model, x)
    clear_cache()
    back, back_tok = load_gguf(path)
    diff = (_logits(back, x) - ref).abs().max().item()
    assert diff <= TOLERANCE[gguf_type]
    if gguf_type == "f32":
        assert diff == 0.0
        state = back.state_dict()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    hf = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert (hf.eval()(x).logits - ref).abs().max().item() <= TOLERANCE[gguf_type]
    for text in TEXTS:
        assert back_tok.encode(text) == tok.encode(text)
    assert back_tok.eos_id == tok.eos_id and set(back_tok.stop_ids) == set(tok.stop_ids)
    assert chat_template_from_gguf(path) == chat_templates(get_style("chatml")).jinja
    types = {t.tensor_type.name for t in GGUFReader(path).tensors}
    assert types == ({"F32"} if gguf_type == "f32" else {"F32", gguf_type.upper()})


def test_gpt2_gguf_reads_back_in_transformers(tiny_ckpt, tmp_path):
    """llama.cpp's gpt2 architecture; transformers sizes GPT-2's positions from n_positions (1024
    by default) and ignores GGUF's context_length, so the model here has 1024 positions."""
    model, _, ckpt = tiny_ckpt("tiny-gpt2", context_length=1024)
    out = export_model(str(ckpt), "gguf", tmp_path / "g", gguf_type="f32")
    names = {t.name for t in GGUFReader(out / "model.gguf").tensors}
    assert {"token_embd.weight", "position_embd.weight", "blk.1.attn_qkv.bias"} <= names
    x = torch.randint(0, model.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert (hf.eval()(x).logits - model(x)).abs().max().item() <= 1e-5
