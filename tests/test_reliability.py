"""Interruptions, atomic checkpoints, numerical faults and secrets, end to end."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tunelab.callbacks.reliability import AtomicCheckpointIO
from tunelab.models.loaders.checkpoint import read_checkpoint


def base_args(toy_file: Path, run_dir: Path) -> list[str]:
    return [
        "model=tiny-gpt2",
        "trainer=cpu",
        "data=instructions_file",
        f"data.path={toy_file}",
        "data.split=[1.0,0.0,0.0]",
        "data.batch_size=2",
        "trainer.max_epochs=6",
        "trainer.check_val_every_n_epoch=100",
        "callbacks.periodic_checkpoint.every_n_steps=2",
        "~callbacks.responses",
        "~callbacks.progress_bar",
        "extras.print_config=false",
        "optimizer.lr=3e-3",
        f"hydra.run.dir={run_dir}",
        "optimized_metric=null",
    ]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen(
        [sys.executable, "-m", "tunelab.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 24
    return ckpt["state_dict"]


def _saved_step(path: Path) -> int:
    return read_checkpoint(path)["global_step"] if path.exists() else -1  # written atomically


def interrupt_and_resume(toy_file: Path, tmp_path: Path, sig: int, after_step: int = 1) -> None:
    """Cut a run once a checkpoint of at least `after_step` exists, resume, compare weights."""
    reference, interrupted = tmp_path / "ref", tmp_path / "cut"
    code, err = finish(start(base_args(toy_file, reference)))
    assert code == 0, err[-3000:]
    proc = start(base_args(toy_file, interrupted))
    last = interrupted / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while _saved_step(last) < after_step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    finish(proc)
    step_at_cut = read_checkpoint(last)["global_step"]
    assert after_step <= step_at_cut < 24
    code, err = finish(start([*base_args(toy_file, interrupted), "ckpt_path=last"]))
    assert code == 0, err[-3000:]
    a, b = final_weights(reference), final_weights(interrupted)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path, toy_file):
    interrupt_and_resume(toy_file, tmp_path, signal.SIGTERM)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, toy_file):
    interrupt_and_resume(toy_file, tmp_path, signal.SIGKILL)


@pytest.mark.slow
def test_resume_in_a_later_epoch_matches_an_uninterrupted_run(tmp_path, toy_file):
    # 4 steps per epoch: cut at step 8 or later, where the data order of epochs 2+ must be
    # restored too (it once restarted from epoch 0's shuffle)
    interrupt_and_resume(toy_file, tmp_path, signal.SIGTERM, after_step=8)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, toy_file):
    run = tmp_path / "run"
    args = [a for a in base_args(toy_file, run) if not a.startswith("optimizer.lr")]
    code, err = finish(start([*args, "optimizer.lr=1e35", "callbacks.grad_clip.max_norm=1e30"]))
    assert code == 1, err[-3000:]
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("error: non-finite ") and " at step " in last_line, err[-2000:]
    assert "Traceback" not in err
    last = run / "checkpoints" / "last.ckpt"
    if last.exists():  # written before the fault: must hold finite weights
        state = read_checkpoint(last)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values())


def test_skip_policy_counts_non_finite_batches():
    from tunelab.models.config import Config
    from tunelab.models.decoder import Decoder
    from tunelab.models.tokenizer import gpt2_tokenizer
    from tunelab.tasks.sft import SFTTask

    task = SFTTask(
        Decoder(Config.from_preset("tiny-gpt2")), gpt2_tokenizer(), "alpaca", on_nonfinite="skip"
    )
    task.log = lambda *a, **k: None
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "targets": torch.tensor([[2, 3, 4]])}
    with torch.no_grad():
        task.model.wte.weight[1] = float("nan")
    assert task.training_step(batch, 0) is None
    assert task.skipped_batches == 1
    with pytest.raises(ValueError, match="expected 'stop' or 'skip'"):
        SFTTask(task.model, task.tokenizer, "alpaca", on_nonfinite="ignore")


def test_api_keys_never_reach_the_run_folder(tmp_path, toy_file):
    secret = "sk-PLANTED-0123456789abcdef"
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "OPENAI_API_KEY": secret, "WANDB_API_KEY": secret}
    args = [*base_args(toy_file, run), "trainer.max_epochs=1", "logger=many"]
    res = subprocess.run(
        [sys.executable, "-m", "tunelab.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.suffix == ".ckpt" for p in files)
    leaks = [p for p in files if secret.encode() in p.read_bytes()]
    assert leaks == []
    assert secret not in res.stdout + res.stderr


def test_a_secret_written_into_the_config_is_refused(tmp_path, toy_file):
    args = [*base_args(toy_file, tmp_path / "run"), "+logger.wandb_api_key=sk-literal"]
    res = subprocess.run(
        [sys.executable, "-m", "tunelab.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1
    assert "error: config key logger.wandb_api_key holds a secret value" in res.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


# Outputs written atomically, full disks and read-only folders (issue 15) ----------------------
def test_output_files_are_written_atomically(tmp_path):
    from tunelab.callbacks.responses import write_responses
    from tunelab.data.records import Record
    from tunelab.utils.errors import OutputError
    from tunelab.utils.io import write_json

    path = write_json(tmp_path / "metrics.json", {"val/loss": 1.5})
    assert path.read_text() == '{\n  "val/loss": 1.5\n}\n'
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600
    # text UTF-8 cannot encode: refused naming the file, the previous version stays, no temp file
    with pytest.raises(
        OutputError, match=r"metrics\.json: cannot write: .*'\\ud800' at position 13"
    ):
        write_json(tmp_path / "metrics.json", {"note": "\ud800"})
    assert path.read_text() == '{\n  "val/loss": 1.5\n}\n'
    with pytest.raises(OutputError, match=r"responses\.json: cannot write"):
        write_responses(tmp_path / "responses.json", [Record("q", output="a")], ["\udfff"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_tables_summaries_and_tokenizers_are_written_atomically(tmp_path):
    from tunelab.models.tokenizer import gpt2_tokenizer
    from tunelab.summarize import write_tables
    from tunelab.utils.errors import OutputError
    from tunelab.utils.io import write_csv

    rows = [{"job": "0", "val/loss": 1.25, "extra": "x"}, {"job": "1", "val/loss": 0.5}]
    path = write_csv(tmp_path / "t.csv", rows, ["job", "val/loss"])
    assert path.read_bytes() == b"job,val/loss\r\n0,1.25\r\n1,0.5\r\n"
    # a row that cannot be written: refused naming the file, the previous table stays
    with pytest.raises(OutputError, match=r"t\.csv: cannot write"):
        write_csv(tmp_path / "t.csv", [{"job": "\ud800"}], ["job"])
    assert path.read_bytes() == b"job,val/loss\r\n0,1.25\r\n1,0.5\r\n"
    csv_path, md_path = write_tables(rows, tmp_path / "sweep", metrics=["val/loss"])
    assert md_path.read_text().splitlines()[2] == "| 0 | x | 1.25 |"  # non-metric columns stay
    gpt2_tokenizer().save(tmp_path / "tok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep", "t.csv", "tok"]
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json"]


def _no_space(obj, f, *args, **kwargs):
    f.write(b"part of a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_a_checkpoint_save_is_one_line(tmp_path, monkeypatch, capsys):
    from tunelab.utils.errors import OutputError, friendly_errors

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(torch, "save", _no_space)
    with pytest.raises(OutputError, match=r"last\.ckpt: no space left on device"):
        io.save_checkpoint({"step": 2}, path)
    # the CLI's wrapper: one line, exit code 1
    with pytest.raises(SystemExit) as exit_info, friendly_errors():
        io.save_checkpoint({"step": 2}, path)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: {path}: no space left on device (disk full or quota exceeded)\n"
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}  # the last good checkpoint
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    # torch's own writer reports ENOSPC inside a RuntimeError: still the same one line
    monkeypatch.setattr(
        torch,
        "save",
        lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError(
                "[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: "
                "No space left on device"
            )
        ),
    )
    with pytest.raises(OutputError, match=r"last\.ckpt: no space left on device"):
        io.save_checkpoint({"step": 2}, path)


def test_read_only_output_folder_is_one_line(tmp_path, monkeypatch):
    import tempfile

    from tunelab.utils.errors import OutputError
    from tunelab.utils.io import write_json

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # as root, chmod would not stop a write
    with pytest.raises(OutputError, match=r"metrics\.json: cannot write: read-only file system"):
        write_json(tmp_path / "metrics.json", {})


def test_a_run_folder_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    from tunelab.utils.hydra_callbacks import run_folder_problem

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run_folder_problem(blocker / "run") == "not a directory"
    assert run_folder_problem(tmp_path / "ok" / "run") is None
    monkeypatch.setattr(os, "access", lambda *a: False)  # a read-only file system (root included)
    assert run_folder_problem(tmp_path / "ok" / "run") == (
        "not writable (read-only file system or no permission)"
    )
    monkeypatch.undo()
    res = subprocess.run(
        [sys.executable, "-m", "tunelab.train", f"hydra.run.dir={blocker}/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1
    assert res.stderr == f"error: cannot create the run folder {blocker}/run: not a directory\n"
