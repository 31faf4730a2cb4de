"""Done-when of issue 18: a SmolLM2-135M-Instruct checkpoint (the demo's model, real weights from
its GGUF) exports to all three formats and each loads back.

Measured here (CPU, fp32, 2 x 24-token texts, max |logit| 40.1): HF folder in transformers
max |diff| <= 1e-4 and bit-identical back in tunelab; GGUF F32 bit-identical in tunelab, <= 1e-4
in transformers' GGUF reader. GGUF Q8_0 against fp32 (all matrices Q8_0, the tied embedding /
LM head included): max |logit diff| 1.31, mean 0.19, largest probability change 0.059, the same
top-1 token at 47 of 48 positions; asserted: max < 2.0, mean < 0.3, top-1 >= 95%.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.exporters.conftest import TEXTS, save_checkpoint
from tests.exporters.gotemplate import ollama_prompt, parse_modelfile
from tunelab.data.prompts import get_style
from tunelab.data.records import Record
from tunelab.exporters import export_model
from tunelab.exporters.chat_templates import record_messages
from tunelab.models import load_pretrained
from tunelab.models.loaders.gguf import clear_cache, load_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_ckpt(tmp_path_factory):
    loaded = load_pretrained("smollm2-135m")
    path = tmp_path_factory.mktemp("ckpt") / "best.ckpt"
    save_checkpoint(loaded.model, loaded.tokenizer, "smollm2", path)
    return loaded.model.eval(), loaded.tokenizer, path


def _batch(tok):
    ids = [tok.encode(t)[:24] for t in TEXTS[:2]]
    return torch.tensor(ids)


def test_smollm2_all_three_formats(smollm2_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, ckpt = smollm2_ckpt
    x = _batch(tok)
    with torch.no_grad():
        ref = model(x)
    style = get_style("smollm2")
    record = Record(instruction="What is the capital of France?")

    hf_dir = export_model(str(ckpt), "hf", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_diff = (hf(x).logits - ref).abs().max().item()
    del hf
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    assert all(hf_tok(t)["input_ids"] == tok.encode(t) for t in TEXTS)
    chat = hf_tok.apply_chat_template(
        record_messages(record, style), tokenize=False, add_generation_prompt=True
    )
    assert chat == style.prompt(record)
    back = load_pretrained(str(hf_dir))
    with torch.no_grad():
        assert torch.equal(back.model(x), ref)
    del back

    f32 = export_model(str(ckpt), "gguf", tmp_path / "f32", gguf_type="f32")
    clear_cache()
    g, g_tok = load_gguf(f32 / "model.gguf")
    with torch.no_grad():
        assert torch.equal(g(x), ref)
    assert all(g_tok.encode(t) == tok.encode(t) for t in TEXTS)
    del g
    hg = AutoModelForCausalLM.from_pretrained(f32, gguf_file="model.gguf", dtype=torch.float32)
    with torch.no_grad():
        hg_diff = (hg.eval()(x).logits - ref).abs().max().item()
    del hg

    ol = export_model(str(ckpt), "ollama", tmp_path / "ol", gguf_type="q8_0")
    modelfile = parse_modelfile((ol / "Modelfile").read_text())
    prompt = ollama_prompt(
        modelfile["TEMPLATE"], modelfile.get("SYSTEM"), record_messages(record, style)
    )
    assert prompt == style.prompt(record)
    clear_cache()
    q, _ = load_gguf(ol / "model.gguf")
    with torch.no_grad():
        q_logits = q(x)
    q_diff = (q_logits - ref).abs().max().item()
    q_mean = (q_logits - ref).abs().mean().item()
    top1 = (q_logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(
        json.dumps(
            {
                "hf_transformers_max_diff": hf_diff,
                "gguf_f32_transformers_max_diff": hg_diff,
                "q8_0_max_diff": q_diff,
                "q8_0_mean_diff": q_mean,
                "q8_0_top1_agreement": top1,
                "logit_scale": ref.abs().max().item(),
            }
        )
    )
    assert hf_diff <= 1e-4 and hg_diff <= 1e-4
    assert q_diff < 2.0 and q_mean < 0.3 and top1 >= 0.95
