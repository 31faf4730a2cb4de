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
    monkeypatch.setattr(decoder, "_flash_varlen_device", lambda t: True)  # the GPU's branch
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


# The config.json keys of released checkpoints (values as published; long lists shortened).
RELEASED = {
    "Llama-3.2-1B": dict(
        architectures=["LlamaForCausalLM"],
        attention_bias=False,
        attention_dropout=0.0,
        bos_token_id=128000,
        eos_token_id=128001,
        head_dim=64,
        hidden_act="silu",
        hidden_size=2048,
        initializer_range=0.02,
        intermediate_size=8192,
        max_position_embeddings=131072,
        mlp_bias=False,
        model_type="llama",
        num_attention_heads=32,
        num_hidden_layers=16,
        num_key_value_heads=8,
        pretraining_tp=1,
        rms_norm_eps=1e-05,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        rope_scaling=dict(
            factor=32.0,
            high_freq_factor=4.0,
            low_freq_factor=1.0,
            original_max_position_embeddings=8192,
            rope_type="llama3",
        ),
        torch_dtype="bfloat16",
        transformers_version="4.45.0.dev0",
        use_cache=True,
        vocab_size=128256,
    ),
    "SmolLM2-135M-Instruct": dict(
        architectures=["LlamaForCausalLM"],
        attention_bias=False,
        attention_dropout=0.0,
        bos_token_id=1,
        eos_token_id=2,
        head_dim=64,
        hidden_act="silu",
        hidden_size=576,
        initializer_range=0.041666666666666664,
        intermediate_size=1536,
        is_llama_config=True,
        max_position_embeddings=8192,
        mlp_bias=False,
        model_type="llama",
        num_attention_heads=9,
        num_hidden_layers=30,
        num_key_value_heads=3,
        pad_token_id=2,
        pretraining_tp=1,
        rms_norm_eps=1e-05,
        rope_interleaved=False,
        rope_scaling=None,
        rope_theta=100000,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        transformers_version="4.42.3",
        use_cache=True,
        vocab_size=49152,
        **{"transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16"}}},
    ),
    "Qwen2.5-0.5B": dict(
        architectures=["Qwen2ForCausalLM"],
        attention_dropout=0.0,
        bos_token_id=151643,
        eos_token_id=151643,
        hidden_act="silu",
        hidden_size=896,
        initializer_range=0.02,
        intermediate_size=4864,
        max_position_embeddings=32768,
        max_window_layers=24,
        model_type="qwen2",
        num_attention_heads=14,
        num_hidden_layers=24,
        num_key_value_heads=2,
        rms_norm_eps=1e-06,
        rope_theta=1000000.0,
        sliding_window=32768,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        transformers_version="4.40.1",
        use_cache=True,
        use_sliding_window=False,
        vocab_size=151936,
    ),
    "Qwen3-0.6B": dict(
        architectures=["Qwen3ForCausalLM"],
        attention_bias=False,
        attention_dropout=0.0,
        bos_token_id=151643,
        eos_token_id=151645,
        head_dim=128,
        hidden_act="silu",
        hidden_size=1024,
        initializer_range=0.02,
        intermediate_size=3072,
        max_position_embeddings=40960,
        max_window_layers=28,
        model_type="qwen3",
        num_attention_heads=16,
        num_hidden_layers=28,
        num_key_value_heads=8,
        rms_norm_eps=1e-06,
        rope_scaling=None,
        rope_theta=1000000,
        sliding_window=None,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        transformers_version="4.51.0",
        use_cache=True,
        use_sliding_window=False,
        vocab_size=151936,
    ),
    "gemma-3-1b-it": dict(
        architectures=["Gemma3ForCausalLM"],
        attention_bias=False,
        attention_dropout=0.0,
        attn_logit_softcapping=None,
        bos_token_id=2,
        cache_implementation="hybrid",
        eos_token_id=[1, 106],
        final_logit_softcapping=None,
        head_dim=256,
        hidden_activation="gelu_pytorch_tanh",
        hidden_size=1152,
        initializer_range=0.02,
        intermediate_size=6912,
        max_position_embeddings=32768,
        model_type="gemma3_text",
        num_attention_heads=4,
        num_hidden_layers=26,
        num_key_value_heads=1,
        pad_token_id=0,
        query_pre_attn_scalar=256,
        rms_norm_eps=1e-06,
        rope_local_base_freq=10000,
        rope_scaling=None,
        rope_theta=1000000,
        sliding_window=512,
        sliding_window_pattern=6,
        torch_dtype="bfloat16",
        transformers_version="4.50.0.dev0",
        use_cache=True,
        vocab_size=262144,
    ),
    "Phi-3.5-mini-instruct": dict(
        architectures=["Phi3ForCausalLM"],
        attention_bias=False,
        attention_dropout=0.0,
        auto_map={"AutoConfig": "configuration_phi3.Phi3Config"},
        bos_token_id=1,
        embd_pdrop=0.0,
        eos_token_id=32000,
        hidden_act="silu",
        hidden_size=3072,
        initializer_range=0.02,
        intermediate_size=8192,
        max_position_embeddings=131072,
        model_type="phi3",
        num_attention_heads=32,
        num_hidden_layers=32,
        num_key_value_heads=32,
        original_max_position_embeddings=4096,
        pad_token_id=32000,
        resid_pdrop=0.0,
        rms_norm_eps=1e-05,
        rope_theta=10000.0,
        sliding_window=262144,
        rope_scaling=dict(long_factor=[1.08] * 48, short_factor=[1.0] * 48, type="longrope"),
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
        transformers_version="4.43.3",
        use_cache=True,
        vocab_size=32064,
    ),
    "Phi-3-mini-4k-instruct": dict(
        architectures=["Phi3ForCausalLM"],
        attention_dropout=0.0,
        bos_token_id=1,
        embd_pdrop=0.0,
        eos_token_id=32000,
        hidden_act="silu",
        hidden_size=3072,
        initializer_range=0.02,
        intermediate_size=8192,
        max_position_embeddings=4096,
        model_type="phi3",
        num_attention_heads=32,
        num_hidden_layers=32,
        num_key_value_heads=32,
        original_max_position_embeddings=4096,
        pad_token_id=32000,
        resid_pdrop=0.0,
        rms_norm_eps=1e-05,
        rope_scaling=None,
        rope_theta=10000.0,
        sliding_window=2047,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
        transformers_version="4.40.2",
        use_cache=True,
        vocab_size=32064,
    ),
    "OLMo-2-0425-1B": dict(
        architectures=["Olmo2ForCausalLM"],
        attention_bias=False,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=100257,
        hidden_act="silu",
        hidden_size=2048,
        initializer_range=0.02,
        intermediate_size=8192,
        max_position_embeddings=4096,
        model_type="olmo2",
        num_attention_heads=16,
        num_hidden_layers=16,
        num_key_value_heads=16,
        pad_token_id=100277,
        rms_norm_eps=1e-06,
        rope_scaling=None,
        rope_theta=500000,
        tie_word_embeddings=False,
        torch_dtype="float32",
        transformers_version="4.48.3",
        use_cache=True,
        vocab_size=100352,
    ),
    "Mistral-7B-v0.1": dict(
        architectures=["MistralForCausalLM"],
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
        hidden_size=4096,
        initializer_range=0.02,
        intermediate_size=14336,
        max_position_embeddings=32768,
        model_type="mistral",
        num_attention_heads=32,
        num_hidden_layers=32,
        num_key_value_heads=8,
        rms_norm_eps=1e-05,
        rope_theta=10000.0,
        sliding_window=4096,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
        transformers_version="4.34.0.dev0",
        use_cache=True,
        vocab_size=32000,
    ),
}


def test_released_configs_are_read_without_refusal():
    cfgs = {k: config_from_hf_dict(v, f"{k}/config.json", k) for k, v in RELEASED.items()}
    llama = cfgs["Llama-3.2-1B"]
    assert llama.rope_scaling["rope_type"] == "llama3" and llama.tie_embeddings
    assert cfgs["SmolLM2-135M-Instruct"].rope_base == 100000.0
    qwen = cfgs["Qwen2.5-0.5B"]
    assert qwen.qkv_bias and not qwen.attn_out_bias and qwen.sliding_window is None
    assert cfgs["Qwen3-0.6B"].head_dim == 128 and cfgs["Qwen3-0.6B"].qk_norm == "head"
    gemma = cfgs["gemma-3-1b-it"]
    assert gemma.sliding_window == 512 and gemma.rope_local_base == 10000.0
    assert gemma.sliding_window_layers == [i for i in range(26) if (i + 1) % 6]
    assert gemma.attn_scale == 256**-0.5 and gemma.embedding_scale == 1152**0.5
    phi = cfgs["Phi-3.5-mini-instruct"]
    assert phi.rope_scaling["rope_type"] == "longrope" and phi.rope_scaling["factor"] == 32.0
    assert cfgs["Phi-3-mini-4k-instruct"].sliding_window == 2047
    assert cfgs["OLMo-2-0425-1B"].qk_norm == "full" and not cfgs["OLMo-2-0425-1B"].pre_norm
    assert cfgs["Mistral-7B-v0.1"].sliding_window == 4096
