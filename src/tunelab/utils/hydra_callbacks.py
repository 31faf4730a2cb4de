"""Hydra callbacks (conf/hydra/default.yaml): problems Hydra meets before tunelab's code runs.

`CheckRunFolder`: a run or sweep folder that cannot be created or written (read-only file
system, no permission, a file in the way) is one line and exit code 1, instead of the traceback
Hydra prints when it fails to create the folder itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def run_folder_problem(folder: str | Path) -> str | None:
    """Why `folder` cannot hold a run's files, or None when it can."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return "a file is in the way"
    except OSError as e:
        return (e.strerror or str(e)).lower()
    if not os.access(folder, os.W_OK | os.X_OK):
        return "not writable (read-only file system or no permission)"
    return None


def _stop_if_unusable(folder: Any, what: str) -> None:
    if folder is None:
        return
    problem = run_folder_problem(str(folder))
    if problem:
        print(f"error: cannot create the {what} folder {folder}: {problem}", file=sys.stderr)
        sys.exit(1)


class CheckRunFolder(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _stop_if_unusable(OmegaConf.select(config, "hydra.run.dir"), "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _stop_if_unusable(OmegaConf.select(config, "hydra.sweep.dir"), "sweep")
