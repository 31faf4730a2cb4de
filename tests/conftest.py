"""Shared fixtures: compose configs the way `python -m tunelab.train` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tunelab.utils.config import conf_dir

ROOT = Path(__file__).resolve().parents[1]


def compose_train(overrides: list[str], output_dir: Path, name: str = "train") -> DictConfig:
    """Compose conf/<name>.yaml with overrides, set up as inside a Hydra run in output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir / "logs")
            cfg.extras.print_config = False
    return cfg


@pytest.fixture
def toy_records() -> list[dict]:
    """Eight short records a tiny model can memorise."""
    words = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "tiger"]
    return [
        {"instruction": f"Say the word number {i}.", "input": "", "output": w}
        for i, w in enumerate(words)
    ]


def quick_sft_overrides(toy_file: Path, *extra: str) -> list[str]:
    """A short tiny-gpt2 SFT run on the toy records: all data for training, no validation,
    checkpoints, progress bar or generated responses; `extra` adds or overrides keys."""
    return [
        "model=tiny-gpt2",
        "trainer=cpu",
        "data=instructions_file",
        f"data.path={toy_file}",
        "data.split=[1.0,0.0,0.0]",
        "+trainer.limit_val_batches=0",
        "+trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "~callbacks.responses",
        "~callbacks.model_checkpoint",
        *extra,
    ]


@pytest.fixture
def toy_file(tmp_path: Path, toy_records: list[dict]) -> Path:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(toy_records), encoding="utf-8")
    return path
