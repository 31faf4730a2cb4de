"""Training entry point: `python -m tunelab.train experiment=... [overrides]` (add -m to sweep).

compose cfg -> seed -> model + tokenizer -> datamodule.connect -> task -> callbacks, loggers,
trainer -> fit -> metrics.json; returns the metric named by `optimized_metric` for sweepers.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from tunelab.callbacks.reliability import ValidateAtEnd
from tunelab.models.loaders.gguf import clear_cache as clear_gguf_cache
from tunelab.utils.config import (
    check_no_literal_secrets,
    conf_dir,
    instantiate_dict,
    save_and_print_config,
)
from tunelab.utils.io import atomic_write_text, write_json
from tunelab.utils.resume import (
    POLICIES,
    RunFingerprint,
    check_resume,
    run_fingerprint,
    trainer_fingerprint,
)
from tunelab.utils.tracking import global_rank, narrow_ddp_relaunch, prepare_wandb

log = logging.getLogger("tunelab.train")


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path in (None, "", "none"):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: checkpoint not found: {ckpt_path}")
    return ckpt_path


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate everything a run needs (used by train() and by config tests)."""
    loaded = hydra.utils.instantiate(cfg.model)
    clear_gguf_cache()  # the run owns its model: the loader's cached copy would double the weights
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.connect(
        loaded.tokenizer, loaded.prompt_style, max_length=loaded.model.cfg.context_length
    )
    # Objects go in through a partial: Hydra would turn a dataclass argument into a config.
    task = hydra.utils.instantiate(cfg.task, _partial_=True)(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        prompt_style=loaded.prompt_style,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
    )
    callbacks = instantiate_dict(cfg.get("callbacks"))
    callbacks.append(ValidateAtEnd())  # final val metrics and best.ckpt for every finished run
    callbacks.append(RunFingerprint(run_fingerprint(cfg)))  # checked when a run resumes
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    return {
        "loaded": loaded,
        "datamodule": datamodule,
        "task": task,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
    }


def write_model_files(loaded, folder: Path) -> None:
    """Tokenizer, prompt style and model config beside the checkpoints, readable without torch."""
    loaded.tokenizer.save(folder)
    atomic_write_text(folder / "prompt_style.txt", loaded.prompt_style + "\n")
    write_json(folder / "model_config.json", loaded.model.cfg.to_dict())


def check_run_length(trainer_cfg: DictConfig) -> None:
    """max_steps / max_epochs that would train nothing are refused before any work."""
    for key in ("max_steps", "max_epochs"):
        value = trainer_cfg.get(key)
        if value is not None and (value == 0 or value < -1):
            raise ValueError(
                f"trainer.{key}={value}: nothing would be trained; give a positive count, "
                "or -1 for no limit"
            )


def sweeper_needs_metric() -> bool:
    """True inside a multirun whose sweeper reads the returned metric (Optuna, ...), not a grid."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    target = str(hc.sweeper.get("_target_", ""))
    return hc.mode == RunMode.MULTIRUN and not target.endswith("BasicSweeper")


def optimized_value(name: str | None, metrics: dict[str, float]) -> float | None:
    """The metric a sweeper optimizes; missing: an error where a sweeper needs it, else a warning."""
    if not name:
        return None
    if name not in metrics:
        msg = f"optimized_metric {name!r} was not logged; logged: {sorted(metrics)}"
        if sweeper_needs_metric():
            raise KeyError(msg)
        log.warning("%s (no sweeper reads it: the run still succeeds)", msg)
        return None
    return metrics[name]


def train(cfg: DictConfig) -> float | None:
    check_no_literal_secrets(cfg)
    check_run_length(cfg.trainer)
    policy = cfg.get("resume_policy", "strict")
    if policy not in POLICIES:
        raise ValueError(f"resume_policy: expected 'strict' or 'allow_changes', got {policy!r}")
    output_dir = Path(cfg.paths.output_dir)
    rank_zero = global_rank() == 0
    if rank_zero:
        save_and_print_config(cfg, output_dir, print_tree=cfg.extras.get("print_config", True))
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    prepare_wandb(cfg, output_dir)
    narrow_ddp_relaunch(cfg)
    parts = build(cfg)
    loaded, trainer = parts["loaded"], parts["trainer"]
    if rank_zero:
        write_model_files(loaded, output_dir / "checkpoints")
    log.info(
        "model %s: %.1fM parameters, prompt style %s",
        loaded.source,
        loaded.model.num_parameters / 1e6,
        loaded.prompt_style,
    )
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path:  # refused in one line before Lightning reads it, unless it fits this run
        fingerprint = {**run_fingerprint(cfg), **trainer_fingerprint(trainer)}
        check_resume(ckpt_path, parts["task"], fingerprint, policy)
    try:
        trainer.fit(parts["task"], datamodule=parts["datamodule"], ckpt_path=ckpt_path)
        metrics = {k: _finite(v) for k, v in trainer.callback_metrics.items()}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        metrics["global_step"] = trainer.global_step
        if trainer.is_global_zero:
            write_json(output_dir / "metrics.json", metrics, sort_keys=True)
            log.info("run folder: %s", output_dir)
    finally:
        _finish_wandb()
    return optimized_value(cfg.get("optimized_metric"), metrics)


def _finish_wandb() -> None:
    """Close the W&B run so every multirun job gets its own (lightning-hydra-template)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from tunelab.utils.errors import friendly_errors

    with friendly_errors():
        return train(cfg)


if __name__ == "__main__":
    main()
