"""SFT through tunelab.train with the model's own tokenizer and template: a Gemma-style
(SentencePiece) folder, a Llama-3-template folder, a GGUF of each architecture, and Gemma 3 and
Phi-3 GGUFs with their SentencePiece vocabularies (`tokenizer.ggml.model` "llama")."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import compose_train, quick_sft_overrides
from tests.models.gguf_fixtures import FAMILIES, hf_model, spm_vocab_size, write_gguf
from tests.models.sp_fixtures import (
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    PHI3_TEMPLATE,
    byte_level_folder,
    sp_folder,
)
from tests.models.test_gguf import _tiny_vocab
from tunelab.models.loaders.hf_tokenizer import tokenizer_from_hf_json
from tunelab.train import train


def _run(tmp_path: Path, toy_file: Path, source: Path, style: str = "model") -> float:
    cfg = compose_train(
        quick_sft_overrides(
            toy_file,
            f"model.source={source}",
            f"model.prompt_style={style}",
            "data.mask_prompt=true",
            "data.batch_size=4",
            "trainer.max_steps=2",
            "optimized_metric=train/loss_epoch",
        ),
        tmp_path / "run",
    )
    loss = train(cfg)
    assert math.isfinite(loss)
    return loss


def _hf_folder(tmp_path: Path, family: str, tokenizer_folder: Path) -> Path:
    vocab = tokenizer_from_hf_json(tokenizer_folder).vocab_size
    folder = tmp_path / family
    hf_model(family, vocab).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).write_bytes((tokenizer_folder / f).read_bytes())
    return folder


def test_sft_gemma_sentencepiece_folder(tmp_path, toy_file) -> None:
    tok = sp_folder("gemma", tmp_path / "tok")
    _run(tmp_path, toy_file, _hf_folder(tmp_path, "gemma3", tok))


def test_sft_llama3_template_folder(tmp_path, toy_file) -> None:
    tok = byte_level_folder("llama3", tmp_path / "tok")
    _run(tmp_path, toy_file, _hf_folder(tmp_path, "llama-llama3", tok))


@pytest.mark.parametrize(
    "family",
    [pytest.param(f, marks=() if f == "qwen2" else pytest.mark.slow) for f in FAMILIES],
)
def test_sft_from_gguf(tmp_path, toy_file, family) -> None:
    model = hf_model(family, len(_tiny_vocab()[0]))
    path = write_gguf(model, family, tmp_path / f"{family}.gguf", CHATML_TEMPLATE)
    _run(tmp_path, toy_file, path)


@pytest.mark.parametrize(
    ("family", "kind", "template", "prompt"),
    [
        pytest.param(
            "gemma3",
            "gemma",
            GEMMA_TEMPLATE,
            "<bos><start_of_turn>user\nhi<end_of_turn>\n",
            id="gemma3",
        ),
        pytest.param(
            "phi3",
            "phi3",
            PHI3_TEMPLATE,
            "<|user|>\nhi<|end|>\n",
            id="phi3",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_sft_from_sentencepiece_gguf(tmp_path, toy_file, family, kind, template, prompt) -> None:
    from tunelab.data.prompts import get_style
    from tunelab.data.records import Record
    from tunelab.models.loaders.gguf import load_gguf

    model = hf_model(family, spm_vocab_size(kind))
    path = write_gguf(model, family, tmp_path / f"{family}.gguf", template, spm=kind)
    _, tok = load_gguf(path)
    assert tok.kind == "tokenizers" and tok.name == "gguf-spm"
    assert get_style("model", tok).prompt(Record(instruction="hi")).startswith(prompt)
    _run(tmp_path, toy_file, path)
