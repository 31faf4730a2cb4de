"""The lm_eval adapter, offline: a task YAML over a local JSONL file gives the same accuracy as
mode=choice on the same items, and the adapter's requests match tunelab's scorer."""

from __future__ import annotations

import json

import pytest

from tunelab.evaluation.choice import evaluate_choice
from tunelab.evaluation.items import load_items
from tunelab.models import load_pretrained

TASK = """task: tunelab_toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def test_harness_matches_mode_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    from tunelab.evaluation.harness import TunelabLM, run_harness

    rows = [
        {"question": q, "choices": c, "answer": a}
        for q, c, a in [
            ("Which is a fruit?", ["apple", "stone", "river", "cloud"], 0),
            ("What colour is the sky?", ["green", "blue", "red"], 1),
            ("2 + 2 =", ["3", "4", "five", "22"], 1),
            ("Capital of France?", ["Paris", "Rome", "Berlin", "Madrid"], 0),
            ("Opposite of hot?", ["warm", "cold"], 1),
            ("Plural of mouse?", ["mouses", "mice", "meese"], 1),
        ]
    ]
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.yaml").write_text(TASK.format(path=data))
    loaded = load_pretrained("tiny-gpt2", seed=3)
    results = run_harness(
        loaded, ["tunelab_toy_mc"], str(tasks), batch_size=4, include_defaults=False
    )
    harness = results["results"]["tunelab_toy_mc"]
    ours = evaluate_choice(loaded.model, loaded.tokenizer, load_items(data), "completion").metrics
    assert harness["acc,none"] == pytest.approx(ours["acc"])
    assert harness["acc_norm,none"] == pytest.approx(ours["acc_norm"])

    class Req:
        def __init__(self, *args):
            self.args = args

    lm = TunelabLM(loaded=loaded)
    [(ll, greedy)] = lm.loglikelihood([Req("Question: 2 + 2 =\nAnswer:", " 4")])
    assert isinstance(greedy, bool) and ll < 0
    assert lm.loglikelihood_rolling([Req("hello world")])[0] < 0
    [text] = lm.generate_until([Req("Hello", {"until": ["\n"], "max_gen_toks": 3})])
    assert isinstance(text, str) and "\n" not in text
    with pytest.raises(ValueError, match="only greedy"):
        lm.generate_until([Req("Hello", {"do_sample": True, "temperature": 0.7})])
