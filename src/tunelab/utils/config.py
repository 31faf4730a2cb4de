"""Config helpers: where conf/ lives, printing the resolved config, instantiating groups."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from tunelab.utils.io import atomic_write_text

SECRET_MARKERS = ("api_key", "apikey", "token", "secret", "password")


def conf_dir() -> Path:
    """conf/ beside the source tree (editable install) or TUNELAB_CONF."""
    env = os.environ.get("TUNELAB_CONF")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "conf" / "train.yaml").exists():
            return parent / "conf"
    raise FileNotFoundError(
        "tunelab: cannot find conf/ (install with `pip install -e .` or set TUNELAB_CONF)"
    )


def _secret_key(key: str) -> bool:
    """A key whose value would be a secret; `*_env` keys only name the variable holding one."""
    key = key.lower()
    return any(m in key for m in SECRET_MARKERS) and not key.endswith("_env")


def redact(cfg: Any) -> Any:
    """A plain copy of the config with values of secret-looking keys replaced."""
    if isinstance(cfg, DictConfig):
        keys = [k for k in cfg if k != "hydra"]  # Hydra's own node only exists in composed tests
        container = {k: _plain(cfg, k) for k in keys}
    else:
        container = cfg

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    "***"
                    if _secret_key(str(k)) and node[k] and isinstance(node[k], str)
                    else walk(node[k])
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(container)


def literal_secrets(cfg: DictConfig) -> list[str]:
    """Keys that hold a secret value in the config itself (secrets belong in the environment)."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                key = str(k).lower()
                where = f"{path}.{k}" if path else str(k)
                if (
                    key.endswith(SECRET_MARKERS)
                    and not key.endswith("_env")
                    and isinstance(v, str)
                    and v.strip()
                    and v != "***"
                ):
                    found.append(where)
                walk(v, where)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk({k: _plain(cfg, k) for k in cfg if k != "hydra"}, "")
    return found


def check_no_literal_secrets(cfg: DictConfig) -> None:
    keys = literal_secrets(cfg)
    if keys:
        raise ValueError(
            f"config key {keys[0]} holds a secret value; secrets come from the environment: "
            f"set an environment variable and name it in `{keys[0].rsplit('.', 1)[-1]}_env`"
        )


def _plain(cfg: DictConfig, key: str) -> Any:
    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def save_and_print_config(cfg: DictConfig, output_dir: Path, print_tree: bool = True) -> None:
    plain = redact(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(plain)))
    if not print_tree:
        return
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in plain.items():
        branch = tree.add(str(key))
        text = (
            OmegaConf.to_yaml(OmegaConf.create({key: value}))
            if isinstance(value, dict | list)
            else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def instantiate_dict(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); skips nulls."""
    out = []
    if not group:
        return out
    for _, conf in group.items():
        if conf is not None and isinstance(conf, DictConfig) and "_target_" in conf:
            out.append(hydra.utils.instantiate(conf))
    return out
