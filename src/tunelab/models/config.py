"""Decoder hyperparameters and the named preset registry.

One `Config` describes every supported family. The GPT-2 family uses learned positions,
LayerNorm, a GELU MLP and biases; the Llama family uses rotary embeddings, RMSNorm, a SwiGLU MLP,
grouped-query attention and no biases. Presets only fix the shape: weights come from a loader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["gpt2", "llama"]


@dataclass
class Config:
    name: str = "custom"
    family: Family = "gpt2"
    vocab_size: int = 50257
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # None: same as n_head (no grouped-query attention)
    intermediate_size: int | None = None  # None: 4 * n_embd (GPT-2 convention)
    head_dim: int | None = None  # None: n_embd // n_head
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    dropout: float = 0.0
    tokenizer: str = "gpt2"  # tokenizer id used when the model is built from its preset alone
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in ("gpt2", "llama"):
            raise ValueError(f"model family must be 'gpt2' or 'llama', got {self.family!r}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )

    # Family traits: derived, so a config can never mix them inconsistently.
    @property
    def bias(self) -> bool:
        return self.family == "gpt2"

    @property
    def uses_rope(self) -> bool:
        return self.family == "llama"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown model config keys {unknown}; expected some of {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Config:
        if name not in PRESETS:
            raise KeyError(
                f"unknown model preset {name!r}; available presets: {', '.join(sorted(PRESETS))}"
            )
        return cls(**{**PRESETS[name], "name": name, **overrides})


def _gpt2(n_layer: int, n_head: int, n_embd: int) -> dict[str, Any]:
    return dict(
        family="gpt2",
        vocab_size=50257,
        context_length=1024,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        norm_eps=1e-5,
        tokenizer="gpt2",
    )


PRESETS: dict[str, dict[str, Any]] = {
    # The four released GPT-2 sizes (Radford et al. 2019).
    "gpt2-124m": _gpt2(12, 12, 768),
    "gpt2-355m": _gpt2(24, 16, 1024),
    "gpt2-774m": _gpt2(36, 20, 1280),
    "gpt2-1558m": _gpt2(48, 25, 1600),
    # Tiny shapes for tests: real tokenizers, few parameters.
    "tiny-gpt2": dict(
        family="gpt2",
        vocab_size=50257,
        context_length=256,
        n_layer=2,
        n_head=2,
        n_embd=64,
        tokenizer="gpt2",
    ),
    # SmolLM2-135M (HuggingFaceTB): Llama architecture, tied embeddings, GQA 9/3.
    "smollm2-135m": dict(
        family="llama",
        vocab_size=49152,
        context_length=8192,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        n_embd=576,
        intermediate_size=1536,
        norm_eps=1e-5,
        rope_base=100000.0,
        tie_embeddings=True,
        tokenizer="smollm2",
    ),
    "tiny-llama": dict(
        family="llama",
        vocab_size=50257,
        context_length=256,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=64,
        intermediate_size=128,
        norm_eps=1e-5,
        rope_base=10000.0,
        tokenizer="gpt2",
    ),
}
