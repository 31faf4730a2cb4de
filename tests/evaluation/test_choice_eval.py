"""ChoiceEval during a short tiny-gpt2 SFT run: at start, every validation, and at the end."""

from __future__ import annotations

import json

from omegaconf import open_dict

from tests.conftest import compose_train
from tunelab.train import train


def test_choice_eval_callback_measures_at_start_each_validation_and_logs(tmp_path, toy_file):
    mc = tmp_path / "mc.jsonl"
    rows = [
        {
            "question": f"Say the word number {i}.",
            "choices": ["apple", "river", "stone"],
            "answer": i % 3,
        }
        for i in range(3)
    ]
    mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_train(
        [
            "model=tiny-gpt2",
            "trainer=cpu",
            "data=instructions_file",
            f"data.path={toy_file}",
            "data.split=[0.5,0.5,0.0]",
            "data.batch_size=2",
            "trainer.max_epochs=1",
            "+trainer.val_check_interval=1",
            "+trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
            "~callbacks.responses",
            "~callbacks.model_checkpoint",
            "optimized_metric=choice/toy/acc",
        ],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.callbacks.choice_eval = {
            "_target_": "tunelab.callbacks.choice_eval.ChoiceEval",
            "sets": [{"path": str(mc), "name": "toy"}],
            "output_dir": str(tmp_path),
            "every_n_validations": 1,
            "at_start": True,
        }
    acc = train(cfg)
    history = json.loads((tmp_path / "choice_eval.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 1, 2]  # start, after each of the 2 steps
    assert acc == history[-1]["choice/toy/acc"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= {"choice/toy/acc", "choice/toy/acc_norm"}
    csv_text = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "choice/toy/acc" in csv_text.splitlines()[0]


def test_demo_and_cpt_replay_run_choice_eval_on_both_embedded_sets(tmp_path):
    from hydra.utils import instantiate

    from tunelab.callbacks.choice_eval import ChoiceEval

    for experiment, at_start in (("demo", False), ("cpt_replay", True)):
        cfg = compose_train([f"experiment={experiment}"], tmp_path)
        spec = cfg.callbacks.choice_eval
        assert (spec.limit, spec.at_start) == (64, at_start)
        callback = instantiate(spec)
        assert isinstance(callback, ChoiceEval)
        assert sorted(callback.data) == ["prose_cloze", "python_semantics"]
        assert all(len(items) == 64 for items, _ in callback.data.values())
