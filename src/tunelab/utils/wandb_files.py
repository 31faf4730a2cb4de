"""Read an offline W&B run back from wandb's own `.wandb` file (run id, group, config, history).

Used by tests and `tunelab.summarize` to check what really reached W&B, without a server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7  # crc32 (4), length (2), type (1); the file starts with ":W&B", magic (2), version (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    """Yield the raw protobuf records of a `.wandb` file (LevelDB log format, as wandb writes it)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = 7, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        body = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            pending = body
        elif kind == _MIDDLE:
            pending += body
        elif kind == _LAST:
            yield pending + body
            pending = b""


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {
        "id": None,
        "group": None,
        "tags": [],
        "config": {},
        "history": [],
        "summary": {},
    }
    for f in files:
        for data in _records(f):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                out["id"], out["group"] = rec.run.run_id, rec.run.run_group
                out["tags"] = list(rec.run.tags)
                for item in rec.run.config.update:
                    out["config"][item.key] = json.loads(item.value_json)
            elif kind == "config":
                for item in rec.config.update:
                    out["config"][item.key] = json.loads(item.value_json)
            elif kind == "history":
                row = {}
                for item in rec.history.item:
                    key = item.key or "/".join(item.nested_key)
                    row[key] = json.loads(item.value_json)
                out["history"].append(row)
            elif kind == "summary":
                for item in rec.summary.update:
                    key = item.key or "/".join(item.nested_key)
                    out["summary"][key] = json.loads(item.value_json)
    return out


def offline_runs(folder: str | Path) -> list[Path]:
    """Every offline run directory under a run or multirun folder."""
    return sorted(p for p in Path(folder).rglob("offline-run-*") if p.is_dir())
