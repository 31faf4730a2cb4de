"""Strict, honest loading of Hugging Face folders: refusals in one line, shards, dtypes, windows."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import tunelab.models.decoder as decoder
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.generation import generate
from tunelab.models.loaders.hf import load_hf_folder
from tunelab.models.loaders.hf_config import config_from_hf_dict

transformers = pytest.importorskip("transformers")

SMALL = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small Qwen2 folder (biases, tied embeddings) saved by transformers."""
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**SMALL, tie_word_embeddings=False)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(path)
    return path, model.float().eval()


def _copy(src, dst, edit_config=None, edit_state=None):
    dst.mkdir()
    hf = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(hf)
    (dst / "config.json").write_text(json.dumps(hf))
    state = load_file(str(src / "model.safetensors"))
    if edit_state:
        edit_state(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_unknown_computation_key_is_refused_naming_key_and_value(folder, tmp_path):
    path, _ = folder
    bad = _copy(path, tmp_path / "k", lambda hf: hf.update(attn_temperature=0.7))
    with pytest.raises(ValueError, match=r"config.json: attn_temperature=0.7 is not supported"):
        load_hf_folder(bad)


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0}, 'rope_type="dynamic"'),
        ("hidden_act", "relu", 'hidden_act="relu" is not supported'),
        ("attention_dropout", 0.1, "attention_dropout=0.1 is not supported"),
        ("layer_types", ["full_attention", "chunked_attention"], "chunked_attention"),
        ("partial_rotary_factor", 0.5, "partial_rotary_factor=0.5"),
    ],
)
def test_values_tunelab_cannot_reproduce_are_refused(folder, tmp_path, key, value, pattern):
    path, _ = folder
    bad = _copy(path, tmp_path / "v", lambda hf: hf.update({key: value}))
    with pytest.raises(ValueError, match=pattern):
        load_hf_folder(bad)


def test_unknown_model_type_and_gemma_attention_softcap_are_refused():
    with pytest.raises(ValueError, match="unsupported model_type 'gemma2'"):
        config_from_hf_dict({"model_type": "gemma2"}, "x/config.json", "x")
    gemma = dict(SMALL, model_type="gemma3_text", attn_logit_softcapping=50.0)
    with pytest.raises(ValueError, match="attn_logit_softcapping=50.0 is not supported"):
        config_from_hf_dict(gemma, "x/config.json", "x")


def test_extra_and_missing_tensors_are_refused_naming_them(folder, tmp_path):
    path, _ = folder
    extra = _copy(
        path, tmp_path / "e", edit_state=lambda s: s.update({"model.extra.weight": torch.ones(2)})
    )
    with pytest.raises(ValueError, match=r"tensor 'model.extra.weight' has no place"):
        load_hf_folder(extra)
    missing = _copy(
        path, tmp_path / "m", edit_state=lambda s: s.pop("model.layers.1.self_attn.k_proj.bias")
    )
    with pytest.raises(ValueError, match=r"lack tensor 'layers.1.self_attn.k_proj.bias'"):
        load_hf_folder(missing)
    untied = _copy(path, tmp_path / "t", lambda hf: hf.update(tie_word_embeddings=True))
    with pytest.raises(ValueError, match=r"'lm_head.weight' differs from the embedding"):
        load_hf_folder(untied)


def test_sharded_bf16_folder_loads_into_fp32_and_bf16(folder, tmp_path):
    path, hf_model = folder
    sharded = tmp_path / "sharded"
    hf_model.to(torch.bfloat16).save_pretrained(sharded, max_shard_size="20KB")
    hf_model.float()
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    ours32 = load_hf_folder(sharded)
    ours16 = load_hf_folder(sharded, dtype=torch.bfloat16)
    assert ours32.wte.weight.dtype == torch.float32 and ours16.wte.weight.dtype == torch.bfloat16
    reference = transformers.AutoModelForCausalLM.from_pretrained(sharded, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ours32(ids), reference(ids).logits, atol=1e-4, rtol=0)
        for (name, a), b in zip(
            ours32.state_dict().items(), ours16.state_dict().values(), strict=True
        ):
            assert torch.equal(a.to(torch.bfloat16), b), name


def test_batched_left_padded_generation_with_a_sliding_window_equals_transformers(tmp_path):
    torch.manual_seed(3)
    cfg = transformers.MistralConfig(**SMALL, sliding_window=8)
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.eval().save_pretrained(tmp_path / "m")
    ours = load_hf_folder(tmp_path / "m")
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (20, 13)]
    ids = torch.zeros(2, 20, dtype=torch.long)
    mask = torch.zeros(2, 20, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, 20 - len(p) :], mask[i, 20 - len(p) :] = torch.tensor(p), 1
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert generate(ours, prompts, max_new_tokens=10) == out[:, 20:].tolist()


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), scale=None):
    """Per-span SDPA with the flash window convention: keys in [i - left, i]."""
    left = window_size[0]
    out = torch.empty_like(q)
    cu = cu_q.tolist()
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        n = b - a
        i = torch.arange(n)
        allowed = i[None, :] <= i[:, None]
        if left >= 0:
            allowed &= i[None, :] >= i[:, None] - left
        y = torch.nn.functional.scaled_dot_product_attention(
            *(t[a:b].transpose(0, 1) for t in (q, k, v)), attn_mask=allowed, scale=scale
        )
        out[a:b] = y.transpose(0, 1)
    return out


def test_packed_rows_through_the_varlen_path_keep_windows_and_scale(monkeypatch):
    torch.manual_seed(0)
    cfg = Config(
        family="llama",
        vocab_size=64,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        intermediate_size=48,
        sliding_window=3,
        sliding_window_layers=[0],
        attn_scale=0.3,
    )
    model = Decoder(cfg).eval()
    ids = torch.randint(0, 64, (2, 10))
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]])
    doc_ids = torch.tensor([[0] * 6 + [1] * 4, [2] * 8 + [-1] * 2])
    masked = model(ids, positions=positions, doc_ids=doc_ids)
    monkeypatch.setattr(decoder, "varlen_attn", _reference_varlen)
    monkeypatch.setattr(decoder, "_VARLEN_PARAMS", {"window_size", "scale"})
    monkeypatch.setattr(Decoder, "_use_varlen", lambda *a: True)
    varlen = model(ids, positions=positions, doc_ids=doc_ids)
    real = doc_ids >= 0
    torch.testing.assert_close(varlen[real], masked[real], atol=1e-5, rtol=1e-5)


def test_pytorch_model_bin_folder_loads_like_safetensors(folder, tmp_path):
    path, _ = folder
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((path / "config.json").read_text())
    torch.save(load_file(str(path / "model.safetensors")), binary / "pytorch_model.bin")
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(load_hf_folder(binary)(ids), load_hf_folder(path)(ids))
