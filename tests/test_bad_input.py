"""The bad-input catalogue (tests/README.md): each case gives one clear line naming what and where.

Most cases call the loaders directly (fast); the CLI cases check that `python -m tunelab.train`
prints that line as `error: ...` with exit code 1 and no traceback.
"""

from __future__ import annotations

import json
import os
import re
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

    rows = [
        {"instruction": "a", "output": "word " * 300},  # cut: the answer continues past 64
        {"instruction": "word " * 300, "output": "b"},  # the prompt alone is too long: dropped
        json.loads(OK),
    ]
    dm = SFTDataModule(
        path=str(write(tmp_path, "d.json", json.dumps(rows))), split=(1.0, 0, 0), max_length=64
    )
    dm.connect(gpt2_tokenizer(), "alpaca")
    with caplog.at_level("WARNING"):
        dm.setup()
    assert "train: truncated 1 of 3 examples to max_length=64 tokens" in caplog.text
    assert "train: dropped 1 of 3 examples whose prompt is longer than max_length=64" in caplog.text
    examples = dm.datasets["train"].examples
    assert sorted(len(e.ids) for e in examples)[-1] == 64 and len(examples) == 2
    cut = next(e for e in examples if e.next_id is not None)
    assert cut.next_id == gpt2_tokenizer().encode(" word")[0]  # the real next token, not <eot>


def test_no_training_example_left_after_truncation(tmp_path):
    from tunelab.models.tokenizer import gpt2_tokenizer

    rows = [{"instruction": "word " * 300, "output": "b"}]
    dm = SFTDataModule(
        path=str(write(tmp_path, "d.json", json.dumps(rows))), split=(1.0, 0, 0), max_length=64
    )
    dm.connect(gpt2_tokenizer(), "alpaca")
    with pytest.raises(DataError, match=r"data\.max_length=64: every training example's prompt"):
        dm.setup()


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
    (["trainer.max_steps=0"], "error: trainer.max_steps=0: nothing would be trained"),
    (["data.batch_size=0"], "error: data.batch_size must be an integer >= 1, got 0"),
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


# Round two (issue 15): files that once escaped the one-line errors --------------------------
ROUND_TWO_CASES = [
    ("deeply-nested", "d.json", "[" * 100_000, r"d\.json: JSON nested too deeply to read"),
    (
        "deeply-nested-line",
        "d.jsonl",
        OK + "\n" + "[" * 100_000 + "\n",
        r"d\.jsonl:2: JSON nested too deeply to read",
    ),
    (
        "5000-digit-integer",
        "d.jsonl",
        '{"instruction": "a", "output": "b", "id": ' + "7" * 5000 + "}",
        r"d\.jsonl:1: cannot read JSON: Exceeds the limit \(4300 digits\)",
    ),
    (
        "lone-surrogate",
        "d.jsonl",
        OK + '\n{"instruction": "a", "output": "ok \\ud800"}\n',
        r"d\.jsonl:2: field 'output' holds a lone surrogate .* at character 3",
    ),
    (
        "lone-surrogate-nested",
        "d.json",
        '[{"messages": [{"role": "user", "content": "x"}, '
        '{"role": "assistant", "content": "\\udfff"}]}]',
        r"d\.json\[0\]: field 'messages\[1\]\.content' holds a lone surrogate",
    ),
    (
        "non-utf8-after-bom",
        "d.jsonl",
        b'\xef\xbb\xbf{"instruction": "caf\xe9", "output": "b"}',
        r"d\.jsonl: not valid UTF-8 \(byte offset 23\)",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [c[1:] for c in ROUND_TWO_CASES],
    ids=[c[0] for c in ROUND_TWO_CASES],
)
def test_bad_data_files_round_two(tmp_path, name, content, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        load_records(write(tmp_path, name, content))
    assert "\n" not in str(info.value)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    for name in ("d.json", "d.jsonl"):
        body = f"[{OK}]" if name.endswith(".json") else OK + "\n"
        (record,) = load_records(write(tmp_path, name, bom + body.encode()))
        assert (record.instruction, record.output) == ("a", "b")


def test_jsonl_lines_split_on_newline_only(tmp_path):
    # U+2028 inside a string is text, not a line break (str.splitlines() would cut there)
    rows = load_records(write(tmp_path, "d.jsonl", '{"instruction": "a\u2028b", "output": "c"}\n'))
    assert rows[0].instruction == "a\u2028b"


def test_paths_that_are_not_regular_files(tmp_path):
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(DataError, match=r"folder\.json: is a directory; expected a data file"):
        load_records(folder)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)  # opening it would block until a writer comes: never opened
    with pytest.raises(DataError, match=r"pipe\.jsonl: data file is a FIFO; expected a regular"):
        load_records(fifo)
    loop = tmp_path / "loop.json"
    loop.symlink_to(tmp_path / "loop2.json")
    (tmp_path / "loop2.json").symlink_to(loop)
    with pytest.raises(DataError, match=r"loop\.json: data file is a symbolic link loop"):
        load_records(loop)
    broken = tmp_path / "broken.json"
    broken.symlink_to(tmp_path / "gone.json")
    with pytest.raises(DataError, match=r"broken\.json: data file is a broken symbolic link"):
        load_records(broken)
    dm = SFTDataModule(path=str(folder))
    with pytest.raises(DataError, match="is a directory"):
        dm.load_splits()


def test_responses_files_for_eval_name_the_file(tmp_path):
    from tunelab.judge.evaluate import read_responses

    bad = write(tmp_path, "responses.json", b'[{"instruction": "caf\xe9", "model_response": "x"}]')
    with pytest.raises(DataError, match=r"responses\.json: not valid UTF-8 \(byte offset 21\)"):
        read_responses(bad)
    surrogate = write(
        tmp_path, "r2.json", '[{"instruction": "a", "output": "b", "model_response": "\\ud800"}]'
    )
    with pytest.raises(DataError, match=r"r2\.json\[0\]: field 'model_response' holds a lone"):
        read_responses(surrogate)
    with pytest.raises(DataError, match=r"folder: is a directory; expected a responses file"):
        (tmp_path / "folder").mkdir()
        read_responses(tmp_path / "folder")


# Config values checked where they enter (issue 15 part 3) -------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size must be an integer >= 1, got 0"),
        ({"batch_size": -2}, "data.batch_size must be an integer >= 1, got -2"),
        ({"max_length": -5}, "data.max_length must be an integer >= 1 or null, got -5"),
        ({"limit": -1400}, "data.limit must be an integer >= 1 or null, got -1400"),
        ({"limit": 0}, "data.limit must be an integer >= 1 or null, got 0"),
        ({"num_workers": -1}, "data.num_workers must be an integer >= 0, got -1"),
        ({"batch_size": 2.5}, "data.batch_size must be an integer >= 1, got 2.5"),
    ],
)
def test_data_sizes_are_checked_where_they_enter(kwargs, message):
    from tunelab.data.preference import PreferenceDataModule

    with pytest.raises(ValueError, match=re.escape(message)):
        SFTDataModule(**kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        PreferenceDataModule(**kwargs)


def test_a_warmup_longer_than_the_run_is_a_warning(caplog):
    from types import SimpleNamespace

    model = torch.nn.Linear(1, 1)
    trainer = SimpleNamespace(
        estimated_stepping_batches=10, optimizers=[torch.optim.SGD(model.parameters(), lr=0.1)]
    )
    with caplog.at_level("WARNING"):
        assert WarmupCosineLR(warmup=20).resolve(trainer) == (10, 20, 0.1)
    assert (
        "callbacks.lr_schedule.warmup=20 is 20 steps, not shorter than the run's 10: "
        "the LR never reaches peak_lr=0.1"
    ) in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        WarmupCosineLR(warmup=0.5).resolve(trainer)
    assert "warmup" not in caplog.text
