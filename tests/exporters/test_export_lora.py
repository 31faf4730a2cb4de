"""A LoRA run exports merged (format=hf|gguf|ollama) or as adapters alone (format=peft)."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM

from tunelab.exporters import export_model
from tunelab.models import load_pretrained
from tunelab.models.loaders.checkpoint import checkpoint_metadata
from tunelab.models.lora import lora_modules, merge_lora


def randomise_b(model: torch.nn.Module) -> None:
    """LoRA's B starts at zero (the base model); make the adapters matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, lin in lora_modules(model):
            for b in lin.lora_b.values():
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)


def test_lora_checkpoint_is_merged_before_export(tmp_path):
    loaded = load_pretrained("tiny-llama", seed=3, lora={"rank": 2, "targets": ["q", "mlp_out"]})
    randomise_b(loaded.model)
    meta = checkpoint_metadata(loaded.model, loaded.tokenizer, "chatml")
    meta["lora"] = loaded.model.lora_meta
    state = {f"model.{k}": v for k, v in loaded.model.state_dict().items() if ".lora_" in k}
    ckpt = tmp_path / "lora.ckpt"
    torch.save({"tunelab": meta, "state_dict": state}, ckpt)
    model = loaded.model.eval()
    merged = merge_lora(copy.deepcopy(model))
    x = torch.randint(0, 2000, (2, 10), generator=torch.Generator().manual_seed(0))

    out = export_model(str(ckpt), "hf", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    back = load_pretrained(str(out)).model
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() <= 1e-4  # = the unmerged adapters
        assert torch.equal(back(x), merged(x))
    assert not any(".lora_" in k for k in back.state_dict())

    peft = export_model(str(ckpt), "peft", tmp_path / "peft")
    assert sorted(p.name for p in peft.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
