"""format=hf for the Llama-layout families beyond Llama (one table entry each): transformers
gives the same logits, tunelab reads the folder back into the same Config and weights."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.exporters.conftest import save_checkpoint, tiny_model, tiny_tokenizer
from tunelab.exporters import export_model
from tunelab.models import load_pretrained

FAMILIES = {
    # model_type: Config traits (tiny-llama shape: 2 layers, 4 heads / 2 kv heads, width 64)
    "llama": dict(qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=False),
    "mistral": dict(sliding_window=5),
    "qwen2": dict(qkv_bias=True, attn_out_bias=False, sliding_window=5, sliding_window_layers=[1]),
    "qwen3": dict(qk_norm="head", head_dim=32),
}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_hf_export_matches_transformers(model_type, tmp_path):
    model = tiny_model("tiny-llama", vocab_size=512, **FAMILIES[model_type])
    ckpt = save_checkpoint(model, tiny_tokenizer(), "chatml", tmp_path / "m.ckpt")
    out = export_model(str(ckpt), "hf", tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    x = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(5))
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(x)
        assert (hf(x).logits - ref).abs().max().item() <= 1e-4
        back = load_pretrained(str(out)).model
        assert torch.equal(back(x), ref)
    for key, value in FAMILIES[model_type].items():
        assert getattr(back.cfg, key) == value
    refusal = {
        "llama": "no gguf export for a llama-family model with",
        "mistral": r"cannot express sliding_window=5 \(no GGUF architecture keeps it here",
        "qwen2": r"cannot express sliding_window=5 \(GGUF's qwen2/qwen3 have none\)",
    }
    if model_type in refusal:
        with pytest.raises(ValueError, match=refusal[model_type]):
            export_model(str(ckpt), "gguf", tmp_path / "g")
        assert not (tmp_path / "g").exists()


@pytest.mark.parametrize(
    ("model_type", "traits"),
    [
        ("qwen2", dict(qkv_bias=True, attn_out_bias=False)),
        ("qwen3", dict(qk_norm="head", head_dim=128)),
    ],
)
def test_family_gguf_reads_back(model_type, traits, tmp_path):
    """tunelab reads it back bit for bit; transformers' GGUF reader too (its qwen3 reader ignores
    attention.key_length and takes Qwen3's default head_dim of 128, hence that head size)."""
    from gguf import GGUFReader

    from tunelab.models.loaders.gguf import clear_cache, load_gguf

    model = tiny_model("tiny-llama", vocab_size=512, **traits)
    ckpt = save_checkpoint(model, tiny_tokenizer(), "chatml", tmp_path / "m.ckpt")
    out = export_model(str(ckpt), "gguf", tmp_path / "g", gguf_type="f32")
    reader = GGUFReader(out / "model.gguf")
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == model_type
    x = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(5))
    clear_cache()
    back, _ = load_gguf(out / "model.gguf")
    hf = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(back(x), ref)
        assert (hf.eval()(x).logits - ref).abs().max().item() <= 1e-4


def test_traits_no_entry_writes_are_refused(tmp_path):
    model = tiny_model(
        "tiny-llama", vocab_size=512, qkv_bias=True, attn_out_bias=False, mlp_bias=True
    )
    ckpt = save_checkpoint(model, tiny_tokenizer(), "chatml", tmp_path / "m.ckpt")
    with pytest.raises(
        ValueError, match="the llama export cannot express qkv_bias=True with attn_out_bias=False"
    ):
        export_model(str(ckpt), "hf", tmp_path / "hf")


@pytest.mark.parametrize("kind", ["llama2", "gemma", "phi3"])
def test_sentencepiece_tokenizer_is_written_as_tunelab_runs_it(kind, tmp_path):
    """A `tokenizers`-library tokenizer (Llama 2, Gemma 3, Phi-3 kinds) keeps its own pipeline."""
    from transformers import AutoTokenizer

    from tests.exporters.conftest import TEXTS
    from tests.models.sp_fixtures import sp_folder
    from tunelab.models.loaders.hf_tokenizer import tokenizer_from_hf_json

    tok = tokenizer_from_hf_json(sp_folder(kind, tmp_path / "sp"))
    assert tok.kind == "tokenizers"
    model = tiny_model("tiny-llama", vocab_size=tok.vocab_size)
    ckpt = save_checkpoint(model, tok, "chatml", tmp_path / "m.ckpt")
    out = export_model(str(ckpt), "hf", tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(out)
    back = load_pretrained(str(out)).tokenizer
    chat = "<|user|>\nHi there<|end|>\n" if kind == "phi3" else "<start_of_turn>user\nHi\n"
    for text in [*TEXTS, chat]:
        assert hf_tok(text)["input_ids"] == tok.encode(text) == back.encode(text)
    assert hf_tok.eos_token_id == tok.eos_id  # GGUF: test_export_spm_gguf.py
