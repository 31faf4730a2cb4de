"""One decoder-only transformer class for every supported family.

The family in `Config` picks the layout: learned positions + LayerNorm + GELU MLP + biases (GPT-2)
or rotary embeddings + RMSNorm + gated MLP + grouped-query attention (Llama-style). The other
traits are `Config` fields: attention biases, q/k norms, RoPE scaling and a local RoPE base,
sliding windows per layer, pre/post norms, (1 + w) RMSNorm, embedding scale, final-logit
softcapping. Attention goes through `scaled_dot_product_attention`. The module is plain PyTorch,
usable without Lightning.

Packed rows are supported: pass `positions` (per-example positions) and `doc_ids` (which example
each token belongs to) and attention becomes block-diagonal causal: a boolean mask for SDPA, or on
a GPU in bf16/fp16 FlashAttention's variable-length kernel, one causal attention per example.
`hidden_states` returns the final normed states without the LM head, for losses that project them
chunk by chunk (`tunelab.losses.chunked`).
"""

from __future__ import annotations

import contextlib
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from tunelab.models.config import Config
from tunelab.models.kv_cache import KVCache, rope_cache
from tunelab.models.layers import MLP, RMSNorm, make_norm
from tunelab.models.masks import build_mask
from tunelab.models.rope import apply_rope, rope_tables, uses_long_factors
from tunelab.models.spans import PackedSpans, host_spans, packed_spans, per_span_causal

__all__ = [
    "MLP",
    "RMSNorm",
    "Attention",
    "Block",
    "Decoder",
    "KVCache",
    "PackedSpans",
    "host_spans",
    "make_norm",
    "packed_spans",
    "rope_cache",
]

try:  # FlashAttention over packed variable-length sequences (PyTorch >= 2.9, CUDA, bf16/fp16)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older PyTorch
    varlen_attn = None

# SDPA kernels allowed for attention with an explicit mask (packed rows, left padding) on a GPU.
# PyTorch may pick cuDNN attention there, which builds an execution graph for every new sequence
# length (pytorch/pytorch#155958): with packed rows of varying width that is a rebuild most steps.
# The memory-efficient kernel takes arbitrary boolean masks. None: leave the choice to PyTorch.
MASKED_SDPA_BACKENDS: list[SDPBackend] | None = [
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


# Packed rows on a GPU in bf16/fp16: attention runs per example with FlashAttention's varlen
# kernel, so the work is the sum of l^2 over examples instead of rows x width^2 with a mask; on a
# CPU, one SDPA call per example (`per_span_causal`).
VARLEN_ATTENTION = True


def _flash_varlen_device(t: torch.Tensor) -> bool:
    """Whether packed rows go to FlashAttention's varlen kernel (else `per_span_causal`)."""
    return t.is_cuda


def _varlen_causal(
    q, k, v, spans: PackedSpans, window: int | None = None, scale: float | None = None
) -> torch.Tensor:
    """Causal varlen attention on (N, H, D) tensors; PyTorch 2.9/2.10 spell causal differently.

    window: a query sees its last `window` keys, itself included (flash's left bound window - 1).
    """
    extra = {} if scale is None else {"scale": scale}
    if "window_size" in _VARLEN_PARAMS:
        return varlen_attn(
            q,
            k,
            v,
            spans.cu_seqlens,
            spans.cu_seqlens,
            spans.max_len,
            spans.max_len,
            window_size=(-1 if window is None else window - 1, 0),
            **extra,
        )
    return varlen_attn(
        q,
        k,
        v,
        spans.cu_seqlens,
        spans.cu_seqlens,
        spans.max_len,
        spans.max_len,
        is_causal=True,
        **extra,
    )


_VARLEN_PARAMS = set(inspect.signature(varlen_attn).parameters) if varlen_attn else set()


class Attention(nn.Module):
    def __init__(self, cfg: Config, index: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        qkv_out = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, qkv_out, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.attn_out_bias)
        self.dropout = cfg.dropout
        self.window = cfg.layer_window(index)
        self.scale = cfg.attn_scale
        if cfg.qk_norm == "head":  # one RMSNorm over head_dim, shared by all heads (Qwen3, Gemma 3)
            self.q_norm = make_norm(cfg, cfg.head_dim)
            self.k_norm = make_norm(cfg, cfg.head_dim)
        elif cfg.qk_norm == "full":  # over the whole q and k projections (OLMo 2)
            self.q_norm = make_norm(cfg, cfg.n_head * cfg.head_dim)
            self.k_norm = make_norm(cfg, cfg.n_kv_head * cfg.head_dim)

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [
                self.n_head * self.head_dim,
                self.n_kv_head * self.head_dim,
                self.n_kv_head * self.head_dim,
            ],
            dim=-1,
        )
        if self.cfg.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim)
        if self.cfg.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            # q and k are new tensors now; a view v would keep the whole fused qkv output alive
            # for the backward (an attention kernel saves its inputs): v alone is a third of it
            v = v.contiguous()
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if isinstance(mask, PackedSpans) and not _flash_varlen_device(q):
            if self.window is not None:  # _use_varlen keeps windowed models on masks
                raise RuntimeError("per-example attention has no sliding window")
            y = per_span_causal(q, k, v, mask, self.scale)
            return self.proj(y.reshape(B, T, self.n_head * self.head_dim))
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if isinstance(mask, PackedSpans):
            y = _varlen_causal(
                *(t.transpose(1, 2).reshape(B * T, -1, self.head_dim) for t in (q, k, v)),
                mask,
                self.window,
                self.scale,
            )
            return self.proj(y.reshape(B, T, self.n_head * self.head_dim))
        backends = MASKED_SDPA_BACKENDS if mask is not None and q.is_cuda else None
        with sdpa_kernel(backends) if backends else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None and T > 1,
                dropout_p=self.dropout if self.training else 0.0,
                scale=self.scale,
            )
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class Block(nn.Module):
    """Residual block: x + post(attn(pre(x))), then x + post(mlp(pre(x))); pre/post per Config."""

    def __init__(self, cfg: Config, index: int) -> None:
        super().__init__()
        self.index = index
        self.window = cfg.layer_window(index)
        self.local_rope = cfg.layer_is_local(index)
        # Absent norms are identities (no parameters): OLMo 2 has no pre-norms, Gemma 3 has all four.
        self.norm1 = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.attn = Attention(cfg, index)
        self.post_attn_norm = make_norm(cfg) if cfg.post_attn_norm else nn.Identity()
        self.norm2 = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.mlp = MLP(cfg)
        self.post_mlp_norm = make_norm(cfg) if cfg.post_mlp_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope=None, mask=None, cache: KVCache | None = None) -> torch.Tensor:
        h = self.post_attn_norm(self.attn(self.norm1(x), rope, mask, cache, self.index))
        x = x + self.drop(h)
        return x + self.drop(self.post_mlp_norm(self.mlp(self.norm2(x))))


class Decoder(nn.Module):
    """Decoder-only language model. `model(input_ids)` returns logits (batch, time, vocab)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = None if cfg.uses_rope else nn.Embedding(cfg.context_length, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        # RoPE tables per kind (global / local layers, LongRoPE's short / long factors).
        self._rope: dict[tuple[bool, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        # Keep only each block's input in training and recompute the block in the backward pass:
        # activation memory of one block instead of all, for one more forward of compute.
        self.activation_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = (
                    1 / math.sqrt(2 * self.cfg.n_layer)
                    if name.endswith(("attn.proj.weight", "mlp.proj.weight", "mlp.down.weight"))
                    else 1.0
                )
                nn.init.normal_(p, mean=0.0, std=std * scale)
            elif name.endswith("bias") or self.cfg.norm_unit_offset:
                nn.init.zeros_(p)  # biases; (1 + w) norm weights start at the identity too
            else:  # norm weights
                nn.init.ones_(p)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _rope_for(self, positions: torch.Tensor, local: bool = False):
        need = int(positions.max()) + 1 if positions.numel() else 1
        key = (local, not local and uses_long_factors(self.cfg, need))
        table = self._rope.get(key)
        if table is None or table[0].shape[0] < need or table[0].device != positions.device:
            length = max(need, min(self.cfg.context_length, 4096))
            table = rope_tables(self.cfg, length, positions.device, local, seq_len=need)
            self._rope[key] = table
        cos, sin = table
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)

    def embed(
        self, input_ids: torch.Tensor, positions: torch.Tensor, head_follows: bool = False
    ) -> torch.Tensor:
        # A tied embedding's dense gradient is a (vocab x width) buffer zeroed, filled at this
        # batch's rows and added to the head's every step: ~3 s of a 15 s CPU step at Qwen2.5's
        # 152k vocabulary. When the head's dense gradient follows in the same backward pass,
        # autograd adds a sparse one (this batch's rows) into it instead: same values, dense
        # result. CPU only (on a GPU those buffers cost microseconds).
        w = self.wte.weight
        self.wte.sparse = (
            head_follows
            and self.lm_head.weight is w
            and w.requires_grad
            and w.device.type == "cpu"
            and torch.is_grad_enabled()
        )
        x = self.wte(input_ids)
        if self.cfg.embedding_scale is not None:  # in the weights' dtype, as Gemma does
            x = x * torch.tensor(self.cfg.embedding_scale, dtype=x.dtype)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        return self.drop(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on final hidden states, with the config's final-logit softcapping."""
        logits = self.lm_head(hidden)
        cap = self.cfg.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        spans: PackedSpans | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for `input_ids` (B, T): `logits(hidden_states(...))`."""
        return self.logits(
            self.hidden_states(input_ids, positions, doc_ids, cache, attention_mask, spans, True)
        )

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        spans: PackedSpans | None = None,
        head_follows: bool = False,
    ) -> torch.Tensor:
        """Final hidden states (B, T, n_embd), after the final norm, before the LM head.

        Training losses project them chunk by chunk (`tunelab.losses.chunked`) instead of
        building the full logits.

        positions: (B, T) position of each token (default 0..T-1, or continuing the cache).
        doc_ids: (B, T) example id of each token in packed rows; attention stays inside one id.
        attention_mask: (B, T) bool/int, 1 for real tokens (left-padded generation with a cache).
        spans: the spans of `doc_ids` computed on the host (`collate_packed(..., spans=True)`),
            used by the varlen path instead of `packed_spans(doc_ids)`, which reads the longest
            span back from the GPU; `doc_ids` is still needed (the masked path uses it).
        head_follows: the caller projects every returned state with the LM head in the same
            graph (a training loss), which lets a tied embedding take a sparse gradient.
        """
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        if T + start > self.cfg.context_length and self.wpe is not None:
            raise ValueError(
                f"sequence of {T + start} tokens exceeds context_length {self.cfg.context_length}"
            )
        windows = {block.window for block in self.blocks}
        if self._use_varlen(input_ids, doc_ids, cache, attention_mask):
            spans = (
                host_spans(spans, B * T, input_ids.device)
                if spans is not None
                else packed_spans(doc_ids)
            )
            masks = dict.fromkeys(windows, spans)
        else:
            masks = {
                w: build_mask(B, T, doc_ids, cache, attention_mask, input_ids.device, w)
                for w in windows
            }
        ropes = {}
        if self.cfg.uses_rope:
            for local in {block.local_rope for block in self.blocks}:
                ropes[local] = self._rope_for(positions, local)
        x = self.embed(input_ids, positions, head_follows)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            rope, mask = ropes.get(block.local_rope), masks[block.window]
            if recompute and cache is None:
                x = checkpoint(block, x, rope, mask, None, use_reentrant=False)
            else:
                x = block(x, rope, mask, cache)
        if cache is not None:
            cache.length += T
        return self.norm_f(x)

    def _use_varlen(self, input_ids, doc_ids, cache, attention_mask) -> bool:
        if doc_ids is None or cache is not None or attention_mask is not None:
            return False
        if self.training and self.cfg.dropout > 0:  # the varlen kernel has no attention dropout
            return False
        windowed = any(block.window is not None for block in self.blocks)
        if input_ids.device.type == "cpu":  # per_span_causal: one SDPA call per example
            compiled = any(getattr(b, "_compiled_call_impl", None) for b in self.blocks)
            return VARLEN_ATTENTION and not (compiled or windowed)
        if not (VARLEN_ATTENTION and varlen_attn is not None and input_ids.is_cuda):
            return False
        if (windowed and "window_size" not in _VARLEN_PARAMS) or (
            self.cfg.attn_scale is not None and "scale" not in _VARLEN_PARAMS
        ):
            return False
        half = (torch.float16, torch.bfloat16)
        if torch.is_autocast_enabled("cuda"):
            return torch.get_autocast_dtype("cuda") in half
        return self.wte.weight.dtype in half
