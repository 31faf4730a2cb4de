"""Run identity across sweeps, resumes and DDP ranks.

- W&B: every multirun job is its own run, grouped by sweep (the multirun folder's name); the job's
  overrides go into the W&B config and tags; the run id is stored in the run folder so resuming
  continues the same W&B run.
- DDP: Lightning relaunches `sys.argv` for the other ranks with `hydra.run.dir` set to the run
  folder. Inside a multirun job that would relaunch the whole sweep into another folder, so the
  relaunch command is narrowed to this job's own overrides and folder.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from omegaconf import DictConfig, open_dict, read_write

WANDB_ID_FILE = "wandb_id.txt"


def redact_config(cfg: DictConfig) -> dict:
    from tunelab.utils.config import redact

    plain = redact(cfg)
    plain.pop("logger", None)  # would nest the W&B settings inside the W&B config
    return plain


def global_rank() -> int:
    """Rank of this process before the trainer exists (Lightning sets these for children)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


def hydra_info() -> dict:
    """Mode, sweep folder and job overrides of the current Hydra run (empty outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001 - not inside a Hydra app
        return {}
    mode = str(hc.mode.name) if hc.get("mode") is not None else "RUN"
    return {
        "mode": mode,
        "sweep_dir": str(hc.sweep.dir) if mode == "MULTIRUN" else None,
        "overrides": list(hc.overrides.task),
        "job_num": hc.job.get("num"),
    }


def prepare_wandb(cfg: DictConfig, output_dir: Path) -> None:
    """Fill group, id, tags and config of `cfg.logger.wandb` (no-op without a W&B logger)."""
    wb = (cfg.get("logger") or {}).get("wandb")
    if wb is None:
        return
    info = hydra_info()
    id_file = output_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    if global_rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
    overrides = [o for o in info.get("overrides", []) if not o.startswith("hydra.")]
    with open_dict(wb):
        if info.get("sweep_dir"):
            wb.group = f"{cfg.task_name}/{Path(info['sweep_dir']).name}"
            wb.name = f"{cfg.task_name}-{info.get('job_num')}"
        wb.id = run_id
        wb.resume = "allow"  # the same id continues the same W&B run after a resume
        wb.tags = list(wb.get("tags") or []) + [o[:64] for o in overrides]
        # The whole resolved config (secret-looking keys redacted) plus this job's overrides.
        wb.config = {**redact_config(cfg), "overrides": overrides}


def narrow_ddp_relaunch(cfg: DictConfig) -> None:
    """Make Lightning's DDP child processes run this job only (see module docstring)."""
    devices = cfg.trainer.get("devices", 1)
    multi = cfg.trainer.get("num_nodes", 1) > 1 or (isinstance(devices, int) and devices > 1)
    info = hydra_info()
    if info.get("mode") != "MULTIRUN" or not multi:
        return
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    job_dir = hc.runtime.output_dir
    with read_write(hc), open_dict(hc):
        hc.run.dir = job_dir
    sys.argv = [sys.argv[0], *info["overrides"]]
