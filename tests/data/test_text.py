"""Text corpora: files / folders / globs / JSONL -> documents -> token stream -> blocks."""

from __future__ import annotations

import gzip
import json

import pytest
import tiktoken
import torch

from tunelab.data.records import DataError
from tunelab.data.text import (
    build_corpus,
    embedded_corpora,
    encode_documents,
    end_of_text_id,
    load_documents,
    make_blocks,
    read_documents,
    resolve_corpus_paths,
    split_blocks,
)
from tunelab.models.tokenizer import GPT2_PATTERN, Tokenizer, gpt2_tokenizer


def byte_tokenizer() -> Tokenizer:
    """One token per byte (id = byte + 3); `<|endoftext|>` = 0 and eos `<|im_end|>` = 2, as in
    SmolLM2, where the document separator is not the chat eos."""
    enc = tiktoken.Encoding(
        name="bytes",
        pat_str=GPT2_PATTERN,
        mergeable_ranks={bytes([i]): i + 3 for i in range(256)},
        special_tokens={"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
    )
    return Tokenizer(enc, eos_id=2, pad_id=2, name="bytes", stop_ids=[2])


def ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]


def test_make_blocks_cuts_disjoint_blocks_and_drops_the_tail():
    blocks = make_blocks(list(range(11)), block_len=3)
    assert blocks.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 8, 9, 10 do not fill a block
    assert blocks.dtype == torch.long
    assert make_blocks([1, 2], block_len=3).shape == (0, 4)
    with pytest.raises(ValueError, match="block_len must be >= 1"):
        make_blocks([1, 2, 3], 0)


def test_documents_are_joined_with_the_end_of_text_separator():
    tok = byte_tokenizer()
    assert end_of_text_id(tok) == 0  # not the eos (2)
    assert end_of_text_id(gpt2_tokenizer()) == 50256
    stream = encode_documents(["ab", "c"], tok, separator_id=0)
    assert stream.tolist() == [*ids("ab"), 0, *ids("c"), 0]
    # Special-token text inside a document stays plain text, never a separator.
    assert 0 not in encode_documents(["x<|endoftext|>y"], tok, 0).tolist()[:-1]
    gpt2 = gpt2_tokenizer()
    assert encode_documents(["Hello world"], gpt2, 50256).tolist() == [15496, 995, 50256]


def test_corpus_paths_files_folders_globs_and_embedded(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("first")
    (tmp_path / "d" / "sub" / "b.md").write_text("second")
    (tmp_path / "d" / "c.jsonl").write_text('{"text": "third"}\n')
    (tmp_path / "d" / "model.bin").write_bytes(b"\x00\x01")  # not a text suffix: skipped
    (tmp_path / "d" / ".hidden.txt").write_text("hidden")  # hidden: skipped
    d = tmp_path / "d"
    assert resolve_corpus_paths(d) == [d / "a.txt", d / "c.jsonl", d / "sub" / "b.md"]
    assert resolve_corpus_paths(d / "a.txt") == [d / "a.txt"]
    assert resolve_corpus_paths(f"{d}/**/*.md") == [d / "sub" / "b.md"]
    assert load_documents(d) == ["first", "third", "second"]
    assert resolve_corpus_paths("embedded:old_prose") == [embedded_corpora()["old_prose"]]
    assert set(embedded_corpora()) >= {"old_prose", "new_python"}
    with pytest.raises(FileNotFoundError, match=r"missing\.txt: corpus path not found"):
        resolve_corpus_paths(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match=r"\*\.rst: the glob matches no file"):
        resolve_corpus_paths(f"{d}/*.rst")
    with pytest.raises(FileNotFoundError, match="embedded:nope: unknown embedded corpus"):
        resolve_corpus_paths("embedded:nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no text file"):
        resolve_corpus_paths(tmp_path / "empty")


def test_jsonl_text_field_errors_name_file_and_line(tmp_path):
    good = tmp_path / "good.jsonl"
    # U+2028 inside a document must not split it (json.dumps keeps it raw with ensure_ascii=False).
    good.write_text(
        json.dumps({"text": "one\u2028still one"}, ensure_ascii=False) + "\n\n"
        '{"text": "two", "source": "x"}\n{"text": "   "}\n',
        encoding="utf-8",
    )
    assert read_documents(good) == ["one\u2028still one", "two"]  # blank lines/texts skipped
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"body": "zipped"}\n'))
    assert read_documents(gz, text_key="body") == ["zipped"]
    cases = [
        ('{"text": "a"}\n{oops}\n', r"bad\.jsonl:2: malformed JSON line"),
        ('{"text": "a"}\n{"txt": "b"}\n', r"bad\.jsonl:2: expected a JSON object with a 'text'"),
        ('{"text": 3}\n', r"bad\.jsonl:1: field 'text' must be a string, got int"),
        ("[1, 2]\n", r"bad\.jsonl:1: expected a JSON object"),
    ]
    bad = tmp_path / "bad.jsonl"
    for content, message in cases:
        bad.write_text(content)
        with pytest.raises(DataError, match=message):
            read_documents(bad)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt: not valid UTF-8 \(byte offset 3\)"):
        read_documents(latin)
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n")
    with pytest.raises(DataError, match=r"blank\.txt: the corpus has no non-empty document"):
        load_documents(blank)


def test_split_blocks_holds_out_a_seeded_count_or_fraction():
    blocks = torch.arange(20).reshape(10, 2)
    train, val = split_blocks(blocks, 3, seed=1)
    assert len(train) == 7 and len(val) == 3
    assert sorted(train[:, 0].tolist() + val[:, 0].tolist()) == list(range(0, 20, 2))
    assert torch.equal(split_blocks(blocks, 3, seed=1)[1], val)  # same seed, same split
    assert not torch.equal(split_blocks(blocks, 3, seed=2)[1], val)
    assert len(split_blocks(blocks, 0.25, seed=1)[1]) == 2  # round(2.5) -> 2 (banker's)
    assert len(split_blocks(blocks, 0.01, seed=1)[1]) == 1  # a fraction keeps at least one
    with pytest.raises(DataError, match="corpus: 10 blocks are too few to hold out 10"):
        split_blocks(blocks, 10, seed=1)
    with pytest.raises(ValueError, match="val_blocks must be a count"):
        split_blocks(blocks, 1.5, seed=1)


def test_build_corpus_counts_tokens_blocks_and_dropped_tail(tmp_path):
    path = tmp_path / "c.jsonl"
    docs = ["abcdefg", "hij", "klmnopqrs"]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    corpus = build_corpus(path, byte_tokenizer(), block_len=4, val_blocks=1, seed=0)
    # 7+1 + 3+1 + 9+1 = 22 tokens -> 4 blocks of 5, 2 tail tokens dropped.
    assert (corpus.n_docs, corpus.n_tokens, corpus.n_dropped_tokens) == (3, 22, 2)
    assert len(corpus.train) == 3 and len(corpus.val) == 1
    stream = [*ids("abcdefg"), 0, *ids("hij"), 0, *ids("klmnopqrs"), 0]
    expected = torch.tensor(stream[:20]).reshape(4, 5)
    got = torch.cat([corpus.train, corpus.val])
    assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, expected.tolist()))
    limited = build_corpus(path, byte_tokenizer(), block_len=2, val_blocks=1, seed=0, max_docs=1)
    assert limited.n_docs == 1 and limited.n_tokens == 8
