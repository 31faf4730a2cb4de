"""The bad-input catalogue (tests/README.md): each case gives one clear line naming what and where.

Most cases call the loaders directly (fast); the CLI cases check that `python -m tunelab.train`
prints that line as `error: ...` with exit code 1 and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tunelab.callbacks.lr_schedule import WarmupCosineLR
from tunelab.data.prompts import get_style
from tunelab.data.records import DataError, load_records, split_records
from tunelab.data.sft import SFTDataModule
from tunelab.models import Config, Decoder, load_model
from tunelab.models.loaders.checkpoint import load_tunelab_checkpoint
from tunelab.models.loaders.hf import load_hf_folder, save_hf_gpt2


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


OK = '{"instruction": "a", "output": "b"}'

# (case id, file name, file content, expected message pattern)
DATA_CASES = [
    ("malformed-json", "d.json", '[{"instruction": "a",', r"d\.json: malformed JSON \(.* line 1"),
    ("malformed-jsonl-line", "d.jsonl", OK + "\n{oops}\n", r"d\.jsonl:2: malformed JSON line"),
    ("not-a-list", "d.json", '{"instruction": "a"}', r"d\.json: expected a JSON list of records"),
    (
        "record-not-object",
        "d.json",
        '["just text"]',
        r"d\.json\[0\]: expected a JSON object, got str",
    ),
    (
        "wrong-type",
        "d.jsonl",
        '{"instruction": ["a"], "output": "b"}',
        r"d\.jsonl:1: field 'instruction' must be a string, got list",
    ),
    ("missing-output", "d.json", '[{"instruction": "a"}]', r"d\.json\[0\]: missing field 'output'"),
    (
        "empty-field",
        "d.jsonl",
        '{"instruction": "  ", "output": "b"}',
        r"d\.jsonl:1: field 'instruction' is empty",
    ),
    (
        "non-utf8",
        "d.jsonl",
        b'{"instruction": "caf\xe9", "output": "b"}',
        r"d\.jsonl: not valid UTF-8",
    ),
    ("empty-file", "d.jsonl", "\n\n", r"d\.jsonl: no records"),
    (
        "unknown-role",
        "d.jsonl",
        '{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        r"d\.jsonl:1: messages\[0\]: unknown role 'wizard'",
    ),
    (
        "chat-without-answer",
        "d.jsonl",
        '{"messages": [{"role": "user", "content": "x"}]}',
        r"d\.jsonl:1: 'messages' must end with an assistant message",
    ),
    (
        "bad-history",
        "d.jsonl",
        '{"instruction": "a", "output": "b", "history": [["only one"]]}',
        r"d\.jsonl:1: history\[0\] must be a \[user, assistant\] pair",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "pattern"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES]
)
def test_bad_data_files(tmp_path, name, content, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        load_records(write(tmp_path, name, content))
    assert "\n" not in str(info.value)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: data file not found"):
        load_records(tmp_path / "nope.json")


def test_empty_training_split_after_splitting(tmp_path):
    dm = SFTDataModule(path=str(write(tmp_path, "d.jsonl", OK)), split=(0.0, 0.0, 1.0))
    with pytest.raises(DataError, match="the training split is empty"):
        dm.load_splits()


def test_over_long_records_are_truncated_and_counted(tmp_path, caplog):
    from tunelab.models.tokenizer import gpt2_tokenizer

    rows = [{"instruction": "word " * 300, "output": "b"}, json.loads(OK)]
    dm = SFTDataModule(
        path=str(write(tmp_path, "d.json", json.dumps(rows))), split=(1.0, 0, 0), max_length=64
    )
    dm.connect(gpt2_tokenizer(), "alpaca")
    with caplog.at_level("WARNING"):
        dm.setup()
    assert "train: truncated 1 of 2 examples to max_length=64 tokens" in caplog.text
    assert max(len(e.ids) for e in dm.datasets["train"].examples) == 64


def test_config_value_errors():
    with pytest.raises(KeyError, match="unknown model preset 'gpt9'; available presets: "):
        Config.from_preset("gpt9")
    with pytest.raises(KeyError, match="unknown prompt style 'vicuna'; available: "):
        get_style("vicuna")
    with pytest.raises(ValueError, match="schedule: expected 'cosine' or 'constant', got 'step'"):
        WarmupCosineLR(schedule="step")
    with pytest.raises(
        ValueError, match="split fractions must be three non-negative numbers summing to 1"
    ):
        split_records([1, 2], (0.5, 0.6, 0.1), seed=0)
    with pytest.raises(ValueError, match="unknown model config keys \\['n_layers'\\]"):
        Config.from_dict({"n_layers": 3})


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.ckpt"):
        load_tunelab_checkpoint(tmp_path / "missing.ckpt")
    truncated = write(tmp_path, "trunc.ckpt", b"PK\x03\x04 not a whole zip")
    with pytest.raises(ValueError, match=r"trunc\.ckpt: cannot be read as a tunelab checkpoint"):
        load_tunelab_checkpoint(truncated)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"tunelab": {}, "state_dict": {}, "payload": Evil()}, evil)
    with pytest.raises(ValueError, match=r"evil\.ckpt: cannot be read.*weights_only"):
        load_tunelab_checkpoint(evil)
    not_ours = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(1)}, not_ours)
    with pytest.raises(ValueError, match=r"plain\.ckpt: not a tunelab checkpoint"):
        load_tunelab_checkpoint(not_ours)


def test_hf_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        (tmp_path / "empty").mkdir()
        load_hf_folder(tmp_path / "empty")
    folder = save_hf_gpt2(Decoder(Config.from_preset("tiny-gpt2")), tmp_path / "g")
    (folder / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match="no weights file; expected one of model.safetensors"
    ):
        load_hf_folder(folder)
    with pytest.raises(FileNotFoundError, match="is neither a preset"):
        load_model(str(tmp_path / "no-such-model"))


CLI_CASES = [
    (["model=gpt9"], "Could not find 'model/gpt9'"),
    (["experiment=no_such_experiment"], "Could not find 'experiment/no_such_experiment'"),
    (["data.batch_sise=8"], "Key 'batch_sise' is not in struct"),
    (["model.source=gpt9"], "error: model source 'gpt9' is neither a preset"),
    (["ckpt_path=/no/such.ckpt"], "error: ckpt_path: checkpoint not found: /no/such.ckpt"),
]


@pytest.mark.parametrize(("overrides", "expected"), CLI_CASES, ids=[c[1][:30] for c in CLI_CASES])
def test_cli_config_errors_are_one_line(tmp_path, overrides, expected):
    cmd = [
        sys.executable,
        "-m",
        "tunelab.train",
        "trainer=cpu",
        f"hydra.run.dir={tmp_path}",
        "extras.print_config=false",
        *overrides,
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert expected in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
