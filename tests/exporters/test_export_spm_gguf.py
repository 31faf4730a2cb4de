"""SentencePiece-style tokenizers (Gemma 3, Phi-3, Llama 2) written to GGUF as llama.cpp's
"llama" vocabulary: pieces, scores, token types, no merges.

The tokenizer.json files are laid out as transformers converts a SentencePiece model (every split
of every piece is a merge, grouped by piece in score order), the only kind llama.cpp's
score-ranked merging reproduces. The file's metadata, read with `gguf`'s GGUFReader, is checked
against the tokenizer.json; transformers' GGUF tokenizer reader (merges rebuilt from the scores)
gives tunelab's ids for the Metaspace kinds (it ignores add_space_prefix=false, so not Gemma).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from gguf import GGUFReader

from tests.exporters.conftest import TEXTS, save_checkpoint, tiny_model
from tests.models.sp_fixtures import sp_folder
from tunelab.exporters import export_model
from tunelab.models.loaders.hf_tokenizer import tokenizer_from_hf_json

PHI3_NO_RSTRIP = ("<unk>", "<s>", "<|endoftext|>")


def sp_converted(kind: str, folder: Path, rstrip: set[str] | None = None) -> Path:
    """sp_folder's files with transformers' SentencePiece-converter merges (every split of
    every piece by piece id = score order); `rstrip`: the added tokens stripping after them."""
    sp_folder(kind, folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    special = {a["content"] for a in data["added_tokens"]}
    normal = {
        t: i
        for t, i in data["model"]["vocab"].items()
        if t not in special and not (len(t) == 6 and t.startswith("<0x"))
    }
    merges = []
    for piece in sorted(normal, key=normal.get):
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        splits = [(a, b) for a, b in splits if a in normal and b in normal]
        merges += sorted(splits, key=lambda ab: (normal[ab[0]], normal[ab[1]]))
    data["model"]["merges"] = [list(m) for m in merges]
    if rstrip is not None:
        for a in data["added_tokens"]:
            a["rstrip"] = a["content"] in rstrip
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return folder


def _export(tok, tmp_path, name="tiny-llama"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = tiny_model("tiny-llama", vocab_size=tok.vocab_size + 3)  # 3 padding rows
    model.cfg.name = name
    ckpt = save_checkpoint(model, tok, "chatml", tmp_path / "m.ckpt")
    return export_model(str(ckpt), "gguf", tmp_path / "g", gguf_type="f32") / "model.gguf"


def _phi3_rstrip() -> set[str]:
    from tests.models.sp_fixtures import SPECIALS

    return (set(SPECIALS["phi3"]) - set(PHI3_NO_RSTRIP)) | {"</s>"}


@pytest.mark.parametrize("kind", ["gemma", "phi3", "llama2"])
def test_spm_gguf_metadata_is_the_tokenizer_json(kind, tmp_path):
    rstrip = _phi3_rstrip() if kind == "phi3" else set()
    folder = sp_converted(kind, tmp_path / "tok", rstrip)
    tok = tokenizer_from_hf_json(folder)
    assert tok.kind == "tokenizers"
    path = _export(tok, tmp_path)
    fields = GGUFReader(path).fields

    def value(key):
        return fields[key].contents() if key in fields else None

    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    added = {a["content"]: a["id"] for a in data["added_tokens"]}
    tokens, scores, types = (
        value(f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type")
    )
    n = len(vocab)
    assert value("tokenizer.ggml.model") == "llama"
    assert value("tokenizer.ggml.pre") == "default"
    assert "tokenizer.ggml.merges" not in fields  # llama.cpp ranks by score
    assert len(tokens) == len(scores) == len(types) == n + 3
    assert tokens[:n] == sorted(vocab, key=vocab.get)
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 3)] and types[n:] == [5] * 3
    for t, i in vocab.items():
        expected = 6 if t.startswith("<0x") and len(t) == 6 else 1
        expected = 2 if t == "<unk>" else 3 if t in added else expected
        assert types[i] == expected, t
    # scores rank the merges as the file orders them: the same piece's merges share one score,
    # later pieces score lower; every normal piece has its own score
    order = [scores[vocab[a + b]] for a, b in data["model"]["merges"]]
    assert order == sorted(order, reverse=True)
    normal = [scores[i] for i, k in enumerate(types) if k == 1]
    assert len(set(normal)) == len(normal)
    assert value("tokenizer.ggml.add_space_prefix") is (False if kind == "gemma" else None)
    assert value("tokenizer.ggml.eos_token_id") == tok.eos_id
    assert value("tokenizer.ggml.unknown_token_id") == vocab["<unk>"]
    assert value("tokenizer.ggml.add_bos_token") is False
    # llama.cpp's Phi-3 white-space rule is switched on by the name, and only for Phi-3 flags
    assert value("general.name") == ("tiny-llama-phi3" if kind == "phi3" else "tiny-llama")


@pytest.mark.parametrize("kind", ["phi3", "llama2"])
def test_transformers_reads_the_spm_gguf_with_tunelab_ids(kind, tmp_path, caplog):
    from transformers import AutoTokenizer

    rstrip = _phi3_rstrip() if kind == "phi3" else set()
    tok = tokenizer_from_hf_json(sp_converted(kind, tmp_path / "tok", rstrip))
    with caplog.at_level(logging.WARNING, logger="tunelab.exporters.spm_vocab"):
        path = _export(tok, tmp_path)
    assert "llama.cpp prefixes a space to text that already starts with one" in caplog.text
    hf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)


def test_spm_vocabularies_llama_cpp_would_tokenize_otherwise_are_refused(tmp_path):
    # a BPE trained by `tokenizers` (one merge per piece, not every split): refused, naming one
    folder = sp_folder("gemma", tmp_path / "trained")
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["model"]["merges"]
    ]
    data["model"]["merges"] = [list(m) for m in merges[:-1]]  # drop one: never SentencePiece-like
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tok = tokenizer_from_hf_json(folder)
    with pytest.raises(ValueError, match=r"is no merge; llama.cpp merges every such pair") as e:
        _export(tok, tmp_path / "a")
    assert "\n" not in str(e.value)
    # strip flags other than llama.cpp's Phi-3 set cannot be carried by a GGUF
    tok = tokenizer_from_hf_json(sp_converted("phi3", tmp_path / "p", {"<|end|>"}))
    with pytest.raises(ValueError, match=r"are not llama.cpp's Phi-3 set"):
        _export(tok, tmp_path / "b")
    # a Phi-3 general.name would switch that stripping on for a tokenizer without it
    tok = tokenizer_from_hf_json(sp_converted("llama2", tmp_path / "l", set()))
    with pytest.raises(ValueError, match=r"general.name 'my-phi3-sft' turns on llama.cpp's Phi-3"):
        _export(tok, tmp_path / "c", name="my-phi3-sft")
    assert not (tmp_path / "c" / "g").exists()


def test_phi3_sentencepiece_model_exports_to_ollama(tmp_path):
    """format=ollama with a `tokenizers`-library tokenizer: the Modelfile stops on Phi-3's
    end-of-turn pieces, the GGUF carries the SentencePiece vocabulary."""
    tok = tokenizer_from_hf_json(sp_converted("phi3", tmp_path / "tok", _phi3_rstrip()))
    model = tiny_model("tiny-llama", vocab_size=tok.vocab_size + 3)
    ckpt = save_checkpoint(model, tok, "phi3", tmp_path / "m.ckpt")
    out = export_model(str(ckpt), "ollama", tmp_path / "o", gguf_type="f32")
    text = (out / "Modelfile").read_text(encoding="utf-8")
    assert text.startswith("# Prompt style 'phi3'") and "FROM ./model.gguf" in text
    stops = [line for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert 'PARAMETER stop "<|end|>"' in stops and 'PARAMETER stop "<|endoftext|>"' in stops
    fields = GGUFReader(out / "model.gguf").fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"


@pytest.mark.parametrize("kind", ["gemma", "phi3", "llama2"])
def test_tunelab_reads_the_spm_gguf_back_with_the_same_ids(kind, tmp_path):
    """tunelab's GGUF reader tokenizes as llama.cpp does. Gemma (no space prefix): the same ids
    everywhere, chat markers included. Metaspace kinds: the same ids for text that does not start
    with white space; for text that does, llama.cpp's one extra prefix space (logged at export)."""
    from tunelab.models.loaders.gguf import clear_cache, load_gguf

    rstrip = _phi3_rstrip() if kind == "phi3" else set()
    tok = tokenizer_from_hf_json(sp_converted(kind, tmp_path / "tok", rstrip))
    path = _export(tok, tmp_path)
    clear_cache()
    _, back = load_gguf(path)
    assert (back.eos_id, back.bos_id) == (tok.eos_id, tok.bos_id)
    assert set(tok.stop_ids) <= set(back.stop_ids)
    texts = [*TEXTS, "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"]

    def pieces(ids):
        return "".join(tok.encoding._tok.id_to_token(i) for i in ids)

    for text in texts if kind == "gemma" else TEXTS:
        ours, theirs = tok.encode(text), back.encode(text)
        if kind == "gemma" or not text[0].isspace():
            assert theirs == ours, text
        else:
            assert pieces(theirs) == "▁" + pieces(ours)
