"""Multiple choice by log-likelihood: hand-worked log-probs, the harness's encoding and prompt
conventions, the three scoring paths against a plain full forward, bad input, mode=choice."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import compose_train
from tunelab.data.records import DataError
from tunelab.evaluation.choice import build_requests, context_for, evaluate_choice
from tunelab.evaluation.items import ChoiceItem, load_items
from tunelab.evaluation.loglik import encode_pair, loglikelihood, loglikelihood_rolling, score_pairs
from tunelab.models import load_model
from tunelab.models.tokenizer import gpt2_tokenizer

V = 50257


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def uniform():
    """tiny-gpt2 with every weight 0: the final LayerNorm outputs 0, every logit is 0, so every
    token has log-probability exactly -ln(50257)."""
    model, tok = load_model("tiny-gpt2", seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    model, _ = load_model("tiny-llama", seed=0)
    return model.eval()


def test_encode_pair_follows_the_harness(tok):
    ctx, cont = encode_pair(tok, "Question: capital of France?\nAnswer: ", "Paris")
    assert ctx == tok.encode("Question: capital of France?\nAnswer:")
    assert cont == tok.encode(" Paris")  # the context's trailing space moved to the continuation
    assert encode_pair(tok, "", "hello world") == ([50256], tok.encode("hello world"))
    # user text never becomes a special token
    assert encode_pair(tok, "a", " <|endoftext|>")[1] != [50256]


def test_uniform_model_hand_worked_logprobs_acc_and_acc_norm(uniform, tok):
    assert tok.encode(" cat") == [3797] and len(tok.encode(" elephant bird")) == 2
    item = ChoiceItem("Which animal?", ["cat", "elephant bird"], 1)
    result = evaluate_choice(uniform, tok, [item], style="completion")
    row = result.rows[0]
    lnv = math.log(V)
    assert row["logprobs"] == pytest.approx([-lnv, -2 * lnv], rel=1e-6)
    # acc: -10.82 > -21.65 picks "cat" (wrong); acc_norm: -10.82/3 = -3.61 < -21.65/13 = -1.67
    # picks "elephant bird" (right)
    assert (row["pred"], row["pred_norm"]) == (0, 1)
    assert result.metrics == {"acc": 0.0, "acc_norm": 1.0, "chance": 0.5, "n": 1.0}
    assert row["is_greedy"] == [False, False]  # argmax of all-zero logits is token 0
    assert loglikelihood_rolling(uniform, tok, "one two three") == pytest.approx(-3 * lnv, rel=1e-6)


def _reference(model, pairs):
    """Each pair alone, one full forward, no batching or cache."""
    out = []
    for ctx, cont in pairs:
        ids = torch.tensor([ctx + cont])
        logp = model(ids[:, :-1])[0].float().log_softmax(-1)
        tgt = torch.tensor(cont)
        out.append(float(logp[len(ctx) - 1 :].gather(-1, tgt[:, None]).sum()))
    return out


def test_scoring_paths_match_a_plain_forward(tiny_llama, tok):
    requests = [
        ("The quick brown fox", " jumps over"),
        ("The quick brown fox", " sleeps all day long"),
        ("The quick brown fox", " A"),
        ("Answer:", " B"),
        ("Answer:", " C"),
        ("", "Just text"),
        ("Another context", " with one long continuation here"),
    ]
    pairs = [encode_pair(tok, c, t) for c, t in requests]
    expected = _reference(tiny_llama, pairs)
    for shared in (True, False):
        for bs in (1, 8):
            got = [s.logprob for s in score_pairs(tiny_llama, pairs, bs, shared)]
            assert got == pytest.approx(expected, abs=2e-5)


def test_mmlu_prompt_and_letters(tok):
    shot = ChoiceItem("1 + 1 = ?", ["1", "2", "3", "4"], 1, "elementary_math")
    item = ChoiceItem("2 + 2 = ? ", ["3", "4", "5", "6"], 1, "elementary_math")
    assert context_for(item, "mmlu", [shot]) == (
        "The following are multiple choice questions (with answers) about elementary math.\n\n"
        "1 + 1 = ?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )
    [(ctx, conts)] = build_requests([item], "mmlu")
    assert conts == [" A", " B", " C", " D"]
    assert all(len(encode_pair(tok, ctx, c)[1]) == 1 for c in conts)


def test_kshot_is_seeded_and_prefers_the_subject():
    dev = [ChoiceItem(f"q{i}", ["a", "b"], 0, "x" if i < 5 else "y") for i in range(10)]
    items = [ChoiceItem("t", ["a", "b"], 0, "y")] * 3
    one = build_requests(items, "completion", dev, 2, "random", seed=7)
    assert one == build_requests(items, "completion", dev, 2, "random", seed=7)
    assert one != build_requests(items, "completion", dev, 2, "random", seed=8)
    assert all(
        "q0" not in ctx
        and ("q5" in ctx or "q6" in ctx or "q7" in ctx or "q8" in ctx or "q9" in ctx)
        for ctx, _ in one
    )
    first = build_requests(items[:1], "completion", dev, 2, "first_n")
    assert first[0][0].startswith("Question: q5\nAnswer: a\n\nQuestion: q6\nAnswer: a\n\n")


def test_per_subject_accuracy(uniform, tok):
    items = [
        ChoiceItem("q", ["x", "yy zz"], 0, "s1"),  # uniform model: the one-token choice wins
        ChoiceItem("q", ["x", "yy zz"], 1, "s2"),
    ]
    m = evaluate_choice(uniform, tok, items).metrics
    assert (m["acc"], m["acc/s1"], m["acc/s2"]) == (0.5, 1.0, 0.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"question": "q", "choices": ["a", "b"], "answer": "c"},
            "answer 'c' is not among the choices",
        ),
        (
            {"question": "q", "choices": ["a", "b"], "answer": 2},
            "answer 2 is not among the 2 choices",
        ),
        (
            {"question": "q", "choices": ["a"], "answer": 0},
            "1 choice(s); a question needs at least 2",
        ),
        (
            {"question": "q", "choices": ["a", "b", "a "], "answer": 0},
            "choices 0 and 2 are the same",
        ),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "field 'question' is empty"),
        ({"choices": ["a", "b"], "answer": 0}, "missing field 'question'"),
    ],
)
def test_bad_jsonl_items_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "mc.jsonl"
    good = {"question": "ok", "choices": ["a", "b"], "answer": "B"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError) as e:
        load_items(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_mmlu_csv(tmp_path):
    path = tmp_path / "astronomy_test.csv"
    path.write_text('"What, is it?",a,b,c,d,C\nq2,a,b,c,d,A\n')
    items = load_items(path)
    assert [(i.question, i.answer, i.subject) for i in items] == [
        ("What, is it?", 2, "astronomy"),
        ("q2", 0, "astronomy"),
    ]
    path.write_text("q,a,b,c,d,A\nq,a,b,b,d,A\n")
    with pytest.raises(DataError, match=rf"{path}:2: choices 1 and 2 are the same"):
        load_items(path)
    path.write_text("q,a,b,c,d,E\n")
    with pytest.raises(DataError, match=rf"{path}:1: answer 'E' is not among the choices"):
        load_items(path)


def test_mode_choice_end_to_end(tmp_path, uniform):
    from tunelab.eval import evaluate

    data = tmp_path / "mc.jsonl"
    rows = [
        {"question": "q1", "choices": ["x", "yy zz"], "answer": 0, "subject": "a"},
        {"question": "q2", "choices": ["x", "yy zz"], "answer": 1, "subject": "b"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_train(
        ["mode=choice", "data=mc_file", f"data.path={data}", "ckpt_path=tiny-gpt2"],
        tmp_path,
        name="eval",
    )
    metrics = evaluate(cfg)
    assert metrics["choice/mc/n"] == 2.0 and metrics["choice/mc/chance"] == 0.5
    out = json.loads((tmp_path / "choice.json").read_text())
    assert len(out["records"]) == 2 and out["summary"]["set"] == "mc"
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    bad = compose_train(["mode=choice", "ckpt_path=tiny-gpt2"], tmp_path, name="eval")
    with pytest.raises(ValueError, match="mode=choice needs a multiple-choice set"):
        evaluate(bad)


def test_text_loglikelihood_api(uniform, tok):
    [s] = loglikelihood(uniform, tok, [("Hello", " world")])
    assert s.logprob == pytest.approx(-math.log(V)) and s.n_tokens == 1
