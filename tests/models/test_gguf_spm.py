"""SentencePiece vocabularies in GGUF (`tokenizer.ggml.model` "llama"), written as llama.cpp's
converter writes a Gemma 3 and a Phi-3 folder (pieces, scores, types; no merges), tokenize with
the ids of the folder's own tokenizer.json (and of AutoTokenizer for Gemma) and of llama.cpp's
SPM algorithm written out below from llama-vocab.cpp."""

from __future__ import annotations

from functools import cache

import pytest
from tokenizers import Tokenizer as RustTokenizer
from transformers import AutoTokenizer

from tests.models.gguf_fixtures import write_spm_vocab_gguf
from tests.models.sp_fixtures import GEMMA_TEMPLATE, PHI3_TEMPLATE, sp_folder
from tests.models.test_sp_tokenizer import TEXTS
from tunelab.models.loaders.gguf import tokenizer_from_gguf
from tunelab.models.tokenizer import Tokenizer

MORE = [
    "      six spaces, then\n\n\n\nfour newlines and \t\t\t tabs",
    "aaaaaaa bbbbbbbb the the the theatre",
    "<|end|>   <|end|>\n\n<|user|> x <start_of_turn> <end_of_turn>",
]
ASCII_SPACE = " \t\n\v\f\r"


@cache
def _fields(path: str) -> tuple[list[str], list[float], list[int], bool, bool]:
    from gguf import GGUFReader

    from tunelab.models.loaders.gguf import _meta

    r = GGUFReader(path)
    return (
        _meta(r, "tokenizer.ggml.tokens"),
        _meta(r, "tokenizer.ggml.scores"),
        _meta(r, "tokenizer.ggml.token_type"),
        _meta(r, "tokenizer.ggml.add_space_prefix", True),
        "phi-3" in _meta(r, "general.name", "").lower(),
    )


def llama_cpp_spm(text: str, path, parse_special: bool) -> list[int]:
    """llama.cpp's SPM tokenizer (llama-vocab.cpp: tokenizer_st_partition + SPM session), read
    straight from the GGUF fields."""
    tokens, scores, types, prefix, phi3 = _fields(str(path))
    ids = {t: i for i, t in enumerate(tokens)}
    cache = sorted(
        (i for i, k in enumerate(types) if k in (2, 3, 4)), key=lambda i: -len(tokens[i])
    )
    frags: list[str | int] = [text] if text else []
    for sid in cache:
        if not parse_special and types[sid] in (2, 3):
            continue
        rstrip = phi3 and tokens[sid] not in ("<unk>", "<s>", "<|endoftext|>")
        out: list[str | int] = []
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
                continue
            for j, part in enumerate(frag.split(tokens[sid])):
                if j:
                    out.append(sid)
                    part = part.lstrip(ASCII_SPACE) if rstrip else part
                if part:
                    out.append(part)
        frags = out
    result: list[int] = []
    prev_special = True
    for frag in frags:
        if isinstance(frag, int):
            result.append(frag)
            prev_special = True
            continue
        syms = list(((" " if prefix and prev_special else "") + frag).replace(" ", "▁"))
        prev_special = False
        while True:  # the best-scored adjacent pair that is a piece; leftmost on ties
            best = None
            for k in range(len(syms) - 1):
                i = ids.get(syms[k] + syms[k + 1])
                if i is not None and (best is None or scores[i] > best[0]):
                    best = (scores[i], k)
            if best is None:
                break
            k = best[1]
            syms[k : k + 2] = [syms[k] + syms[k + 1]]
        for s in syms:
            if s in ids:
                result.append(ids[s])
            else:
                result.extend(ids[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
    return result


@pytest.fixture(scope="module", params=["gemma", "phi3"])
def spm(request, tmp_path_factory):
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    folder = sp_folder(kind, root / "folder")
    path = write_spm_vocab_gguf(kind, root / f"{kind}.gguf")
    return kind, folder, path, tokenizer_from_gguf(path)


def test_ids_equal_the_folders_tokenizer_and_llama_cpp(spm) -> None:
    kind, folder, path, tok = spm
    assert tok.kind == "tokenizers"
    ref = RustTokenizer.from_file(str(folder / "tokenizer.json"))
    plain = RustTokenizer.from_file(str(folder / "tokenizer.json"))
    plain.encode_special_tokens = True
    hf = AutoTokenizer.from_pretrained(folder)
    for text in TEXTS + MORE:
        expected = ref.encode(text, add_special_tokens=False).ids
        assert tok.encode(text) == expected, (kind, text)
        assert tok.encode_segments([(text, True)]) == expected, (kind, text)
        assert tok.encode(text) == llama_cpp_spm(text, path, parse_special=True), (kind, text)
        user = plain.encode(text, add_special_tokens=False).ids
        assert tok.encode_plain(text) == user, (kind, text)
        assert tok.encode_plain(text) == llama_cpp_spm(text, path, parse_special=False)
        assert tok.decode(expected) == ref.decode(expected, skip_special_tokens=False)
        if kind == "gemma" or not (text.startswith(" ") or set(text) & set("<>")):
            # Phi-3: AutoTokenizer (LlamaTokenizer class, legacy=false) adds no "▁" after a
            # special token nor before a leading space; the file, llama.cpp and the GGUF do
            assert expected == hf.encode(text, add_special_tokens=False), (kind, text)


def test_roles_template_and_round_trip(spm, tmp_path) -> None:
    kind, folder, _, tok = spm
    hf = AutoTokenizer.from_pretrained(folder)
    assert (tok.eos_id, tok.bos_id) == (hf.eos_token_id, hf.bos_token_id)
    end = {"gemma": "<end_of_turn>", "phi3": "<|end|>"}[kind]
    assert tok.special_tokens[end] in tok.stop_ids and tok.eos_id in tok.stop_ids
    assert tok.chat_template == {"gemma": GEMMA_TEMPLATE, "phi3": PHI3_TEMPLATE}[kind]
    assert tok.template_tokens == {"eos_token": hf.eos_token, "bos_token": hf.bos_token}
    again = Tokenizer.load(tok.save(tmp_path))
    for text in TEXTS:
        assert again.encode(text) == tok.encode(text)
        assert again.encode_plain(text) == tok.encode_plain(text)


def test_user_text_markers_stay_text(spm) -> None:
    kind, _, _, tok = spm
    marker = {"gemma": "<start_of_turn>", "phi3": "<|system|>"}[kind]
    ids = tok.encode_segments([(marker, True), (f"hi{marker}obey", False)])
    assert ids.count(tok.special_tokens[marker]) == 1


def _edit(**changes):
    def edit(fields):
        for key, value in changes.items():
            fields[key] = value(fields) if callable(value) else value

    return edit


def test_llama_cpp_rules_for_what_the_file_leaves_open(tmp_path) -> None:
    # no general.name "phi-3": llama.cpp gives Phi-3's markers no rstrip
    path = write_spm_vocab_gguf("phi3", tmp_path / "noname.gguf", name=False)
    tok = tokenizer_from_gguf(path)
    text = "<|user|>\n  Q<|end|>\n"
    assert tok.encode(text) == llama_cpp_spm(text, path, parse_special=True)
    assert tok.encode(text) != tokenizer_from_gguf(
        write_spm_vocab_gguf("phi3", tmp_path / "named.gguf")
    ).encode(text)

    # merges in the file are ignored, as llama.cpp ignores them for this tokenizer type
    merged = write_spm_vocab_gguf("gemma", tmp_path / "m.gguf", edit=_edit(merges=["▁ t", "h e"]))
    plain = write_spm_vocab_gguf("gemma", tmp_path / "p.gguf")
    for text in MORE:
        assert tokenizer_from_gguf(merged).encode(text) == tokenizer_from_gguf(plain).encode(text)

    # an end-of-turn piece typed normal is a control token in llama.cpp; user-defined pieces are
    # matched even in user text
    def retype(f):
        types = list(f["types"])
        types[f["tokens"].index("<end_of_turn>")] = 1
        types[f["tokens"].index("<start_of_turn>")] = 4
        return types

    path = write_spm_vocab_gguf("gemma", tmp_path / "t.gguf", edit=_edit(types=retype))
    tok = tokenizer_from_gguf(path)
    assert "<end_of_turn>" in tok.special_tokens and "<start_of_turn>" not in tok.special_tokens
    text = "a<start_of_turn>b<end_of_turn>"
    assert tok.encode_plain(text) == llama_cpp_spm(text, path, parse_special=False)
    assert tok.encode_plain(text)[1] == 4  # <start_of_turn>


def test_an_ascii_character_that_is_no_piece_still_merges_as_in_llama_cpp(tmp_path) -> None:
    """Gemma's "\\t" is no piece, yet pieces start with it: llama.cpp joins it all the same."""
    rename = _edit(tokens=lambda f: [t if t != "\t" else "[TAB]" for t in f["tokens"]])
    path = write_spm_vocab_gguf("gemma", tmp_path / "tab.gguf", edit=rename)
    tok = tokenizer_from_gguf(path)
    tab = tok.encoding.token_to_id("\tan")
    for text in ["Tabs\tand\t\truns", "\t", "a\tb\t\tan", *TEXTS]:
        assert tok.encode(text) == llama_cpp_spm(text, path, parse_special=True), text
    tokens = _fields(str(path))[0]
    assert tab in tok.encode("x\tand") and tok.encode("\t") == [tokens.index("<0x09>")]
    assert tok.decode(tok.encode("a\tb\t\tan")) == "a\tb\t\tan"
    assert tok.vocab_size == len(tokens)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(scores=None), "without tokenizer.ggml.scores"),
        (dict(types=None), "without tokenizer.ggml.token_type"),
        (dict(pre="llama-bpe"), "pre-tokenizer 'llama-bpe'"),
        (
            dict(tokens=lambda f: [t if t != "<0x41>" else "<0xZZ>" for t in f["tokens"]]),
            "byte piece <0x41> is missing",
        ),
        (dict(scores=lambda f: [0.0] * len(f["scores"])), "share score 0.0"),
        (dict(model="t5"), "tokenizer model 't5' is not supported"),
        (
            dict(tokens=lambda f: [t if t != "é" else "[E]" for t in f["tokens"]]),
            "can be formed from 'é', which is no piece",
        ),
        (
            dict(tokens=lambda f: [t if t != "<pad>" else "x<end" for t in f["tokens"]]),
            "pieces 'x<end' and '<end_of_turn>' overlap",
        ),
    ],
)
def test_what_cannot_be_reproduced_is_refused(tmp_path, changes, message) -> None:
    path = write_spm_vocab_gguf("gemma", tmp_path / "bad.gguf", edit=_edit(**changes))
    with pytest.raises(ValueError, match=message) as err:
        tokenizer_from_gguf(path)
    assert "bad.gguf" in str(err.value) and "\n" not in str(err.value)
