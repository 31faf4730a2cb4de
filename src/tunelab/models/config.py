"""Decoder hyperparameters and the named preset registry.

One `Config` describes every supported family. `family` picks the layout of the weights: GPT-2
(learned positions, LayerNorm, GELU MLP with fc/proj, biases) or Llama-style (rotary embeddings,
RMSNorm, gated MLP, grouped-query attention). Every other trait a family needs is its own field,
read from the checkpoint's own config (loaders/hf_config.py), never guessed from a model's name:
attention biases, q/k norms, RoPE scaling, sliding windows per layer, norm placement and form,
embedding scale, MLP activation, final-logit softcapping. Presets only fix the shape: weights come
from a loader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["gpt2", "llama"]
QKNorm = Literal["none", "head", "full"]
ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


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
    # Attention. None: the family's default (GPT-2: biases everywhere; Llama: none).
    qkv_bias: bool | None = None  # bias on the q/k/v projections (Qwen2: yes; its o_proj: no)
    attn_out_bias: bool | None = None  # bias on the attention output projection
    mlp_bias: bool | None = None  # biases of the MLP linears
    qk_norm: QKNorm = (
        "none"  # RMSNorm of q and k: per head (Qwen3, Gemma 3) / whole projection (OLMo 2)
    )
    attn_scale: float | None = (
        None  # softmax scale; None: head_dim ** -0.5 (Gemma 3: scalar ** -0.5)
    )
    sliding_window: int | None = (
        None  # a query sees its last `sliding_window` keys (itself included)
    )
    sliding_window_layers: list[int] | None = None  # layers with the window; None: all layers
    # Rotary embeddings.
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": linear|llama3|yarn|longrope, ...}
    rope_local_base: float | None = None  # plain RoPE base of the sliding-window layers (Gemma 3)
    rotary_fraction: float = 1.0  # share of each head's dimensions that RoPE rotates (Phi-3)
    # Norms. None: the family's default (GPT-2: LayerNorm; Llama: RMSNorm).
    norm_type: Literal["layernorm", "rmsnorm"] | None = None
    norm_unit_offset: bool = False  # RMSNorm scales by (1 + w) (Gemma)
    norm_scale_fp32: bool = (
        False  # RMSNorm multiplies by its weight before casting back (Gemma, OLMo 2)
    )
    pre_norm: bool = True  # norm before attention and before the MLP (all but OLMo 2)
    post_attn_norm: bool = False  # norm of the attention output before the residual add
    post_mlp_norm: bool = False  # norm of the MLP output before the residual add
    # MLP: GPT-2 is fc -> act -> proj; Llama-style is down(act(gate(x)) * up(x)).
    mlp_activation: Literal["gelu_tanh", "gelu", "silu"] | None = None  # None: family default
    # Embeddings and head.
    embedding_scale: float | None = None  # token embeddings multiplied by it (Gemma: sqrt(n_embd))
    final_logit_softcapping: float | None = None  # logits = c * tanh(logits / c)
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
        gpt2 = self.family == "gpt2"
        for name in ("qkv_bias", "attn_out_bias", "mlp_bias"):
            if getattr(self, name) is None:
                setattr(self, name, gpt2)
        if self.norm_type is None:
            self.norm_type = "layernorm" if gpt2 else "rmsnorm"
        if self.mlp_activation is None:
            self.mlp_activation = "gelu_tanh" if gpt2 else "silu"
        if self.qk_norm not in ("none", "head", "full"):
            raise ValueError(f"qk_norm must be 'none', 'head' or 'full', got {self.qk_norm!r}")
        if self.mlp_activation not in ("gelu_tanh", "gelu", "silu"):
            raise ValueError(f"unknown mlp_activation {self.mlp_activation!r}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            if kind not in ROPE_TYPES:
                raise ValueError(f"rope_scaling type {kind!r} is not one of {ROPE_TYPES}")
        if gpt2 and (self.rope_scaling or self.sliding_window or self.qk_norm != "none"):
            raise ValueError("GPT-2-family models have learned positions and no q/k norm")
        if not 0 < self.rotary_fraction <= 1 or int(self.head_dim * self.rotary_fraction) % 2:
            raise ValueError(
                f"rotary_fraction={self.rotary_fraction} of head_dim={self.head_dim} must give an "
                "even number of rotated dimensions"
            )

    # Family traits: derived, so a config can never mix them inconsistently.
    @property
    def bias(self) -> bool:
        """Bias on the fused q/k/v projection (kept for callers written before the split)."""
        return bool(self.qkv_bias)

    @property
    def uses_rope(self) -> bool:
        return self.family == "llama"

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    def layer_window(self, index: int) -> int | None:
        """The sliding window of layer `index` (None: full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.sliding_window_layers is None or index in self.sliding_window_layers:
            return self.sliding_window
        return None

    def layer_is_local(self, index: int) -> bool:
        """Whether layer `index` uses the local RoPE base (Gemma 3's sliding-window layers)."""
        return self.rope_local_base is not None and self.layer_window(index) is not None

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
    # A small Llama shape over bytes (vocab 257) that two CPU cores pretrain from scratch in
    # minutes: the forgetting study's model (experiments/forgetting_replay), 0.82M parameters.
    "tiny-llama-bytes": dict(
        family="llama",
        vocab_size=257,
        context_length=256,
        n_layer=4,
        n_head=4,
        n_kv_head=2,
        n_embd=128,
        intermediate_size=384,
        norm_eps=1e-5,
        rope_base=10000.0,
        tie_embeddings=True,
        tokenizer="bytes",
    ),
}
