"""Resuming safely: a checkpoint given as `ckpt_path=` is checked before Lightning touches it.

Every checkpoint carries the run's fingerprint (`RunFingerprint`, under `tunelab_run`): the
optimizer (class and hyperparameters), data, task, LR schedule and clipping settings, the seed,
gradient accumulation and world size. Before `fit`, `check_resume` reads the checkpoint with
`weights_only=True` (a truncated, corrupt or code-carrying file is refused in one line) and
compares it with this run:
- the model (the task's own checkpoint metadata: model config, LoRA settings) and the optimizer
  class must be the same: weights and optimizer state would not fit otherwise;
- any other difference (batch size, data, LR, ...) is refused naming each key, unless
  `resume_policy=allow_changes`, which resumes with a warning listing them.
The comparison is over plain dicts, so new kinds of checkpoint metadata are compared as they come.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from tunelab.models.loaders.checkpoint import read_checkpoint

log = logging.getLogger(__name__)

POLICIES = ("strict", "allow_changes")
RUN_KEY = "tunelab_run"
# Settings that do not change what is computed.
IGNORED = ("data.num_workers", "task.activation_checkpointing")
# Checkpoint metadata that changes during a run: its progress, not its settings (CPT: the
# step-0 losses and the blocks seen per corpus).
DYNAMIC_META = ("tokens_seen", "skipped_batches", "cpt_baseline", "cpt_blocks_seen")
# Differences no policy can allow: the saved weights or optimizer state would not fit.
HARD_PREFIXES = ("model_config.", "lora.", "optimizer._target_")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for nested dicts; lists and scalars are leaves."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def run_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The settings of a run that a resume must share (flat, dotted keys)."""

    def plain(key: str) -> Any:
        node = OmegaConf.select(cfg, key)
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node

    parts = {
        "optimizer": plain("optimizer"),
        "data": plain("data"),
        "task": plain("task"),
        "callbacks.lr_schedule": plain("callbacks.lr_schedule"),
        "callbacks.grad_clip": plain("callbacks.grad_clip"),
        "seed": plain("seed"),
    }
    flat = flatten({k: v for k, v in parts.items() if v is not None})
    return {k: v for k, v in flat.items() if k not in IGNORED and not k.endswith("._partial_")}


def trainer_fingerprint(trainer: L.Trainer) -> dict[str, Any]:
    return {
        "trainer.accumulate_grad_batches": int(trainer.accumulate_grad_batches),
        "trainer.world_size": int(trainer.world_size),
    }


class RunFingerprint(L.Callback):
    """Saves the run's fingerprint in every checkpoint (under `tunelab_run`)."""

    def __init__(self, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = fingerprint

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RUN_KEY] = {**self.fingerprint, **trainer_fingerprint(trainer)}


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    missing = object()
    diffs = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, missing), now.get(key, missing)
        if a != b:
            diffs.append((key, "(unset)" if a is missing else a, "(unset)" if b is missing else b))
    return diffs


def _describe(diffs: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    def short(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 60 else text[:57] + "..."

    parts = [f"{k}: checkpoint {short(a)}, now {short(b)}" for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"and {len(diffs) - limit} more")
    return "; ".join(parts)


def model_metadata(task: L.LightningModule) -> dict[str, Any]:
    """What the task would write as checkpoint metadata now (model config, LoRA, ...)."""
    probe: dict[str, Any] = {"state_dict": {}}
    task.on_save_checkpoint(probe)
    meta = dict(probe.get("tunelab", {}))
    tokenizer = meta.pop("tokenizer", None)
    flat = flatten({k: v for k, v in meta.items() if k not in DYNAMIC_META})
    flat["tokenizer"] = tokenizer
    return flat


def check_resume(
    path: str,
    task: L.LightningModule,
    fingerprint: dict[str, Any],
    policy: str = "strict",
) -> None:
    """Refuse (one line) a checkpoint this run cannot resume from exactly; see the module doc."""
    if policy not in POLICIES:
        raise ValueError(f"resume_policy: expected 'strict' or 'allow_changes', got {policy!r}")
    ckpt = read_checkpoint(path)  # weights_only=True; refuses corrupt or code-carrying files
    where = f"ckpt_path={path}"
    if "optimizer_states" not in ckpt or "loops" not in ckpt:
        raise ValueError(
            f"{where}: holds weights only (no optimizer state or loop position), so a run cannot "
            "resume from it; start a new run from its weights with model.source=<path> instead"
        )
    saved_meta = {k: v for k, v in ckpt["tunelab"].items() if k not in DYNAMIC_META}
    saved_tokenizer = saved_meta.pop("tokenizer", None)
    saved = {**flatten(saved_meta), "tokenizer": saved_tokenizer}
    diffs = _differences(saved, model_metadata(task))
    saved_run = ckpt.get(RUN_KEY)
    if saved_run is None:
        log.warning(
            "%s: the checkpoint carries no run fingerprint (written by an older tunelab): "
            "optimizer, data and batch size cannot be compared with this run",
            where,
        )
    else:
        diffs += _differences(dict(saved_run), fingerprint)
    diffs = [(k, "(differs)", "(differs)") if k == "tokenizer" else (k, a, b) for k, a, b in diffs]
    hard = [d for d in diffs if d[0].startswith(HARD_PREFIXES)]
    if hard:
        raise ValueError(
            f"{where}: cannot resume: {_describe(hard)} (the saved weights or optimizer state "
            "would not fit; no resume_policy changes that)"
        )
    if not diffs:
        return
    if policy == "strict":
        raise ValueError(
            f"{where}: this run differs from the checkpoint's: {_describe(diffs)}; resume with "
            "the same settings, or add resume_policy=allow_changes if you mean it"
        )
    log.warning(
        "%s: resuming with changes (resume_policy=allow_changes): %s; the data position is "
        "restored in batches of the checkpoint's run",
        where,
        _describe(diffs),
    )
