"""Parity with transformers for every supported family: logits, one SFT step, greedy generation.

transformers builds a tiny random model from a config that turns on each family's traits (biases,
q/k norms, RoPE scaling, sliding windows shorter than the sequence, pre/post norms, softcapping),
every parameter is perturbed so norms and biases are not at their identity, and the folder it
saves is loaded by tunelab. transformers is a test-only oracle: tunelab never imports it.
"""

from __future__ import annotations

import pytest
import torch

from tunelab.losses.lm import IGNORE_INDEX
from tunelab.models.generation import generate
from tunelab.models.loaders.hf import load_hf_folder
from tunelab.models.loaders.hf_weights import gpt2_plan, llama_plan
from tunelab.tasks.base import next_token_loss

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 320, 224  # sequences longer than every window below
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
LONGROPE = dict(
    rope_type="longrope",
    short_factor=[1.0, 1.1, 1.3, 1.7],
    long_factor=[1.0, 2.0, 3.5, 6.0],
)

GPT2 = dict(
    vocab_size=VOCAB,
    n_embd=64,
    n_inner=96,
    n_layer=3,
    n_head=4,
    n_positions=512,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=None,
    eos_token_id=None,
)

# family -> (config class name, config kwargs)
FAMILIES = {
    "gpt2": ("GPT2Config", {}),
    "llama": ("LlamaConfig", {}),
    "llama3_rope_biases": (
        "LlamaConfig",
        dict(
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=50000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        ),
    ),
    "llama_yarn": (
        "LlamaConfig",
        dict(
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                original_max_position_embeddings=128,
            )
        ),
    ),
    "mistral": ("MistralConfig", dict(sliding_window=16, head_dim=24)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen2_sliding": (
        "Qwen2Config",
        dict(use_sliding_window=True, sliding_window=20, max_window_layers=1),
    ),
    "qwen3": ("Qwen3Config", dict(head_dim=32, attention_bias=True)),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(
            head_dim=32,
            query_pre_attn_scalar=24,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": dict(rope_type="linear", factor=4.0, rope_theta=100000.0),
                "sliding_attention": dict(rope_type="default", rope_theta=5000.0),
            },
            final_logit_softcapping=3.0,
        ),
    ),
    "phi3": (
        "Phi3Config",
        dict(
            sliding_window=24,
            partial_rotary_factor=0.5,
            original_max_position_embeddings=128,
            rope_parameters=dict(LONGROPE, partial_rotary_factor=0.5),
        ),
    ),
    "olmo2": ("Olmo2Config", dict(attention_bias=True)),
}


def _hf_model(family: str):
    cls_name, extra = FAMILIES[family]
    base = GPT2 if cls_name == "GPT2Config" else SMALL
    cfg = getattr(transformers, cls_name)(**{**base, **extra})
    torch.manual_seed(sum(map(ord, family)))
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() == 1 else 0.05))
    return model.float().eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    family = request.param
    hf = _hf_model(family)
    folder = tmp_path_factory.mktemp(family)
    hf.save_pretrained(folder)
    return family, hf, load_hf_folder(folder), hf.config.model_type


def _ids(batch: int = 2, length: int = SEQ, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_equal_transformers(pair):
    family, hf, ours, _ = pair
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def _hf_grads(plan, ours) -> dict[str, torch.Tensor]:
    """tunelab's gradients laid out as the HF tensors they came from (through the load plan)."""
    grads = {name: p.grad for name, p in ours.named_parameters()}
    out = {}
    for name, entry in plan.items():
        if entry.targets[0].check_equal:
            continue
        g = torch.zeros(entry.shape)
        for t in entry.targets:
            src = grads[t.dest] if t.dest_rows is None else grads[t.dest][slice(*t.dest_rows)]
            if t.transpose:
                src = src.t()
            if t.src_rows is None:
                assert src.shape == g.shape, name
                g = src.clone()
            else:
                g[slice(*t.src_rows)] = src
        out[name] = g
    return out


def test_one_sft_step_loss_and_every_gradient_equal_transformers(pair):
    family, hf, ours, model_type = pair
    ids = _ids(seed=1)
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), IGNORE_INDEX)], dim=1)
    targets[0, :50] = IGNORE_INDEX  # a masked prompt
    labels = torch.cat([torch.full((2, 1), IGNORE_INDEX), targets[:, :-1]], dim=1)
    labels[:, 0] = IGNORE_INDEX
    labels[0, :51] = IGNORE_INDEX
    hf.zero_grad()
    ours.train(), hf.train()
    ref = hf(ids, labels=labels).loss
    ref.backward()
    loss, n = next_token_loss(ours, {"input_ids": ids, "targets": targets})
    loss.backward()
    assert int(n) == int((targets != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    cfg = ours.cfg
    plan = gpt2_plan(cfg) if cfg.family == "gpt2" else llama_plan(cfg, model_type == "phi3")
    got = _hf_grads(plan, ours)
    hf_grads = {
        name.removeprefix("model.").removeprefix("transformer."): p.grad
        for name, p in hf.named_parameters()
        if p.grad is not None
    }
    if cfg.tie_embeddings:
        hf_grads.pop("lm_head.weight", None)
    assert set(got) == set(hf_grads)
    for name, g in got.items():
        torch.testing.assert_close(g, hf_grads[name], atol=1e-4, rtol=0, msg=name)
    ours.zero_grad(), hf.zero_grad()
    ours.eval(), hf.eval()


def test_greedy_generation_equals_transformers(pair):
    family, hf, ours, _ = pair
    prompt = _ids(1, 40, seed=2)  # longer than every sliding window
    out = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert generate(ours, [prompt[0].tolist()], max_new_tokens=12)[0] == out[0, 40:].tolist()
