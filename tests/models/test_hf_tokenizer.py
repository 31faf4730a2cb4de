"""Byte-level BPE from Hugging Face tokenizer.json files (hand-made ones, and SmolLM2's vocab)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader

from tunelab.models.loaders.gguf import smollm2_gguf_path, tokenizer_from_gguf
from tunelab.models.loaders.hf_tokenizer import tokenizer_from_hf_json
from tunelab.models.tokenizer import GPT2_PATTERN, Tokenizer

BYTE_LEVEL = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": True,
    "use_regex": True,
}
DIGITS_THEN_BYTE_LEVEL = {
    "type": "Sequence",
    "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL],
}
SPLIT_REGEX = r"\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+"
SPLIT_THEN_BYTES = {
    "type": "Sequence",
    "pretokenizers": [
        {
            "type": "Split",
            "pattern": {"Regex": SPLIT_REGEX},
            "behavior": "Isolated",
            "invert": False,
        },
        {**BYTE_LEVEL, "use_regex": False},
    ],
}

# Byte b has id 1 + b; merged tokens follow, in merge order.
MERGES = ["t h", "th e", "Ġ c", "Ġc a", "Ġca t", "Ġ 1"]
THE, SPACE_CAT, SPACE_1, IM_END = 258, 261, 262, 263
PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm on 2024-01-15, and I'm  sure "
    "we'll ship v2.10.3 (build 98765) by   12 o'clock.",
    "def f(x):\n    return x ** 2 + 10\n\n\n    # 4 spaces then 1234\n\t\tprint('\\n')  \n",
    "Ceci n'est pas une pipe — ça coûte 15 €. 東京は日本の首都です。 🎉🎉 naïve café\r\n 3) x",
]


def _alphabet() -> dict[int, str]:
    """GPT-2's bytes-to-unicode table, written out independently of the code under test."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(extra)}}


def _tokenizer_json(pre: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    alphabet = _alphabet()
    vocab = {"<|endoftext|>": 0, **{alphabet[b]: 1 + b for b in range(256)}}
    for m in MERGES:
        vocab[m.replace(" ", "")] = len(vocab)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": 0,
                "content": "<|endoftext|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            },
            {
                "id": IM_END,
                "content": "<|im_end|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            },
        ],
        "normalizer": None,
        "pre_tokenizer": pre or BYTE_LEVEL,
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": list(MERGES),
            **model,
        },
    }


def _write(folder: Path, data: dict[str, Any], config: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


def _byte(ch: str) -> int:
    return 1 + ord(ch)


def test_hand_made_gpt2_style(tmp_path) -> None:
    tok = tokenizer_from_hf_json(_write(tmp_path / "tiny", _tokenizer_json()))
    assert tok.encoding._pat_str == GPT2_PATTERN
    assert tok.encode("the cat") == [THE, SPACE_CAT]
    assert tok.encode("hat") == [_byte("h"), _byte("a"), _byte("t")]
    assert tok.encode("the cat<|endoftext|>") == [THE, SPACE_CAT, 0]
    assert tok.encode("a 12") == [_byte("a"), SPACE_1, _byte("2")]  # " 12" is one pre-token
    assert tok.eos_id == 0 and tok.pad_id == 0 and tok.stop_ids == [0, IM_END]
    assert tok.name == "hf-tiny"
    for text in ["the cat", "a 12", "naïve 🐈\x00\t\n", "<|im_end|>x"]:
        assert tok.decode(tok.encode(text)) == text


def test_digits_pre_tokenizer_isolates_digits(tmp_path) -> None:
    tok = tokenizer_from_hf_json(_write(tmp_path, _tokenizer_json(DIGITS_THEN_BYTE_LEVEL)))
    assert tok.encode("a 12") == [_byte("a"), _byte(" "), _byte("1"), _byte("2")]
    assert tok.encode("the cat") == [THE, SPACE_CAT]


def test_split_regex_pre_tokenizer(tmp_path) -> None:
    tok = tokenizer_from_hf_json(_write(tmp_path, _tokenizer_json(SPLIT_THEN_BYTES)))
    assert tok.encoding._pat_str == SPLIT_REGEX
    assert tok.encode("the cat") == [THE, _byte(" "), _byte("c"), _byte("a"), _byte("t")]


def test_merges_as_pairs_and_eos_from_tokenizer_config(tmp_path) -> None:
    data = _tokenizer_json(merges=[m.split(" ") for m in MERGES])
    config = {
        "eos_token": {"content": "<|im_end|>"},
        "pad_token": "<|endoftext|>",
        "bos_token": None,
    }
    tok = tokenizer_from_hf_json(_write(tmp_path, data, config))
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (IM_END, 0, None)
    assert tok.stop_ids == [IM_END, 0]
    assert tok.encode("the cat") == [THE, SPACE_CAT]


def test_folder_path_and_spec_round_trip(tmp_path) -> None:
    _write(tmp_path / "tok", _tokenizer_json(DIGITS_THEN_BYTE_LEVEL))
    tok = tokenizer_from_hf_json(tmp_path / "tok")
    again = Tokenizer.from_spec(json.loads(json.dumps(tok.to_spec())))
    for text in PARAGRAPHS:
        assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize("pre", [BYTE_LEVEL, DIGITS_THEN_BYTE_LEVEL, SPLIT_THEN_BYTES])
def test_hand_made_matches_hf_tokenizers(tmp_path, pre) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    path = _write(tmp_path, _tokenizer_json(pre))
    ours, ref = tokenizer_from_hf_json(path), tokenizers.Tokenizer.from_file(str(path))
    for text in [*PARAGRAPHS, "the cat 12<|endoftext|> the  cat"]:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"type": "Unigram", "vocab": []}}, "model.type is 'Unigram'"),
        (
            {
                "pre_tokenizer": {
                    "type": "Sequence",
                    "pretokenizers": [{"type": "Metaspace", "replacement": "▁"}, BYTE_LEVEL],
                }
            },
            "Metaspace",
        ),
        (
            {
                "pre_tokenizer": {
                    "type": "Sequence",
                    "pretokenizers": [{"type": "Digits", "individual_digits": False}, BYTE_LEVEL],
                }
            },
            "Digits",
        ),
        ({"pre_tokenizer": {**BYTE_LEVEL, "add_prefix_space": True}}, "add_prefix_space"),
        ({"normalizer": {"type": "NFC"}}, "normalizer.*NFC"),
        ({"model": {"byte_fallback": True}}, "byte_fallback"),
    ],
)
def test_unsupported_files_are_refused_by_name(tmp_path, change, message) -> None:
    data = _tokenizer_json()
    for key, value in change.items():
        data[key] = {**data[key], **value} if key == "model" else value
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as err:
        tokenizer_from_hf_json(path)
    assert str(path) in str(err.value)


def test_ids_out_of_merge_order_are_refused(tmp_path) -> None:
    data = _tokenizer_json()
    vocab = data["model"]["vocab"]
    vocab["th"], vocab["the"] = vocab["the"], vocab["th"]
    with pytest.raises(ValueError, match="merge 1 .*not above its parts"):
        tokenizer_from_hf_json(_write(tmp_path, data))


def test_no_eos_anywhere_is_an_error(tmp_path) -> None:
    data = _tokenizer_json()
    data["added_tokens"] = data["added_tokens"][1:]
    del data["model"]["vocab"]["<|endoftext|>"]
    with pytest.raises(ValueError, match="eos_token"):
        tokenizer_from_hf_json(_write(tmp_path, data))


# -- SmolLM2's own vocabulary, as a tokenizer.json ------------------------------------------


@pytest.fixture(scope="module")
def smollm2_json(tmp_path_factory) -> Path:
    """SmolLM2's GGUF vocabulary written out the way its Hugging Face tokenizer.json has it."""
    try:
        gguf_path = smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    reader = GGUFReader(gguf_path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    data = _tokenizer_json(DIGITS_THEN_BYTE_LEVEL)
    data["added_tokens"] = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
        if kind == 3
    ]
    data["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
    data["model"]["merges"] = [m.split(" ") for m in merges]
    config = {"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "bos_token": "<|im_start|>"}
    return _write(tmp_path_factory.mktemp("smollm2"), data, config)


def test_smollm2_vocab_via_tokenizer_json_matches_gguf(smollm2_json) -> None:
    from_json = tokenizer_from_hf_json(smollm2_json)
    from_gguf = tokenizer_from_gguf(smollm2_gguf_path())
    assert from_json.encoding._pat_str == from_gguf.encoding._pat_str
    assert (from_json.eos_id, from_json.pad_id, from_json.bos_id) == (2, 2, 1)
    assert set(from_json.stop_ids) == set(from_gguf.stop_ids) == {0, 2}
    from pydoc_data.topics import topics

    for text in [*PARAGRAPHS, topics["if"], "<|im_start|>user\n12345<|im_end|>\n"]:
        assert from_json.encode(text) == from_gguf.encode(text)


def test_smollm2_vocab_matches_hf_tokenizers(smollm2_json) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    ref = tokenizers.Tokenizer.from_file(str(smollm2_json))
    ours = tokenizer_from_hf_json(smollm2_json)
    from pydoc_data.topics import topics

    for text in [*PARAGRAPHS, topics["if"], topics["class"]]:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids
