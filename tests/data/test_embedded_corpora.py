"""Tests for the embedded old-domain (prose) and new-domain (Python) corpora."""

from __future__ import annotations

import ast
import gzip
import json
import re
import sys
import warnings
from pathlib import Path

import pytest

from tunelab.data.builders import corpora

CORPORA_DIR = corpora.DEFAULT_OUT_DIR
OLD_PATH = CORPORA_DIR / corpora.OLD_FILENAME
NEW_PATH = CORPORA_DIR / corpora.NEW_FILENAME
MIN_TEXT_BYTES = 2_000_000

#: A non-blank line "looks like code" when it starts like a Python statement, assignment,
#: decorator, comment or closing bracket.  Measured at build time (Python 3.11.7): 1.7% of the
#: old corpus' non-blank lines vs 63.6% of the new corpus' lines.
CODE_LINE_RE = re.compile(
    r"^\s*(def |class |import |from \S+ import |return\b|raise |yield\b|elif |else:|try:"
    r"|except\b|finally:|with .*:$|for .* in .*:$|while .*:$|if .*:$|@\w"
    r"|[\w.\[\]]+\s*[-+*/|&]?=\s*\S|#|[)\]}],?$)"
)
MAX_OLD_CODE_FRACTION = 0.05
MIN_NEW_CODE_FRACTION = 0.40


def _load(path: Path) -> tuple[bytes, list[dict[str, str]]]:
    raw = gzip.decompress(path.read_bytes())
    lines = raw.decode("utf-8").split("\n")  # not splitlines(): U+2028 etc. may occur in text
    assert lines[-1] == ""
    docs = [json.loads(line) for line in lines[:-1]]
    return raw, docs


@pytest.fixture(scope="module")
def old() -> tuple[bytes, list[dict[str, str]]]:
    return _load(OLD_PATH)


@pytest.fixture(scope="module")
def new() -> tuple[bytes, list[dict[str, str]]]:
    return _load(NEW_PATH)


def _code_fraction(docs: list[dict[str, str]]) -> float:
    lines = [ln for d in docs for ln in d["text"].splitlines() if ln.strip()]
    return sum(bool(CODE_LINE_RE.match(ln)) for ln in lines) / len(lines)


@pytest.mark.parametrize("name", ["old", "new"])
def test_files_load_and_are_large_enough(name: str, request: pytest.FixtureRequest) -> None:
    raw, docs = request.getfixturevalue(name)
    assert raw.count(b"\n") == len(docs) > 0
    text_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    assert text_bytes >= MIN_TEXT_BYTES
    for doc in docs:
        assert isinstance(doc, dict)
        assert set(doc) == {"text", "source"}
        assert isinstance(doc["text"], str) and doc["text"].strip()
        assert isinstance(doc["source"], str) and doc["source"].strip()


def test_old_corpus_is_prose(old: tuple[bytes, list[dict[str, str]]]) -> None:
    _, docs = old
    for doc in docs:
        for line in doc["text"].splitlines():
            assert not line.lstrip().startswith(">>>"), doc["source"]
    assert _code_fraction(docs) < MAX_OLD_CODE_FRACTION
    texts = [d["text"] for d in docs]
    assert len(set(texts)) == len(texts)


def test_new_corpus_is_python(new: tuple[bytes, list[dict[str, str]]]) -> None:
    _, docs = new
    parsed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for doc in docs:
            try:
                ast.parse(doc["text"])
            except SyntaxError:
                continue
            parsed += 1
    assert parsed >= 0.95 * len(docs)
    assert _code_fraction(docs) > MIN_NEW_CODE_FRACTION
    sources = [d["source"] for d in docs]
    assert len(set(sources)) == len(sources)
    assert all(s.startswith("cpython:Lib/") and s.endswith(".py") for s in sources)


def test_corpora_do_not_share_files(
    old: tuple[bytes, list[dict[str, str]]], new: tuple[bytes, list[dict[str, str]]]
) -> None:
    new_files = {d["source"] for d in new[1]}
    old_files = {
        d["source"].rsplit(":", 1)[0] for d in old[1] if d["source"].startswith("cpython:Lib/")
    }
    assert new_files.isdisjoint(old_files)


def test_clean_prose_strips_doctests_and_roles() -> None:
    text = (
        "Use :func:`os.path.join` or :class:`~pathlib.Path` with ``x``.\n\n"
        ">>> join('a', 'b')\n'a/b'\n\n"
        "Example::\n\n    code = 1\n\nAfter.\n\n.. note::\n\n   Keep this note."
    )
    cleaned = corpora.clean_prose(text)
    assert cleaned.startswith("Use os.path.join or Path with x.")
    assert ">>>" not in cleaned and "'a/b'" not in cleaned and "code = 1" not in cleaned
    assert "After." in cleaned and "Keep this note." in cleaned and ".. note" not in cleaned


@pytest.mark.skipif(
    sys.version_info[:3] != corpora.EXPECTED_PYTHON,
    reason="byte-for-byte reproduction needs the Python the corpora were built with",
)
def test_rebuild_matches_committed_bytes() -> None:
    built = corpora.build_all()
    assert built[corpora.OLD_FILENAME] == OLD_PATH.read_bytes()
    assert built[corpora.NEW_FILENAME] == NEW_PATH.read_bytes()
