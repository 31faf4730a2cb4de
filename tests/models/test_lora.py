"""LoRA layer: step 0 is the base, per-slice adapters on the fused qkv, merge, targets, head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tunelab.models import load_pretrained
from tunelab.models.lora import (
    LoRAConfig,
    LoRALinear,
    adapters_disabled,
    apply_lora,
    lora_modules,
    merge_lora,
)
from tunelab.tasks.base import next_token_loss
from tunelab.tasks.sft import SFTTask

FAMILIES = ["tiny-gpt2", "tiny-llama"]


def ids(n: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2000, (2, n), generator=g)


def randomise_b(model: torch.nn.Module, std: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, lin in lora_modules(model):
            for b in lin.lora_b.values():
                b.copy_(torch.randn(b.shape, generator=g) * std)


@pytest.mark.parametrize("source", FAMILIES)
def test_step_zero_is_the_base_model_and_only_adapters_train(source):
    base = load_pretrained(source, seed=0).model
    lora = load_pretrained(source, seed=0, lora={"targets": ["all-linear", "lm_head"]}).model
    x = ids()
    with torch.no_grad():
        assert torch.equal(lora(x), base(x))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_a." in n or ".lora_b." in n for n in trainable)
    # every linear of the blocks and the head is wrapped; the base tensors keep their names
    n_linear = 4 if source == "tiny-gpt2" else 5  # qkv, proj, MLP (2 or 3)
    assert len(list(lora_modules(lora))) == 2 * n_linear + 1
    assert set(base.state_dict()) <= set(lora.state_dict())


def test_fused_qkv_gets_one_adapter_per_slice_as_separate_layers_would():
    model = load_pretrained("tiny-llama", seed=0, lora={"rank": 2, "alpha": 6, "targets": ["k"]})
    randomise_b(model.model)
    attn = model.model.blocks[0].attn
    qkv = attn.qkv
    assert isinstance(qkv, LoRALinear) and list(qkv.slices) == ["k"]
    x = torch.randn(3, 64)
    q_rows = attn.n_head * attn.head_dim
    kv_rows = attn.n_kv_head * attn.head_dim
    w_q, w_k, w_v = qkv.weight.split([q_rows, kv_rows, kv_rows])
    k_expected = x @ w_k.T + (x @ qkv.lora_a["k"].T) @ qkv.lora_b["k"].T * 3.0
    with torch.no_grad():
        q, k, v = qkv(x).split([q_rows, kv_rows, kv_rows], dim=-1)
    assert torch.allclose(k, k_expected, atol=1e-6)
    assert torch.equal(q, x @ w_q.T) and torch.equal(v, x @ w_v.T)


@pytest.mark.parametrize("source", FAMILIES)
def test_merged_logits_equal_unmerged_and_adapters_off_equal_base(source):
    base = load_pretrained(source, seed=0).model
    model = load_pretrained(source, seed=0, lora={"targets": ["all-linear", "lm_head"]}).model
    randomise_b(model)
    x = ids(16)
    with torch.no_grad():
        unmerged = model(x)
        with adapters_disabled(model):
            assert torch.equal(model(x), base(x))
        assert (unmerged - base(x)).abs().max() > 0.1  # the adapters do something
        merge_lora(model)
        merged = model(x)
    assert not list(lora_modules(model))
    assert (merged - unmerged).abs().max() < 1e-5
    # the head's adapter went into the head only: the tied embedding is the base one
    assert model.cfg.tie_embeddings is False
    assert torch.equal(model.wte.weight, base.wte.weight)


def test_unknown_or_absent_targets_are_refused_in_one_line():
    with pytest.raises(ValueError, match="model.lora.targets: unknown \\['query'\\]"):
        LoRAConfig(targets=["query"])
    with pytest.raises(ValueError, match="has no 'mlp_gate' projection"):
        load_pretrained("tiny-gpt2", seed=0, lora={"targets": ["mlp_gate"]})
    with pytest.raises(ValueError, match="model.lora.rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="unknown keys \\['r'\\]"):
        LoRAConfig.from_any({"r": 8})
    # all-linear on GPT-2 simply has no gate
    model = load_pretrained("tiny-gpt2", seed=0, lora={"targets": ["all-linear"]}).model
    assert all("mlp_gate" not in lin.slices for _, lin in lora_modules(model))


@pytest.mark.parametrize("source", FAMILIES)
def test_chunked_loss_honours_the_lm_head_adapter(source):
    loaded = load_pretrained(source, seed=0, lora={"targets": ["q", "lm_head"]})
    model = loaded.model
    randomise_b(model)
    x = ids(12)
    targets = x[:, 1:].clone()
    targets[:, :3] = -100
    batch = {"input_ids": x[:, :-1], "targets": targets}
    results = []
    for chunked in (True, False):
        model.zero_grad()
        loss, n = next_token_loss(model, batch, chunked)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, atol=1e-6)
    assert set(g1) == set(g2) and any("lm_head" in k for k in g1)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-6), k


def test_head_adapter_dropout_with_the_chunked_loss_is_refused():
    loaded = load_pretrained("tiny-gpt2", seed=0, lora={"targets": ["lm_head"], "dropout": 0.1})
    with pytest.raises(ValueError, match="task.chunked_lm_loss=false"):
        SFTTask(loaded.model, loaded.tokenizer, loaded.prompt_style, chunked_lm_loss=True)
    SFTTask(loaded.model, loaded.tokenizer, loaded.prompt_style, chunked_lm_loss=False)


def test_adapters_learn_through_activation_checkpointing_identically():
    grads = []
    for recompute in (False, True):
        model = load_pretrained("tiny-llama", seed=0, lora={"rank": 4, "dropout": 0.0}).model
        randomise_b(model)
        model.train()
        model.activation_checkpointing = recompute
        x = ids(12)
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.requires_grad})
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_a_model_with_adapters_gets_no_second_set():
    model = load_pretrained("tiny-gpt2", seed=0, lora={}).model
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, {})


def test_adapters_load_onto_their_own_base_only(tmp_path):
    from tunelab.models.loaders.checkpoint import checkpoint_metadata, load_tunelab_checkpoint

    loaded = load_pretrained("tiny-gpt2", seed=3, lora={"rank": 2, "targets": ["q", "mlp_out"]})
    randomise_b(loaded.model)
    meta = checkpoint_metadata(loaded.model, loaded.tokenizer, loaded.prompt_style)
    meta["lora"] = loaded.model.lora_meta
    state = {f"model.{k}": v for k, v in loaded.model.state_dict().items() if ".lora_" in k}
    torch.save({"tunelab": meta, "state_dict": state}, tmp_path / "a.ckpt")
    model, _, _ = load_tunelab_checkpoint(tmp_path / "a.ckpt")
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model.eval()(x))
    meta["lora"] = {**meta["lora"], "base": {**meta["lora"]["base"], "seed": 4}}
    torch.save({"tunelab": meta, "state_dict": state}, tmp_path / "b.ckpt")
    with pytest.raises(
        ValueError, match="differs from the one these LoRA adapters were trained on"
    ):
        load_tunelab_checkpoint(tmp_path / "b.ckpt")


def test_adapters_run_under_bf16_autocast_as_in_mixed_precision_training():
    """The adapters are accumulated in place into the base output, an op autocast leaves alone:
    it must still work when autocast makes that output bf16 (Lightning's bf16-mixed)."""
    torch.manual_seed(0)
    lin = LoRALinear(torch.nn.Linear(8, 12), {"q": (0, 4), "v": (8, 12)}, 2, 4.0, 0.0)
    lin.weight.requires_grad_(False)  # frozen, as apply_lora leaves it
    lin.bias.requires_grad_(False)
    for b in lin.lora_b.values():
        torch.nn.init.normal_(b)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        exact = lin(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), exact, atol=0.1, rtol=0.02)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lin.lora_a.values())
    assert lin.weight.grad is None
