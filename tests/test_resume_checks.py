"""Resume checks (issue 15 part 6): `ckpt_path=` is validated before fit, in one line."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import compose_train
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import gpt2_tokenizer
from tunelab.tasks.cpt import CPTTask
from tunelab.tasks.sft import SFTTask
from tunelab.train import train
from tunelab.utils.resume import check_resume, model_metadata

FINGERPRINT = {
    "optimizer._target_": "torch.optim.AdamW",
    "optimizer.lr": 1e-3,
    "data.batch_size": 2,
    "data.path": "/data/a.json",
    "trainer.world_size": 1,
}


def tiny_task(n_embd: int | None = None) -> SFTTask:
    cfg = Config.from_preset("tiny-gpt2")
    if n_embd is not None:
        cfg = Config.from_dict({**cfg.to_dict(), "n_embd": n_embd})
    return SFTTask(Decoder(cfg), gpt2_tokenizer(), "alpaca")


def save_ckpt(path, task: SFTTask, run: dict | None = FINGERPRINT, **extra) -> str:
    ckpt = {"state_dict": {}, "optimizer_states": [], "loops": {}, **extra}
    task.on_save_checkpoint(ckpt)
    if run is not None:
        ckpt["tunelab_run"] = dict(run)
    torch.save(ckpt, path)
    return str(path)


def test_a_matching_checkpoint_passes(tmp_path):
    task = tiny_task()
    check_resume(save_ckpt(tmp_path / "a.ckpt", task), task, dict(FINGERPRINT))


def test_a_cpt_checkpoint_resumes_with_its_progress_saved(tmp_path):
    """The step-0 losses and blocks seen are progress, not settings: the same run resumes."""
    task = CPTTask(Decoder(Config.from_preset("tiny-gpt2")), gpt2_tokenizer(), "alpaca")
    task.baseline, task.blocks_seen = {"new": 2.5, "old": 2.0}, {"new": 18, "old": 6}
    path = save_ckpt(tmp_path / "cpt.ckpt", task)
    check_resume(
        path,
        CPTTask(Decoder(Config.from_preset("tiny-gpt2")), gpt2_tokenizer(), "alpaca"),
        dict(FINGERPRINT),
    )


def test_truncated_and_code_carrying_checkpoints_are_refused_in_one_line(tmp_path):
    task = tiny_task()
    good = save_ckpt(tmp_path / "a.ckpt", task)
    with open(good, "rb") as f:
        data = f.read()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.ckpt: cannot be read as a tunelab checkpoint"):
        check_resume(str(tmp_path / "cut.ckpt"), task, dict(FINGERPRINT))

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = save_ckpt(tmp_path / "evil.ckpt", task, payload=Evil())
    with pytest.raises(ValueError, match=r"evil\.ckpt: cannot be read.*weights_only=True"):
        check_resume(evil, task, dict(FINGERPRINT))


def test_another_model_shape_is_refused_whatever_the_policy(tmp_path):
    path = save_ckpt(tmp_path / "a.ckpt", tiny_task(n_embd=32))
    for policy in ("strict", "allow_changes"):
        with pytest.raises(
            ValueError,
            match=r"a\.ckpt: cannot resume: model_config\.n_embd: checkpoint 32, now 64 ",
        ):
            check_resume(path, tiny_task(), dict(FINGERPRINT), policy)


def test_another_optimizer_class_is_refused_whatever_the_policy(tmp_path):
    task = tiny_task()
    path = save_ckpt(tmp_path / "a.ckpt", task)
    now = {**FINGERPRINT, "optimizer._target_": "torch.optim.SGD"}
    with pytest.raises(
        ValueError,
        match=r"optimizer\._target_: checkpoint 'torch\.optim\.AdamW', now 'torch\.optim\.SGD'",
    ):
        check_resume(path, task, now, "allow_changes")


def test_another_batch_size_is_refused_unless_changes_are_allowed(tmp_path, caplog):
    task = tiny_task()
    path = save_ckpt(tmp_path / "a.ckpt", task)
    now = {**FINGERPRINT, "data.batch_size": 4, "optimizer.lr": 3e-4}
    expected = (
        "this run differs from the checkpoint's: data.batch_size: checkpoint 2, now 4; "
        "optimizer.lr: checkpoint 0.001, now 0.0003; resume with the same settings, or add "
        "resume_policy=allow_changes if you mean it"
    )
    with pytest.raises(ValueError) as info:
        check_resume(path, task, now)
    assert str(info.value) == f"ckpt_path={path}: {expected}"
    with caplog.at_level("WARNING"):
        check_resume(path, task, now, "allow_changes")
    assert "resuming with changes (resume_policy=allow_changes): data.batch_size" in caplog.text
    with pytest.raises(ValueError, match="resume_policy: expected 'strict' or 'allow_changes'"):
        check_resume(path, task, now, "lenient")


def test_weights_only_and_unfingerprinted_checkpoints(tmp_path, caplog):
    task = tiny_task()
    weights_only = tmp_path / "w.ckpt"
    ckpt = {"state_dict": {}}
    task.on_save_checkpoint(ckpt)
    torch.save(ckpt, weights_only)
    with pytest.raises(ValueError, match=r"w\.ckpt: holds weights only .* model\.source=<path>"):
        check_resume(str(weights_only), task, dict(FINGERPRINT))
    old = save_ckpt(tmp_path / "old.ckpt", task, run=None)
    with caplog.at_level("WARNING"):
        check_resume(old, task, dict(FINGERPRINT))
    assert "carries no run fingerprint" in caplog.text


def test_model_metadata_is_what_the_task_saves():
    meta = model_metadata(tiny_task())
    assert meta["model_config.n_embd"] == 64 and meta["prompt_style"] == "alpaca"
    assert "tokens_seen" not in meta and meta["tokenizer"]["name"] == "gpt2"


def test_resuming_a_real_run_with_another_batch_size(tmp_path, toy_file):
    base = [
        "model=tiny-gpt2",
        "trainer=cpu",
        "data=instructions_file",
        f"data.path={toy_file}",
        "data.split=[1.0,0.0,0.0]",
        "data.batch_size=2",
        "trainer.max_epochs=5",
        "+trainer.limit_val_batches=0",
        "+trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "~callbacks.responses",
        "optimized_metric=null",
    ]
    train(compose_train([*base, "trainer.max_steps=2"], tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["tunelab_run"]["data.batch_size"] == 2
    resumed = [*base, "trainer.max_steps=3", f"ckpt_path={last}"]
    with pytest.raises(ValueError, match=r"data\.batch_size: checkpoint 2, now 4; resume with"):
        train(compose_train([*resumed, "data.batch_size=4"], tmp_path / "b"))
    # the same settings resume (Lightning reads the checkpoint with weights_only=True)
    train(compose_train(resumed, tmp_path / "c"))
    assert torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt")["global_step"] == 3
