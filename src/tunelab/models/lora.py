"""LoRA (Hu et al. 2021) for the decoder's linear layers, written here as LitGPT and torchtune do.

`apply_lora(model, LoRAConfig(...))` swaps the targeted `nn.Linear`s for `LoRALinear`s that keep
the same weight and bias Parameters (so every base tensor keeps its name in the state dict) and add

    y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T      A: (rank, in), B: (out, rank), B = 0

per adapted slice of the output rows. The fused `attn.qkv` projection gets one adapter per
targeted slice (q, k, v), exactly as if they were separate layers. B starts at zero, so the model
at step 0 is the base model. Everything but the adapters is frozen, so only adapters reach the
optimizer. Adapter tensors are named `<module>.lora_a.<target>` / `<module>.lora_b.<target>`.

Targets (names of the decoder's projections): q, k, v, attn_out, mlp_in, mlp_gate (SwiGLU
families), mlp_out, lm_head; `all-linear` is every projection inside the blocks (not the LM head,
as in PEFT).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

BLOCK_TARGETS = ("q", "k", "v", "attn_out", "mlp_in", "mlp_gate", "mlp_out")
TARGETS = (*BLOCK_TARGETS, "lm_head")
ALL_LINEAR = "all-linear"
LORA_KEY_PARTS = (".lora_a.", ".lora_b.")

# target -> (module path inside a block, None for the whole output or the qkv slice's index)
_BLOCK_MODULES: dict[str, list[tuple[str, int | None]]] = {
    "q": [("attn.qkv", 0)],
    "k": [("attn.qkv", 1)],
    "v": [("attn.qkv", 2)],
    "attn_out": [("attn.proj", None)],
    "mlp_in": [("mlp.fc", None), ("mlp.up", None)],  # GPT-2 / SwiGLU families
    "mlp_gate": [("mlp.gate", None)],
    "mlp_out": [("mlp.proj", None), ("mlp.down", None)],
}


@dataclass
class LoRAConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: [ALL_LINEAR])

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        self.targets = [str(t) for t in self.targets]
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"model.lora.rank: expected a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"model.lora.alpha: expected a positive number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout: expected 0 <= dropout < 1, got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in (*TARGETS, ALL_LINEAR)]
        if unknown or not self.targets:
            raise ValueError(
                f"model.lora.targets: unknown {unknown or 'empty list'}; expected some of "
                f"{', '.join((*TARGETS, ALL_LINEAR))}"
            )

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def expanded_targets(self) -> list[str]:
        out = list(BLOCK_TARGETS) if ALL_LINEAR in self.targets else []
        out += [t for t in self.targets if t != ALL_LINEAR and t not in out]
        return [t for t in TARGETS if t in out]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_any(cls, value: Any) -> LoRAConfig:
        if isinstance(value, LoRAConfig):
            return value
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(value, DictConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        if not isinstance(value, dict):
            raise TypeError(f"model.lora: expected a mapping, got {type(value).__name__}")
        known = {"rank", "alpha", "dropout", "targets"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"model.lora: unknown keys {unknown}; expected some of {sorted(known)}"
            )
        return cls(**value)


class LoRALinear(nn.Linear):
    """A frozen linear layer plus low-rank adapters on slices of its output rows.

    slices: target name -> (first row, end row) of the output it adapts.
    """

    def __init__(
        self,
        base: nn.Linear,
        slices: dict[str, tuple[int, int]],
        rank: int,
        alpha: float,
        dropout: float,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameters: names, ties and loaded values stay
        self.bias = base.bias
        self.slices = dict(sorted(slices.items(), key=lambda kv: kv[1][0]))
        self.rank, self.scale = rank, alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.ParameterDict(
            {n: nn.Parameter(torch.empty(rank, self.in_features, **kw)) for n in self.slices}
        )
        self.lora_b = nn.ParameterDict(
            {n: nn.Parameter(torch.zeros(e - s, rank, **kw)) for n, (s, e) in self.slices.items()}
        )
        for a in self.lora_a.values():  # as PEFT and LitGPT: A ~ kaiming-uniform, B = 0
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapters_enabled = True

    @property
    def dropout_p(self) -> float:
        return self.lora_dropout.p if isinstance(self.lora_dropout, nn.Dropout) else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.adapters_enabled:
            return out
        # out[:, slice] += scale * (dropout(x) A^T) B^T, accumulated in place by addmm_: the
        # base output is the only (tokens, out) tensor the layer allocates, so a step holds
        # no per-adapter products and padded copies of the output beside the saved activations
        # (on the CPU those transients fragment the heap: ~0.3 GB of peak RSS on SmolLM2-135M).
        # The frozen base's output is not needed by its backward, so writing into it is safe.
        flat = out.view(-1, self.out_features)
        xd = self.lora_dropout(x).reshape(-1, self.in_features)
        for name, (start, end) in self.slices.items():
            target = flat if end - start == self.out_features else flat[:, start:end]
            xa = xd @ self.lora_a[name].t()  # autocast leaves in-place ops alone: one dtype
            b = self.lora_b[name].t().to(flat.dtype)
            target.addmm_(xa.to(flat.dtype), b, alpha=self.scale)
        return out

    def delta_weight(self) -> torch.Tensor:
        """(out, in) matrix the adapters add to the weight: scale * B @ A per slice."""
        parts = [self.lora_b[n] @ self.lora_a[n] * self.scale for n in self.slices]
        rows = []
        pos = 0
        for part, (start, end) in zip(parts, self.slices.values(), strict=True):
            if start > pos:
                rows.append(part.new_zeros(start - pos, self.in_features))
            rows.append(part)
            pos = end
        if pos < self.out_features:
            rows.append(parts[-1].new_zeros(self.out_features - pos, self.in_features))
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora={list(self.slices)}, rank={self.rank}"


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


def has_lora(model: nn.Module) -> bool:
    return any(True for _ in lora_modules(model))


def is_lora_key(key: str) -> bool:
    return any(p in key for p in LORA_KEY_PARTS)


def _qkv_slices(model: nn.Module) -> list[tuple[int, int]]:
    cfg = model.cfg
    q = cfg.n_head * cfg.head_dim
    kv = cfg.n_kv_head * cfg.head_dim
    return [(0, q), (q, q + kv), (q + kv, q + 2 * kv)]


def target_plan(model: nn.Module, cfg: LoRAConfig) -> dict[str, dict[str, tuple[int, int]]]:
    """module name -> {target: (start, end) rows} for the model; refuses targets it lacks."""
    plan: dict[str, dict[str, tuple[int, int]]] = {}
    names = dict(model.named_modules())
    explicit = [t for t in cfg.targets if t != ALL_LINEAR]
    qkv = _qkv_slices(model)
    for target in cfg.expanded_targets():
        found = False
        if target == "lm_head":
            lin = names.get("lm_head")
            if isinstance(lin, nn.Linear):
                plan.setdefault("lm_head", {})["lm_head"] = (0, lin.out_features)
                found = True
        else:
            for i in range(len(model.blocks)):
                for path, index in _BLOCK_MODULES[target]:
                    lin = names.get(f"blocks.{i}.{path}")
                    if not isinstance(lin, nn.Linear):
                        continue
                    rows = qkv[index] if index is not None else (0, lin.out_features)
                    plan.setdefault(f"blocks.{i}.{path}", {})[target] = rows
                    found = True
        if not found and target in explicit:
            raise ValueError(
                f"model.lora.targets: this model ({model.cfg.family} family) has no {target!r} "
                "projection"
            )
    if not plan:
        raise ValueError("model.lora.targets: no linear layer of this model matches")
    return plan


def base_digest(model: nn.Module) -> str:
    """sha256 of the base model's tensors (names, dtypes, shapes, bytes), adapters excluded."""
    h = hashlib.sha256()
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if is_lora_key(name) or id(t) in seen:
            continue
        seen.add(id(t))
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def apply_lora(
    model: nn.Module, cfg: LoRAConfig | dict[str, Any], base: dict[str, Any] | None = None
) -> nn.Module:
    """Freeze `model` and wrap its targeted linears with adapters (in place; returns it).

    base: how to load the base again (`source`, `seed`, `context_length`); saved with the
    adapters together with the base's sha256, so an adapter is never put on another base.
    """
    cfg = LoRAConfig.from_any(cfg)
    if has_lora(model):
        raise ValueError("model already has LoRA adapters: merge them first (tunelab.lora merge)")
    plan = target_plan(model, cfg)
    digest = base_digest(model)
    model.requires_grad_(False)
    for name, slices in plan.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, attr)
        setattr(parent, attr, LoRALinear(lin, slices, cfg.rank, cfg.alpha, cfg.dropout))
    model.lora_meta = {"config": cfg.to_dict(), "base": {**(base or {}), "sha256": digest}}
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info(
        "LoRA rank %d alpha %g on %s: %.2fM trainable of %.1fM parameters (%.2f%%)",
        cfg.rank,
        cfg.alpha,
        ",".join(cfg.expanded_targets()),
        n_train / 1e6,
        n_all / 1e6,
        100 * n_train / max(n_all, 1),
    )
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if is_lora_key(k)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base model for the duration (DPO's reference): no copy, adapters skipped."""
    mods = [m for _, m in lora_modules(model)]
    before = [m.adapters_enabled for m in mods]
    for m in mods:
        m.adapters_enabled = False
    try:
        yield model
    finally:
        for m, b in zip(mods, before, strict=True):
            m.adapters_enabled = b


def lm_head_weight(model: nn.Module) -> torch.Tensor:
    """The LM head's weight as the chunked loss must use it: with the head's adapters folded in."""
    head = model.lm_head
    if not isinstance(head, LoRALinear) or not head.adapters_enabled:
        return head.weight
    if head.training and head.dropout_p > 0:
        raise ValueError(CHUNKED_HEAD_DROPOUT)
    return head.weight + head.delta_weight()


CHUNKED_HEAD_DROPOUT = (
    "LoRA on lm_head with model.lora.dropout > 0 cannot use the chunked LM-head loss: set "
    "task.chunked_lm_loss=false, model.lora.dropout=0, or drop lm_head from model.lora.targets"
)


def check_chunked_head(model: nn.Module, chunked: bool) -> None:
    head = getattr(model, "lm_head", None)
    if chunked and isinstance(head, LoRALinear) and head.dropout_p > 0:
        raise ValueError(CHUNKED_HEAD_DROPOUT)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and drop the adapters (in place; returns it).

    An LM head adapter on tied embeddings unties the head (the embedding stays the base one).
    """
    for name, lin in list(lora_modules(model)):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        merged = nn.Linear(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            device=lin.weight.device,
            dtype=lin.weight.dtype,
        )
        merged.weight.copy_(lin.weight + lin.delta_weight())
        if lin.bias is not None:
            merged.bias = lin.bias
        setattr(parent, attr, merged)
        if name == "lm_head" and getattr(model.cfg, "tie_embeddings", False):
            model.cfg.tie_embeddings = False
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "lora_meta"):
        del model.lora_meta
    return model
