"""`python -m tunelab.lens`: help, argument errors, and the printed grids against the model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from rich.console import Console

from tests.conftest import ROOT
from tunelab import load_model
from tunelab.callbacks.logit_lens import show_token
from tunelab.lens import main, run

PROMPT = "The capital of France is"


def table_rows(text: str, title: str) -> list[list[str]]:
    """The body rows (cells stripped) of the rich table printed under `title`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows, seen_header = [], False
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("┡"):
            seen_header = True
        elif seen_header and line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


def run_printed(argv: list[str]) -> tuple[object, str]:
    console = Console(record=True, width=240, force_terminal=False, color_system=None)
    result = run(argv, console=console)
    return result, console.export_text()


def test_help_explains_the_options():
    res = subprocess.run(
        [sys.executable, "-m", "tunelab.lens", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: python -m tunelab.lens model=SOURCE")
    for option in ("model=", "prompt=", "style=", "last_k=", "layers=", "ranks=", "device="):
        assert f"  {option}" in res.stdout, option


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model=tiny-gpt2", "colour=red"], "error: unknown option 'colour'; expected one of"),
        (["prompt=hi"], "error: model=SOURCE is required"),
        (["model=tiny-gpt2", "last_k=two"], "error: last_k='two': expected an integer"),
        (["model=tiny-gpt2", "ranks=maybe"], "error: ranks='maybe': expected true or false"),
        (["model=/nowhere/model.gguf"], "error: GGUF file not found: /nowhere/model.gguf"),
        (["model=tiny-gpt2", "layers=9"], "error: layers='9': expected residual indices in 0..2"),
    ],
)
def test_bad_arguments_give_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_grid_rows_are_the_lens_and_the_last_row_is_the_models_prediction(preset):
    torch.manual_seed(0)
    result, text = run_printed([f"model={preset}", f"prompt={PROMPT}", "top_k=3"])
    torch.manual_seed(0)
    model, tok = load_model(preset)  # the same random initialisation as the CLI's
    ids = tok.encode(PROMPT)
    with torch.no_grad():
        own = model(torch.tensor([ids]))[0].argmax(-1).tolist()
    top = table_rows(text, "top-1 token per layer")
    assert [r[0] for r in top] == ["2", "1", "emb"]  # last layer on top
    assert top[0][1:] == [show_token(tok.token_str(t)) for t in own]
    p = result.prompts[0]
    for row, layer_tokens in zip(top, reversed(p.top_tokens), strict=True):
        assert row[1:] == [show_token(t) for t in layer_tokens]
    ranks = table_rows(text, "rank of the final layer's top token")
    assert ranks[0][1:] == ["1"] * len(ids)
    assert [r[1:] for r in ranks] == [[str(int(v)) for v in row] for row in p.rank.flip(0)]
    assert table_rows(text, "per layer")[0][:3] == ["2", "0.000", "1.00"]
    assert table_rows(text, "top 3 at the last position")[0][1].startswith(
        show_token(tok.token_str(own[-1]))
    )


def test_last_k_layers_and_ranks_options():
    _, text = run_printed(
        ["model=tiny-gpt2", f"prompt={PROMPT}", "last_k=2", "layers=0", "ranks=false"]
    )
    top = table_rows(text, "top-1 token per layer")
    assert [r[0] for r in top] == ["2", "emb"] and all(len(r) == 3 for r in top)
    assert "rank of the final layer's top token" not in text
    header = next(line for line in text.splitlines() if "3:␣France" in line)
    assert "4:␣is" in header and "2:␣of" not in header


def test_embedded_default_model_predicts_paris(monkeypatch):
    """SmolLM2-135M-Instruct (the embedded default): the grid's last row is its own argmax."""
    import tunelab.models

    loaded = []  # the model the CLI loads, kept so the test loads the GGUF only once

    def keep(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    real = tunelab.models.load_pretrained
    monkeypatch.setattr(tunelab.models, "load_pretrained", keep)
    result, text = run_printed(["model=smollm2-135m", f"prompt={PROMPT}"])
    model, tok = loaded[0].model, loaded[0].tokenizer
    ids = tok.encode(PROMPT)
    with torch.no_grad():
        own = model(torch.tensor([ids]))[0, -1].argmax().item()
    assert tok.token_str(own) == " Paris"
    top = table_rows(text, "top-1 token per layer")
    assert top[0][0] == "30" and top[-1][0] == "emb" and len(top) == 31
    assert top[0][-1] == "␣Paris" == show_token(tok.token_str(own))
    assert result.prompts[0].final_top_ids[-1].item() == own
    assert "the model predicts ␣Paris next" in text
