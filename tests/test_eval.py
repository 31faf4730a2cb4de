"""Judging at the end of training and `python -m tunelab.eval`, end to end.

Judges here are real HTTP servers on loopback (a scripted one with known answers, so the numbers
are exact) or in-process tiny models; nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose_train
from tests.judge.stub_server import ScriptedServer, closed_port, ollama_reply, openai_reply
from tunelab.eval import evaluate
from tunelab.train import train

TRAIN = [
    "model=tiny-gpt2",
    "trainer=cpu",
    "data=instructions_file",
    "data.split=[0.5,0.25,0.25]",
    "trainer.max_epochs=1",
    "+trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "callbacks.responses.max_new_tokens=4",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run folder (checkpoints, responses.json, config.yaml), judged by a scripted Ollama."""
    words = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "tiger"]
    toy = tmp_path_factory.mktemp("data") / "toy.json"
    toy.write_text(
        json.dumps(
            [
                {"instruction": f"Say the word number {i}.", "input": "", "output": w}
                for i, w in enumerate(words)
            ]
        )
    )
    run = tmp_path_factory.mktemp("run")
    with ScriptedServer([ollama_reply("85")]) as stub, pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        cfg = compose_train(
            [
                *TRAIN,
                f"data.path={toy}",
                "judge=ollama",
                f"judge.backend.host={stub.url}",
                "optimized_metric=judge/mean",
                "logger=many",  # CSV and W&B (offline)
            ],
            run,
        )
        result = train(cfg)
        n_requests = sum(1 for r in stub.requests if r["path"] == "/api/chat")
    return {"run": run, "toy": toy, "result": result, "n_requests": n_requests}


def test_judge_eval_callback_after_fit(trained):
    run = trained["run"]
    assert trained["result"] == 85.0  # optimized_metric=judge/mean, returned for sweepers
    assert trained["n_requests"] == 2  # the two test records, once each
    judge = json.loads((run / "judge.json").read_text())
    responses = json.loads((run / "responses.json").read_text())
    assert [r["model_response"] for r in judge["records"]] == [
        r["model_response"] for r in responses
    ]
    assert [(r["score"], r["status"]) for r in judge["records"]] == [(85, "ok"), (85, "ok")]
    summary = judge["summary"]["judge"]
    assert summary["backend"] == "ollama" and summary["options"]["seed"] == 123
    assert summary["mean"] == 85 and summary["parse_failures"] == 0
    assert summary["histogram"]["counts"][8] == 2  # the 80-90 bin
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["judge/mean"] == 85.0 and metrics["judge/parse_failures"] == 0.0
    assert {"eval/rouge_l", "eval/bleu", "eval/exact_match"} <= set(metrics)
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("judge/mean") == "85.0" for r in rows)
    # W&B (offline): the per-record table as a file, the histogram and the numbers in the run.
    (wandb_run,) = (run / "wandb").glob("offline-run-*")
    (table,) = (wandb_run / "files" / "media" / "table" / "judge").glob("table_*.table.json")
    assert json.loads(table.read_text())["data"][0][5:8] == [85, "ok", "85"]
    history = next(wandb_run.glob("*.wandb")).read_bytes()
    assert b"judge/histogram" in history and b"judge/mean" in history


def test_unreachable_judge_stops_with_one_line_and_keeps_the_run(tmp_path, toy_file):
    out = tmp_path / "run"
    port = closed_port()
    cmd = [
        sys.executable,
        "-m",
        "tunelab.train",
        *TRAIN,
        f"data.path={toy_file}",
        "judge=openai",
        f"judge.backend.base_url=http://127.0.0.1:{port}/v1",
        "judge.backend.retries=1",
        "judge.backend.backoff=0.01",
        f"hydra.run.dir={out}",
        "extras.print_config=false",
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: judge openai-compatible at http://127.0.0.1:")
    assert "unreachable after 2 tries" in last
    assert f"python -m tunelab.eval responses={out / 'responses.json'}" in last
    assert "Traceback" not in res.stderr
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "responses.json").exists()
    assert not (out / "judge.json").exists()


def test_on_unreachable_warn_keeps_reference_metrics(tmp_path, toy_file):
    cfg = compose_train(
        [
            *TRAIN,
            f"data.path={toy_file}",
            "judge=ollama",
            f"judge.backend.host=http://127.0.0.1:{closed_port()}",
            "judge.backend.retries=0",
            "callbacks.judge_eval.on_unreachable=warn",
        ],
        tmp_path,
    )
    train(cfg)
    judge = json.loads((tmp_path / "judge.json").read_text())
    assert "judge" not in judge["summary"] and judge["summary"]["reference"]["eval/n"] == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "eval/rouge_l" in metrics and "judge/mean" not in metrics


def test_eval_entry_point_answers_and_judges_a_checkpoint(trained, tmp_path):
    out = tmp_path / "eval"
    with ScriptedServer([openai_reply("Score: 40"), openai_reply("I cannot rate this")]) as stub:
        cmd = [
            sys.executable,
            "-m",
            "tunelab.eval",
            f"ckpt_path={trained['run'] / 'checkpoints' / 'last.ckpt'}",
            "judge=openai",
            f"judge.backend.base_url={stub.url}/v1",
            "max_new_tokens=4",
            f"hydra.run.dir={out}",
            "extras.print_config=false",
        ]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # The test split of the checkpoint's own run (its config.yaml): the same two records.
    ours = json.loads((out / "responses.json").read_text())
    theirs = json.loads((trained["run"] / "responses.json").read_text())
    assert [r["instruction"] for r in ours] == [r["instruction"] for r in theirs]
    assert [r["model_response"] for r in ours] == [r["model_response"] for r in theirs]
    judge = json.loads((out / "judge.json").read_text())
    assert [r["status"] for r in judge["records"]] == ["ok", "no_number"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge/mean"] == 40.0 and metrics["judge/parse_failures"] == 1.0
    log = res.stdout + res.stderr
    assert "mean 40.00 over 1/2 answers; parse failures 1 {'ok': 1, 'no_number': 1}" in log
    assert "callbacks" not in (out / "config.yaml").read_text()


def _responses(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text(
        json.dumps(
            [
                {"instruction": q, "input": "", "output": ref, "model_response": ans}
                for q, ref, ans in rows
            ]
        )
    )
    return path


def test_eval_reference_metrics_only_worked_by_hand(tmp_path):
    responses = _responses(
        tmp_path / "responses.json",
        [("a", "red", "Red."), ("b", "the cat sat on the mat", "the cat sat")],
    )
    cfg = compose_train([f"responses={responses}", "judge=none"], tmp_path / "out", name="eval")
    metrics = evaluate(cfg)
    # Exact match only for the 1-word reference ("Red." normalises to "red"); ROUGE-L of the
    # second: LCS 3, precision 3/3, recall 3/6 -> F 2/3; mean (1 + 2/3) / 2.
    assert metrics["eval/exact_match"] == 1.0 and metrics["eval/exact_match_n"] == 2 - 1
    assert metrics["eval/rouge_l"] == pytest.approx(5 / 6)
    assert not any(k.startswith("judge/") for k in metrics)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)


def test_eval_with_a_local_judge_counts_prompts_too_long(tmp_path):
    # tiny-gpt2 has a 256-token context: the second judge prompt does not fit.
    responses = _responses(
        tmp_path / "responses.json", [("a", "red", "red"), ("b " * 300, "blue", "blue")]
    )
    cfg = compose_train(
        [
            f"responses={responses}",
            "judge=local",
            "judge.backend.source=tiny-gpt2",
            "judge.backend.max_new_tokens=3",
        ],
        tmp_path / "out",
        name="eval",
    )
    metrics = evaluate(cfg)
    rows = json.loads((tmp_path / "out" / "judge.json").read_text())["records"]
    assert rows[1]["status"] == "prompt_too_long" and "context of 256" in rows[1]["error"]
    assert rows[0]["judge_raw"].startswith("Score: ")  # prefilled
    assert metrics["judge/parse_failures"] >= 1.0


def test_eval_pairwise_mode(tmp_path):
    rows = [("q1", "r1", "x"), ("q2", "r2", "y")]
    a = _responses(tmp_path / "a.json", rows)
    b = _responses(tmp_path / "b.json", [(q, r, ans + "!") for q, r, ans in rows])
    with ScriptedServer([ollama_reply(v) for v in ["A", "B", "B", "A"]]) as stub:
        cfg = compose_train(
            [
                "mode=pairwise",
                f"responses_a={a}",
                f"responses_b={b}",
                "judge=ollama",
                f"judge.backend.host={stub.url}",
            ],
            tmp_path / "out",
            name="eval",
        )
        metrics = evaluate(cfg)
    assert metrics == {
        "pairwise/wins": 1.0,
        "pairwise/ties": 0.0,
        "pairwise/losses": 1.0,
        "pairwise/failures": 0.0,
        "pairwise/position_consistency": 1.0,
        "pairwise/win_rate": 0.5,
    }
    saved = json.loads((tmp_path / "out" / "pairwise.json").read_text())
    assert [r["outcome"] for r in saved["records"]] == ["win", "loss"]


@pytest.mark.slow
def test_smollm2_local_judge_gives_scores(tmp_path):
    """The embedded default judge (weak, but it answers with numbers when prefilled)."""
    responses = _responses(
        tmp_path / "responses.json",
        [("Name the capital of France.", "Paris", "Paris"), ("Add 2 and 3.", "5", "banana")],
    )
    cfg = compose_train([f"responses={responses}", "judge=local"], tmp_path / "out", name="eval")
    metrics = evaluate(cfg)
    assert metrics["judge/parse_failures"] == 0.0
    assert 0 <= metrics["judge/mean"] <= 100
