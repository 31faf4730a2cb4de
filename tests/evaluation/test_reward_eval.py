"""mode=reward: reward-model, DPO implicit-reward and pairwise-judge accuracy on the same pairs,
against direct computations; judge=reward scoring answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from tunelab.data.preference import load_preferences
from tunelab.evaluation import reward as rw
from tunelab.judge.backends import JudgeBackend
from tunelab.judge.evaluate import Judge
from tunelab.judge.prompts import get_prompt
from tunelab.models import load_pretrained
from tunelab.models.loaders.checkpoint import checkpoint_metadata
from tunelab.tasks.reward import RewardModel, load_reward_model, make_head

WORDS = ["apple", "river", "stone", "cloud", "maple", "ember"]


@pytest.fixture
def prefs(tmp_path: Path) -> Path:
    rows = [
        {
            "prompt": f"Say the word number {i}.",
            "chosen": f"The word is {w}.",
            "rejected": "I would rather not say." if i % 2 else f"Ugh. {w}.",
            "rejected_kind": "evasive" if i % 2 else "rude",
        }
        for i, w in enumerate(WORDS)
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reward_ckpt(tmp_path: Path) -> Path:
    loaded = load_pretrained("tiny-gpt2", seed=0)
    torch.manual_seed(1)
    head = make_head(loaded.model.cfg.n_embd)
    state = {f"model.{k}": v for k, v in loaded.model.state_dict().items()}
    state["head.weight"] = head.weight.detach()
    meta = checkpoint_metadata(loaded.model, loaded.tokenizer, loaded.prompt_style)
    meta["reward_head"] = True
    path = tmp_path / "rm.ckpt"
    torch.save({"state_dict": state, "tunelab": meta}, path)
    return path


def _full_logp(model, prompt: list[int], completion: list[int]) -> float:
    ids = torch.tensor([prompt + completion])
    logp = model(ids[:, :-1])[0].log_softmax(-1)
    tgt = torch.tensor(completion)
    return float(logp[len(prompt) - 1 :].gather(-1, tgt[:, None]).sum())


def test_scorers_match_direct_computation(tmp_path, prefs):
    pairs = load_preferences(prefs)
    assert rw.categories(pairs, "rejected_kind") == ["rude", "evasive"] * 3
    rm, tok, style = load_reward_model(str(_reward_ckpt(tmp_path)))
    got = rw.reward_model_correct(rm, tok, style, pairs, 128, 64, batch_size=4)
    examples = rw._encoded(pairs, tok, style, 128, 64)
    direct = [
        float(
            RewardModel(rm.model, rm.head).score([ex.prompt + ex.chosen], tok.pad_id)[0]
            > RewardModel(rm.model, rm.head).score([ex.prompt + ex.rejected], tok.pad_id)[0]
        )
        for ex in examples
    ]
    assert got == direct
    policy = load_pretrained("tiny-gpt2", seed=0).model.eval()
    reference = load_pretrained("tiny-gpt2", seed=1).model.eval()
    got = rw.implicit_reward_correct(policy, reference, tok, style, pairs, 0.1, 128, 64, 4)
    expected = []
    for ex in examples:
        c = _full_logp(policy, ex.prompt, ex.chosen) - _full_logp(reference, ex.prompt, ex.chosen)
        r = _full_logp(policy, ex.prompt, ex.rejected) - _full_logp(
            reference, ex.prompt, ex.rejected
        )
        expected.append(float(0.1 * c > 0.1 * r))
    assert got == expected


class PrefersWordJudge(JudgeBackend):
    """Answers "A" when response A says "The word is" (the chosen answers), else "B"; with
    `always_a` it says "A" every time (position bias: every pair a tie)."""

    def __init__(self, always_a: bool = False) -> None:
        super().__init__("scripted", retries=0, backoff=0.0)
        self.always_a = always_a

    def _once(self, prompt: str) -> str:
        if self.always_a:
            return "A"
        # the chosen answer is also the record's reference, shown before both responses
        chosen = prompt.rfind("The word is")
        rejected = max(prompt.rfind(s) for s in ("I would rather", "Ugh."))
        return "A" if chosen < rejected else "B"


def test_judge_pairwise_accuracy_and_table(prefs):
    pairs = load_preferences(prefs)
    cats = rw.categories(pairs, "rejected_kind")
    good, _ = rw.judge_correct(Judge(PrefersWordJudge(), get_prompt()), pairs)
    biased, summary = rw.judge_correct(Judge(PrefersWordJudge(True), get_prompt()), pairs)
    assert good == [1.0] * 6 and biased == [0.5] * 6 and summary["position_consistency"] == 0.0
    rows, metrics = rw.accuracy_table(cats, {"judge": good, "rm": [1.0, 0.0, 1.0, 1.0, None, 0.0]})
    assert [r["category"] for r in rows] == ["evasive", "rude", "all"]
    assert metrics["reward/rm/accuracy/rude"] == pytest.approx(1.0)  # 1, 1, None
    assert metrics["reward/rm/accuracy/evasive"] == pytest.approx(1 / 3)
    assert metrics["reward/rm/accuracy"] == pytest.approx(3 / 5)
    assert rows[-1]["rm/n"] == 5 and rows[-1]["n"] == 6
    assert "evasive" in rw.format_table(rows, ["judge", "rm"])


def test_mode_reward_end_to_end_and_judge_reward(tmp_path, prefs):
    from tunelab.eval import evaluate

    ckpt = _reward_ckpt(tmp_path)
    cfg = compose_train(
        [
            "mode=reward",
            "data=preferences_file",
            f"data.path={prefs}",
            "pairs_split=all",
            f"reward_model={ckpt}",
            f"policy={ckpt}",
            "reference=tiny-gpt2",
            "beta=0.1",
            "judge=none",
        ],
        tmp_path,
        name="eval",
    )
    metrics = evaluate(cfg)
    out = json.loads((tmp_path / "reward_eval.json").read_text())
    assert out["summary"]["pairs"] == 6 and out["summary"]["categories"] == {
        "rude": 3,
        "evasive": 3,
    }
    assert {"reward/reward_model/accuracy", "reward/dpo_implicit/accuracy"} <= set(metrics)
    assert [r["category"] for r in out["table"]] == ["evasive", "rude", "all"]
    # judge=reward: the same reward model scores answers as a judge backend
    from tunelab.data.records import Record
    from tunelab.evaluation.reward_judge import RewardJudge
    from tunelab.judge.evaluate import judge_answers

    judge = Judge(RewardJudge(str(ckpt), batch_size=2), get_prompt())
    recs = [Record(instruction="Say the word number 0."), Record(instruction="Say hi.")]
    rows = judge_answers(judge, recs, ["The word is apple.", "hi"])
    rm, tok, style = load_reward_model(str(ckpt))
    ex = rw._encoded(
        [
            __import__("tunelab.data.preference", fromlist=["x"]).PreferencePair(
                recs[0], "The word is apple.", "The word is apple."
            )
        ],
        tok,
        style,
        512,
        256,
    )[0]
    assert rows[0]["score"] == pytest.approx(
        rm.score([ex.prompt + ex.chosen], tok.pad_id)[0], abs=1e-5
    )
    assert rows[0]["status"] == "ok"
