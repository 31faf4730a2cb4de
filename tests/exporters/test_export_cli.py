"""python -m tunelab.export: the Hydra entry point, Ollama folders, and bad input (one line each)."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from tests.conftest import compose_train
from tests.exporters.gotemplate import ollama_prompt, parse_modelfile
from tunelab.data.prompts import get_style
from tunelab.data.records import Record
from tunelab.export import export
from tunelab.exporters import ExportError, export_model
from tunelab.exporters.chat_templates import record_messages
from tunelab.models.loaders.gguf import clear_cache, load_gguf


def _cfg(tmp_path, *overrides):
    return compose_train(list(overrides), tmp_path / "run", name="export")


def test_entry_point_config_exports_ollama_folder(tiny_ckpt, tmp_path):
    model, _, ckpt = tiny_ckpt("tiny-llama", style="smollm2")
    cfg = _cfg(tmp_path, f"ckpt_path={ckpt}", "format=ollama", f"out={tmp_path / 'ol'}")
    out = export(cfg)
    assert sorted(p.name for p in out.iterdir()) == [
        "Modelfile",
        "model.gguf",
        "tunelab_export.json",
    ]
    modelfile = parse_modelfile((out / "Modelfile").read_text())
    assert modelfile["FROM"] == "./model.gguf"
    style = get_style("smollm2")
    record = Record(instruction="What is 2+2?")
    prompt = ollama_prompt(
        modelfile["TEMPLATE"], modelfile["SYSTEM"], record_messages(record, style)
    )
    assert prompt == style.prompt(record)
    clear_cache()
    back, _ = load_gguf(out / "model.gguf")  # f16 by default
    x = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() <= 1e-3


def test_out_must_be_empty_unless_overwrite(tiny_ckpt, tmp_path):
    _, _, ckpt = tiny_ckpt("tiny-llama")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; pass overwrite=true"):
        export_model(str(ckpt), "hf", out)
    assert (out / "keep.txt").read_text() == "mine"
    export_model(str(ckpt), "hf", out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_disk_full_leaves_nothing_half_written(tiny_ckpt, tmp_path, monkeypatch):
    import tunelab.exporters.hf as hf

    _, _, ckpt = tiny_ckpt("tiny-llama")

    def full(state, folder, max_shard_size):
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hf, "write_weights", full)
    with pytest.raises(ExportError, match="disk full while writing the export"):
        export_model(str(ckpt), "hf", tmp_path / "hf")
    assert list(tmp_path.iterdir()) == [ckpt]  # no out, no temporary folder


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "onnx"}, "format='onnx': unknown; expected one of hf, gguf, ollama, peft"),
        ({"fmt": "gguf", "dtype": "bfloat16"}, "dtype=bfloat16 applies to format=hf only"),
        ({"fmt": "hf", "gguf_type": "q8_0"}, "gguf_type=q8_0 applies to format=gguf|ollama only"),
        ({"fmt": "gguf", "gguf_type": "q4_k"}, "gguf_type='q4_k': expected one of f32, f16"),
        ({"fmt": "hf", "dtype": "int8"}, "dtype='int8': expected one of float32"),
        ({"fmt": "hf", "max_shard_size": "lots"}, "max_shard_size='lots': expected bytes"),
        ({"fmt": "peft"}, "format=peft: .* has no LoRA adapters"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, message, tiny_ckpt, tmp_path):
    _, _, ckpt = tiny_ckpt("tiny-llama")
    fmt = kwargs.pop("fmt")
    with pytest.raises(ValueError, match=message) as info:
        export_model(str(ckpt), fmt, tmp_path / "out", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_families_and_sources_the_format_cannot_express(tiny_ckpt, tmp_path):
    _, _, ckpt = tiny_ckpt("tiny-llama", final_logit_softcapping=30.0)
    with pytest.raises(
        ValueError, match="no hf export for a llama-family model with final_logit_softcapping=30.0"
    ):
        export_model(str(ckpt), "hf", tmp_path / "a")
    with pytest.raises(ValueError, match="a preset without weights"):
        export_model("gpt2-124m", "hf", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_entry_point_prints_one_line_error(tmp_path, capsys):
    from tunelab.utils.errors import friendly_errors

    cfg = _cfg(tmp_path, "ckpt_path=smollm2-135m", "format=safetensors", f"out={tmp_path / 'x'}")
    with pytest.raises(SystemExit) as info, friendly_errors():
        export(cfg)
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "error: format='safetensors': unknown; expected one of hf, gguf, ollama, peft\n"
    )


def test_prompt_style_model_writes_the_models_own_template(tmp_path):
    import dataclasses

    from tests.exporters.conftest import save_checkpoint, tiny_model, tiny_tokenizer

    own = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok = dataclasses.replace(tiny_tokenizer(), chat_template=own)
    ckpt = save_checkpoint(
        tiny_model("tiny-llama", vocab_size=512), tok, "model", tmp_path / "m.ckpt"
    )
    out = export_model(str(ckpt), "hf", tmp_path / "hf")
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == own
    with pytest.raises(ValueError, match="prompt style 'model' .* has no Go-template translation"):
        export_model(str(ckpt), "ollama", tmp_path / "ol")
    assert not (tmp_path / "ol").exists()
