"""format=hf and format=gguf for Gemma 3 (text), OLMo 2 and Phi-3.

Each model starts as a tiny random transformers model of the family (configs from
tests/models/test_families.py, with every trait on: sliding windows shorter than the sequence,
RoPE scaling, partial rotary, softcapping, attention biases), loaded into tunelab, saved as a
tunelab checkpoint and exported. HF: transformers loads the folder and gives tunelab's logits
(1e-5) and ids, tunelab reads it back bit for bit. GGUF (F32): tunelab's GGUF loader reads the file back
with tunelab's logits (1e-5; Gemma's norms travel as 1 + w, so not bit for bit), and what
llama.cpp's gemma3 / phi3 / olmo2 cannot express is refused in one line.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from gguf import GGUFReader

from tests.exporters.conftest import TEXTS, save_checkpoint, tiny_tokenizer
from tests.models.test_families import FAMILIES as HF_FAMILIES
from tests.models.test_families import SMALL
from tunelab.exporters import export_model
from tunelab.models import load_pretrained
from tunelab.models.loaders.gguf import clear_cache, load_gguf
from tunelab.models.loaders.hf import load_hf_folder

VOCAB = 512  # the tiny tokenizer's 459 tokens, embeddings padded
IDS = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(7))

# Configs llama.cpp's architectures can express (GGUF): gemma3 with its fixed layer pattern
# (5 sliding, 1 global), local RoPE base 10000 and head_dim ** -0.5 scale; phi3 without a
# window shorter than the context, LongRoPE or partial rotary; olmo2 without biases (a tied head: written out in full).
GGUF_CONFIGS = {
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(
            num_hidden_layers=6,
            head_dim=32,
            query_pre_attn_scalar=32,
            sliding_window=16,
            rope_parameters={
                "full_attention": dict(rope_type="linear", factor=4.0, rope_theta=100000.0),
                "sliding_attention": dict(rope_type="default", rope_theta=10000.0),
            },
            tie_word_embeddings=False,
        ),
    ),
    # a window as long as the context changes nothing (llama.cpp ignores Phi-3's); without it
    # the model is a plain Llama and exports as llama
    "phi3": ("Phi3Config", dict(sliding_window=512, tie_word_embeddings=False)),
    "olmo2": ("Olmo2Config", dict(tie_word_embeddings=True)),
}


def _hf_model(cls_name: str, extra: dict, seed: int = 0):
    cfg = getattr(transformers, cls_name)(**{**SMALL, **extra, "vocab_size": VOCAB})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # norms and biases away from their identity values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() == 1 else 0.05))
    return model.float().eval()


def _checkpoint(hf, tmp_path):
    """(tunelab model, checkpoint path) of a transformers model, through an HF folder."""
    hf.save_pretrained(tmp_path / "src")
    model = load_hf_folder(tmp_path / "src")
    return model, save_checkpoint(model, tiny_tokenizer(), "chatml", tmp_path / "m.ckpt")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("model_type", ["gemma3_text", "olmo2", "phi3"])
def test_hf_export_matches_transformers_and_reads_back(model_type, tmp_path):
    hf = _hf_model(*HF_FAMILIES[model_type])
    model, ckpt = _checkpoint(hf, tmp_path)
    out = export_model(str(ckpt), "hf", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model_type
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        ref = model(IDS)
        assert _max_diff(ref, hf(IDS).logits) <= 1e-4  # the loader's own parity, for scale
        assert _max_diff(exported.eval()(IDS).logits, ref) <= 1e-5
        back = load_pretrained(str(out)).model
        assert torch.equal(back(IDS), ref)
    assert back.cfg.to_dict() | {"name": None, "tokenizer": None} == model.cfg.to_dict() | {
        "name": None,
        "tokenizer": None,
    }
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == tiny_tokenizer().encode(text)
    if model_type == "phi3":  # q/k/v and gate/up stay fused, as in Phi-3 folders
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            names = set(f.keys())
        assert "model.layers.0.self_attn.qkv_proj.weight" in names
        assert "model.layers.0.mlp.gate_up_proj.weight" in names


GGUF_REFUSALS = {
    # the test_families configs: HF-only traits, each named in the one-line refusal
    "gemma3_text": r"gemma3_text export cannot express sliding-window layers \[0, 2\].*"
    r"rope_local_base=5000.0.*attn_scale=.*final_logit_softcapping=3.0",
    "phi3": r"phi3 export cannot express sliding_window=24 \(no GGUF .*disables.*LongRoPE.*"
    r"rotary_fraction=0.5",
    "olmo2": r"olmo2 export cannot express attention/MLP biases",
}


@pytest.mark.parametrize("model_type", ["gemma3_text", "olmo2", "phi3"])
def test_gguf_refuses_what_llama_cpp_cannot_express(model_type, tmp_path):
    _, ckpt = _checkpoint(_hf_model(*HF_FAMILIES[model_type]), tmp_path)
    with pytest.raises(ValueError, match=GGUF_REFUSALS[model_type]) as err:
        export_model(str(ckpt), "gguf", tmp_path / "g")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "g").exists()


GGUF_ARCH = {"gemma3_text": "gemma3", "phi3": "phi3", "olmo2": "olmo2"}
# max |logit change| measured here (logits up to 2), Gemma 3 / OLMo 2 / Phi-3: f16 3.2e-3 /
# 2.7e-3 / 1.3e-3, q8_0 8.3e-2 / 7.4e-2 / 2.6e-2; asserted with about 3x headroom
QUANTIZED = {"f16": 1e-2, "q8_0": 0.25}


@pytest.mark.parametrize("model_type", list(GGUF_CONFIGS))
def test_gguf_export_reads_back_with_equal_logits(model_type, tmp_path):
    hf = _hf_model(*GGUF_CONFIGS[model_type])
    model, ckpt = _checkpoint(hf, tmp_path)
    out = export_model(str(ckpt), "gguf", tmp_path / "g", gguf_type="f32")
    path = out / "model.gguf"
    reader = GGUFReader(path)
    arch = GGUF_ARCH[model_type]
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == arch
    tensors = {t.name: t for t in reader.tensors}
    clear_cache()
    back, _ = load_gguf(path)
    with torch.no_grad():
        ref = model(IDS)
        diff = _max_diff(back(IDS), ref)
    assert diff <= 1e-5, diff
    assert back.cfg.n_layer == model.cfg.n_layer
    state = model.state_dict()
    if arch == "gemma3":  # llama.cpp's Gemma norms: 1 + w; windows and RoPE as llama.cpp fixes
        norm = torch.from_numpy(tensors["blk.0.attn_q_norm.weight"].data.copy())
        assert torch.equal(norm, state["blocks.0.attn.q_norm.weight"] + 1.0)
        assert back.cfg.sliding_window_layers == [0, 1, 2, 3, 4]
        assert back.cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    if arch == "phi3":  # fused as llama.cpp's phi3 reads them
        assert tensors["blk.0.attn_qkv.weight"].shape.tolist() == [64, 128]
        assert tensors["blk.0.ffn_up.weight"].shape.tolist() == [64, 2 * 96]
        assert torch.equal(
            back.state_dict()["blocks.1.mlp.gate.weight"], state["blocks.1.mlp.gate.weight"]
        )
    for gguf_type, tolerance in QUANTIZED.items():
        out = export_model(str(ckpt), "gguf", tmp_path / gguf_type, gguf_type=gguf_type)
        clear_cache()
        quantized, _ = load_gguf(out / "model.gguf")
        with torch.no_grad():
            assert _max_diff(quantized(IDS), ref) <= tolerance
    if arch == "olmo2":  # llama.cpp's olmo2 needs output.weight: the tied head written out
        assert "output.weight" in tensors
        assert all(
            torch.equal(back.state_dict()[k], v) for k, v in state.items() if k != "lm_head.weight"
        )


def test_files_that_read_back_as_another_model_are_refused(tmp_path):
    """The safety net behind the entries' own checks: config.json and GGUF metadata are read back
    by tunelab's readers, and a field that comes back different is refused, naming it."""
    import dataclasses

    from tunelab.exporters.families import family_export
    from tunelab.exporters.gguf import check_read_back as gguf_read_back
    from tunelab.exporters.hf import check_read_back as hf_read_back

    model, ckpt = _checkpoint(_hf_model(*GGUF_CONFIGS["gemma3_text"]), tmp_path)
    cfg = model.cfg
    hf_read_back(family_export(cfg, "hf").hf_config(cfg), cfg, "gemma3_text")  # the same model
    eps = dataclasses.replace(cfg, norm_eps=1e-5)
    config = family_export(eps, "hf").hf_config(eps)
    del config["rms_norm_eps"]  # Gemma 3's default, 1e-6, would be read
    with pytest.raises(ValueError, match=r"cannot express norm_eps=1e-05 \(it reads back as 1e-06"):
        hf_read_back(config, eps, "gemma3_text")
    out = export_model(str(ckpt), "gguf", tmp_path / "g", gguf_type="f32")
    gguf_read_back(out / "model.gguf", cfg, "gemma3")
    other = dataclasses.replace(cfg, rope_local_base=5000.0)
    with pytest.raises(ValueError, match=r"gemma3 metadata cannot express rope_local_base=5000.0"):
        gguf_read_back(out / "model.gguf", other, "gemma3")


LLAMA_SCALING = {
    # Llama 3.1/3.2's RoPE (a released parameter set: GGUF carries it as rope_freqs), linear, YaRN
    "llama3": dict(
        rope_type="llama3",
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    ),
    "linear": dict(rope_type="linear", factor=4.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=128),
}


@pytest.mark.parametrize("kind", list(LLAMA_SCALING))
def test_llama_rope_scaling_exports(kind, tmp_path):
    rope = {**LLAMA_SCALING[kind], "rope_theta": 500000.0}
    hf = _hf_model("LlamaConfig", dict(rope_parameters=rope, tie_word_embeddings=True))
    model, ckpt = _checkpoint(hf, tmp_path)
    out = export_model(str(ckpt), "hf", tmp_path / "hf")
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        ref = model(IDS)
        assert _max_diff(exported.eval()(IDS).logits, ref) <= 1e-5
        assert torch.equal(load_pretrained(str(out)).model(IDS), ref)
    if kind == "yarn":  # GGUF's llama: linear or rope_freqs only
        with pytest.raises(ValueError, match=r"rope_scaling type 'yarn' \(GGUF's llama"):
            export_model(str(ckpt), "gguf", tmp_path / "g")
        return
    path = export_model(str(ckpt), "gguf", tmp_path / "g", gguf_type="f32") / "model.gguf"
    names = {t.name for t in GGUFReader(path).tensors}
    assert ("rope_freqs.weight" in names) == (kind == "llama3")
    clear_cache()
    back, _ = load_gguf(path)
    assert back.cfg.rope_scaling == model.cfg.rope_scaling
    with torch.no_grad():
        assert _max_diff(back(IDS), ref) <= 1e-5


def test_released_configs_export_or_are_refused_in_one_line():
    """The config.json of each released checkpoint (tests/models/test_families_loading.py): the
    entry each format picks, its config.json read back as the same model, or the refusal."""
    from tests.models.test_families_loading import RELEASED
    from tunelab.exporters.families import family_export
    from tunelab.exporters.hf import check_read_back
    from tunelab.models.loaders.hf_config import config_from_hf_dict

    expected = {
        # name: (hf entry, gguf entry or refusal)
        "Llama-3.2-1B": ("llama", "llama"),
        "SmolLM2-135M-Instruct": ("llama", "llama"),
        "Qwen2.5-0.5B": ("qwen2", "qwen2"),
        "Qwen3-0.6B": ("qwen3", "qwen3"),
        "gemma-3-1b-it": ("gemma3_text", "gemma3_text"),
        "Phi-3.5-mini-instruct": ("phi3", "cannot express LongRoPE scaling"),
        "Phi-3-mini-4k-instruct": ("mistral", "cannot express sliding_window=2047"),
        "OLMo-2-0425-1B": ("olmo2", "olmo2"),
        "Mistral-7B-v0.1": ("mistral", "cannot express sliding_window=4096"),
    }
    assert set(expected) == set(RELEASED)
    for name, hf_config in RELEASED.items():
        cfg = config_from_hf_dict(hf_config, f"{name}/config.json", name)
        hf_name, gguf_name = expected[name]
        entry = family_export(cfg, "hf")
        assert entry.name == hf_name, name
        check_read_back(entry.hf_config(cfg), cfg, entry.name)
        if " " in gguf_name:
            with pytest.raises(ValueError, match=gguf_name):
                family_export(cfg, "gguf")
        else:
            assert family_export(cfg, "gguf").name == gguf_name, name
