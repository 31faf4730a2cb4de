"""Build the embedded instruction-tuning dataset from human-written text available offline.

The records are Alpaca-style dicts (`instruction`, `input`, `output`) plus a `family` key naming
the task family and, where the text came from the documentation, a `source` key with the object
or topic it was taken from. All text is derived from CPython's own documentation as shipped
with the interpreter: docstrings of a fixed allowlist of pure-Python-friendly standard-library
modules, the built-ins, and `pydoc_data.topics` (the language reference text used by `help()`);
the words of the standard library's `.py` files serve only to reject misspellings that are real
words. Arithmetic and unit-conversion records use seeded random numbers with computed answers.
Provenance, family counts and the licence (PSF License Version 2) are in
`tunelab/data/embedded/README.md`.

Everything is deterministic: a fixed seed, sorted name lists and no dependence on third-party
packages. Docstrings change between Python releases, so a byte-for-byte rebuild needs the same
Python version the committed file was built with (`REFERENCE_PYTHON`).

Usage::

    python -m tunelab.data.builders.instructions            # write the embedded file
    python -m tunelab.data.builders.instructions --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import inspect
import io
import json
import keyword
import random
import re
import sys
import sysconfig
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from tunelab.data.builders.output import write_or_check

SEED = 1729
REFERENCE_PYTHON = (3, 11, 7)
MAX_PROMPT_TOKENS = 256  # budget for the Alpaca-formatted prompt + answer (GPT-2 BPE tokens)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "embedded" / "instructions.json"

# Stable standard-library modules whose docstrings are mined. Platform-specific modules (os,
# sys, time, ...) are left out; `os.path` is the POSIX implementation on the build machine.
# hashlib is left out because its functions come from OpenSSL or from CPython's fallback
# implementations depending on how the interpreter was built, with different docstrings.
MODULES: tuple[str, ...] = (
    "argparse",
    "base64",
    "binascii",
    "bisect",
    "bz2",
    "calendar",
    "cmath",
    "collections",
    "collections.abc",
    "colorsys",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.utils",
    "enum",
    "filecmp",
    "fnmatch",
    "fractions",
    "functools",
    "glob",
    "graphlib",
    "gzip",
    "heapq",
    "hmac",
    "html",
    "html.parser",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "logging",
    "lzma",
    "math",
    "numbers",
    "operator",
    "os.path",
    "pathlib",
    "pprint",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "shlex",
    "shutil",
    "statistics",
    "string",
    "struct",
    "tarfile",
    "tempfile",
    "textwrap",
    "timeit",
    "traceback",
    "unicodedata",
    "urllib.parse",
    "uuid",
    "weakref",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
)

# `__module__` values that count as "defined in" an allowlisted module besides the module itself.
_MODULE_ALIASES: dict[str, tuple[str, ...]] = {"os.path": ("posixpath", "genericpath")}

BUILTIN_TYPES: tuple[type, ...] = (bytes, dict, float, int, list, set, str, tuple)

# Target record counts per family (before de-duplication and the length filter).
TARGETS: dict[str, int] = {
    "describe_api": 230,
    "python_builtins": 110,  # capped by the clean docstrings available (92 with 3.11.7)
    "module_lookup": 120,
    "object_kind": 120,
    "signature_params": 110,
    "default_value": 100,
    "first_sentence": 110,
    "spelling_correction": 130,
    "rewrite": 130,
    "word_count": 100,
    "arithmetic": 110,
    "unit_conversion": 110,
}

# --------------------------------------------------------------------------------------------
# Text cleaning


_ROLE_RE = re.compile(r":(?:[\w-]+:)+`([^`]+)`")
_DOUBLE_BACKTICK_RE = re.compile(r"``([^`]+)``")
_SINGLE_BACKTICK_RE = re.compile(r"(?<![`\w])`([^`'\s][^`']*)`(?![`_\w])")
_STRONG_RE = re.compile(r"(?<![\w*])\*\*([^*\s](?:[^*]*[^*\s])?)\*\*(?![\w*])")
_EMPHASIS_RE = re.compile(r"(?<![\w*])\*([A-Za-z](?:[^*]*[A-Za-z.])?)\*(?![\w*])")
_SIGNATURE_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(\[[^\]]*\])?\(.*\)\s*(->.*)?$")
_PURE_SIGNATURE_RE = re.compile(r"^[A-Za-z_][\w.]*(\[[^\]]*\])?\(.*\)(\s*->\s*[\w.\[\] |]+)?$")
_SENTENCE_BOUNDARY_RE = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Za-z0-9])")
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "Mr.", "Dr.", "No."})
_BAD_FRAGMENTS = (
    ">>>",
    "::",
    "`",
    "|",
    "\\",
    "http",
    "www.",
    "XXX",
    "TODO",
    "..",
    "[1]",
    "[2]",
    "help(",
    "See help",
    "Deprecated",
    "deprecated",
    "DEPRECATED",
    "  ",
    " -- ",
    "-->",
)


def _role_text(match: re.Match[str]) -> str:
    text = match.group(1).strip()
    if text.endswith(">") and "<" in text:  # :ref:`title <target>`
        return text[: text.index("<")].strip()
    if text.startswith("~"):  # :func:`~a.b.c` renders as c
        return text[1:].rsplit(".", 1)[-1]
    return text.lstrip("!")


def clean_inline(text: str) -> str:
    """Strip reST inline markup (roles, literals, emphasis) and collapse whitespace."""
    text = _ROLE_RE.sub(_role_text, text)
    text = _DOUBLE_BACKTICK_RE.sub(r"\1", text)
    text = _SINGLE_BACKTICK_RE.sub(r"\1", text)
    text = _STRONG_RE.sub(r"\1", text)
    text = _EMPHASIS_RE.sub(r"\1", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(text.split())


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences, not breaking after common abbreviations."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_BOUNDARY_RE.finditer(text):
        candidate = text[start : match.start()]
        last_word = candidate.rsplit(None, 1)[-1] if candidate.strip() else ""
        if last_word in _ABBREVIATIONS or re.fullmatch(r"[A-Za-z]\.", last_word):
            continue
        # A lowercase start only counts after a plain word ("... logger. level must be").
        if text[match.end()].islower() and not re.fullmatch(r"[A-Za-z]{3,}[.!?]", last_word):
            continue
        sentences.append(candidate.strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _balanced(text: str) -> bool:
    return (
        text.count("(") == text.count(")")
        and text.count("[") == text.count("]")
        and text.count("{") == text.count("}")
        and text.count('"') % 2 == 0
    )


def good_sentence(text: str, min_words: int = 4, max_words: int = 35) -> bool:
    """A clean, self-contained prose sentence: no code, markup or dangling list intro."""
    words = text.split()
    if not (min_words <= len(words) <= max_words):
        return False
    if not text[0].isupper() and text[0] != '"':
        return False
    if re.search(r"[(.\[_=]", words[0].rstrip(".,;:")):
        return False  # starts with code such as "D.remove(value)"
    if not text.endswith((".", "?", "!")) or text.endswith(("..", ":.", ",.")):
        return False
    if any(fragment in text for fragment in _BAD_FRAGMENTS):
        return False
    if not text.isprintable() or not _balanced(text):
        return False
    if re.search(r"[a-z)] (Returns?|Raises?) ", text):
        return False  # two run-together sentences ("... (i.e. x, y) Returns a Dialect object.")
    # Mostly words, not code: at most a quarter of the tokens may carry ()[]{}=<>_ characters.
    code_like = sum(1 for word in words if re.search(r"[()\[\]{}=<>_*]", word))
    return code_like * 4 <= len(words)


def ensure_period(text: str) -> str:
    """Add the full stop that some docstrings omit ("Dictionary that remembers insertion order")."""
    text = text.strip()
    if text and (text[-1].isalnum() or text.endswith((")", '"', "'"))):
        return text + "."
    return text


def join_lines(lines: Iterable[str]) -> str:
    """Join wrapped lines with spaces, mending words hyphenated across a line break."""
    text = ""
    for line in lines:
        line = line.strip()
        if re.search(r"[A-Za-z]-$", text):
            text += line
        else:
            text = f"{text} {line}" if text else line
    return text


def _signature_kind(line: str) -> str:
    """ "pure" for `name(args) -> type` lines, "mixed" for a signature with prose, else "prose"."""
    line = line.strip()
    if line == "--" or (_PURE_SIGNATURE_RE.match(line) and " -- " not in line):
        return "pure"
    if _SIGNATURE_LINE_RE.match(line) or " -> " in line:
        return "mixed"
    return "prose"


def lead_paragraph(doc: str | None) -> str | None:
    """The first prose paragraph of a docstring, cleaned, without signature lines or lists."""
    if not doc or not doc.strip():
        return None
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    # Skip leading signature lines ("sqrt(x)", "str(object='') -> str"); a signature line that
    # carries prose ("D.pop(k[,d]) -> v, remove ...") makes the docstring unusable.
    while paragraphs:
        lines = paragraphs[0].splitlines()
        kinds = [_signature_kind(line) for line in lines]
        if kinds[0] == "prose":
            break
        if "mixed" in kinds:
            return None
        signature_lines = next((i for i, kind in enumerate(kinds) if kind != "pure"), len(lines))
        if signature_lines == len(lines):
            paragraphs.pop(0)
        else:
            paragraphs[0] = "\n".join(lines[signature_lines:])
            break
    if not paragraphs:
        return None
    kept: list[str] = []
    for line in paragraphs[0].splitlines():
        stripped = line.strip()
        if line[:1] in (" ", "\t") or re.match(r"^([-*+]|\d+[.)])\s", stripped):
            break
        if stripped.startswith(">>>"):
            break
        kept.append(stripped)
    text = clean_inline(join_lines(kept))
    return text or None


def first_sentence(doc: str | None, max_words: int = 35) -> str | None:
    """The docstring's first sentence if it is clean prose (a period is added when missing)."""
    paragraph = lead_paragraph(doc)
    if not paragraph:
        return None
    sentence = ensure_period(split_sentences(paragraph)[0])
    return sentence if good_sentence(sentence, max_words=max_words) else None


def topic_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a `pydoc_data.topics` entry (no headings, grammar, code or lists)."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or not lines[0].strip():
            continue
        if lines[0][:1] in (" ", "\t"):
            continue  # grammar productions, code samples and indented notes
        if len(lines) > 1 and set(lines[1].strip()) <= set("*=-~^"):
            continue  # section heading
        first = lines[0].strip()
        if first.startswith(("Note:", "See also:", "Changed in version", "New in version", "[")):
            continue
        if re.match(r"^([-*+]|\d+[.)]|\+-)", first) or any(line[:1] in " \t" for line in lines):
            continue
        out.append(clean_inline(join_lines(lines)))
    return out


# --------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class ApiObject:
    """A documented object: `module` is the allowlisted module (or "builtins")."""

    module: str
    name: str
    kind: str  # "module", "function", "class" or "method"
    obj: Any

    @property
    def dotted(self) -> str:
        if self.kind == "module":
            return self.module
        return self.name if self.module == "builtins" else f"{self.module}.{self.name}"


def import_modules(names: Iterable[str]) -> list[tuple[str, Any]]:
    """Import the allowlist, skipping (with a warning) any module that fails or is noisy."""
    out: list[tuple[str, Any]] = []
    for name in sorted(names):
        captured = io.StringIO()
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                contextlib.redirect_stderr(captured),
                contextlib.redirect_stdout(captured),
            ):
                warnings.simplefilter("always")
                module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import problem means "skip it"
            print(f"warning: skipping module {name}: {exc!r}", file=sys.stderr)
            continue
        if caught or captured.getvalue():
            print(
                f"warning: skipping module {name}: it printed or warned on import", file=sys.stderr
            )
            continue
        out.append((name, module))
    return out


def _defined_in(obj: Any, module: str) -> bool:
    owner = getattr(obj, "__module__", None)
    if inspect.ismethod(obj):
        owner = getattr(obj.__func__, "__module__", None)
    if not isinstance(owner, str):
        return False
    allowed = (module, "_" + module.rsplit(".", 1)[-1], *_MODULE_ALIASES.get(module, ()))
    return owner in allowed or owner.startswith(module + ".")


def _object_kind(obj: Any) -> str | None:
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj):
        return "function"
    return None


def module_objects(module_name: str, module: Any) -> list[ApiObject]:
    """Public functions, classes and their methods defined in (or exported by) a module."""
    exported = getattr(module, "__all__", None)
    names = sorted(set(exported)) if exported else sorted(dir(module))
    out: list[ApiObject] = []
    for name in names:
        if name.startswith("_") or not hasattr(module, name):
            continue
        obj = getattr(module, name)
        kind = _object_kind(obj)
        if kind is None or not _defined_in(obj, module_name):
            continue
        out.append(ApiObject(module_name, name, kind, obj))
        if kind == "class":
            out.extend(class_methods(module_name, name, obj))
    return out


def class_methods(module_name: str, class_name: str, cls: type) -> list[ApiObject]:
    out: list[ApiObject] = []
    for attr in sorted(vars(cls)):
        if attr.startswith("_"):
            continue
        if isinstance(vars(cls)[attr], property):
            continue
        # getattr binds classmethods, so their signatures lose the `cls` parameter.
        try:
            value = getattr(cls, attr)
        except AttributeError:
            continue
        if not (
            inspect.isfunction(value)
            or inspect.ismethod(value)
            or inspect.ismethoddescriptor(value)
            or inspect.isbuiltin(value)
        ):
            continue
        if getattr(value, "__doc__", None):
            out.append(ApiObject(module_name, f"{class_name}.{attr}", "method", value))
    return out


def builtin_objects() -> list[ApiObject]:
    """Built-in functions, exception classes and methods of the core built-in types."""
    out: list[ApiObject] = []
    for name in sorted(dir(builtins)):
        if name.startswith("_"):
            continue
        obj = getattr(builtins, name)
        kind = _object_kind(obj)
        if kind is not None and getattr(obj, "__module__", None) == "builtins":
            out.append(ApiObject("builtins", name, kind, obj))
    for cls in BUILTIN_TYPES:
        out.extend(class_methods("builtins", cls.__name__, cls))
    return out


_SIMPLE_DEFAULT_TYPES = (type(None), bool, int, float, str, bytes)


def _simple_default(value: Any) -> bool:
    """A literal default whose repr is short and the same on every platform."""
    if isinstance(value, tuple):
        return all(_simple_default(v) for v in value) and len(repr(value)) <= 30
    if type(value) is int and abs(value) >= 2**31:
        return False  # sys.maxsize and friends depend on the platform
    return type(value) in _SIMPLE_DEFAULT_TYPES and len(repr(value)) <= 30


def render_signature(item: ApiObject) -> tuple[str, list[inspect.Parameter]] | None:
    """`name(params)` without annotations, or None when a default is not a plain literal."""
    try:
        sig = inspect.signature(item.obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if item.kind == "method" and params and params[0].name in ("self", "cls"):
        params = params[1:]
    cleaned: list[inspect.Parameter] = []
    for param in params:
        if param.name.startswith("_"):
            return None
        if param.default is not param.empty and not _simple_default(param.default):
            return None
        cleaned.append(param.replace(annotation=param.empty))
    try:
        rendered = str(sig.replace(parameters=cleaned, return_annotation=sig.empty))
    except ValueError:
        return None
    if "0x" in rendered:
        return None
    return f"{item.dotted}{rendered}", cleaned


def reference_paragraphs() -> list[tuple[str, str]]:
    """(topic, paragraph) pairs of clean prose from the language reference (`pydoc_data`)."""
    from pydoc_data.topics import topics

    return [(topic, p) for topic in sorted(topics) for p in topic_paragraphs(topics[topic])]


@dataclass
class Sources:
    modules: list[tuple[str, Any]]
    objects: list[ApiObject]  # allowlisted modules' functions, classes and methods
    builtins: list[ApiObject]
    sentences: list[tuple[str, str]]  # (source, clean prose sentence)
    passages: list[tuple[str, str]]  # (source, clean multi-sentence paragraph)


def collect_sources() -> Sources:
    modules = import_modules(MODULES)
    objects = [item for name, module in modules for item in module_objects(name, module)]
    builtin_items = builtin_objects()
    sentences: list[tuple[str, str]] = []
    passages: list[tuple[str, str]] = []
    for topic, paragraph in reference_paragraphs():
        passages.append((f"reference:{topic}", paragraph))
        sentences.extend((f"reference:{topic}", s) for s in split_sentences(paragraph))
    for item in [*objects, *builtin_items]:
        paragraph = lead_paragraph(getattr(item.obj, "__doc__", None))
        if paragraph:
            passages.append((item.dotted, paragraph))
            sentences.extend((item.dotted, s) for s in split_sentences(paragraph))
    seen: set[str] = set()
    unique_sentences = []
    for source, sentence in sentences:
        if sentence not in seen and good_sentence(sentence, min_words=6, max_words=30):
            seen.add(sentence)
            unique_sentences.append((source, sentence))
    return Sources(modules, objects, builtin_items, unique_sentences, passages)


# --------------------------------------------------------------------------------------------
# Records


def record(family: str, instruction: str, inp: str, output: str, source: str | None) -> dict:
    rec = {"instruction": instruction, "input": inp, "output": output, "family": family}
    if source:
        rec["source"] = source
    return rec


def _capped_sample(
    rng: random.Random, items: list[Any], target: int, key: Callable[[Any], str], cap: int
) -> list[Any]:
    """Up to `target` items in random order, at most `cap` sharing the same key."""
    order = list(items)
    rng.shuffle(order)
    counts: Counter[str] = Counter()
    out = []
    for item in order:
        if counts[key(item)] < cap:
            counts[key(item)] += 1
            out.append(item)
            if len(out) == target:
                break
    return out


_IMPERATIVES = frozenset(
    {
        *("Return", "Returns", "Create", "Creates", "Convert", "Converts", "Describe"),
        *("Represent", "Build", "Construct", "Check", "Find", "Drop", "Filter", "Call"),
        *("Read", "Import", "Make", "Compute", "Provides", "Forces", "Protects"),
    }
)


def _starts_imperative(sentence: str) -> bool:
    """A class docstring that describes the call ("Return an enumerate object.")."""
    return sentence.split()[0] in _IMPERATIVES


def describe_api(src: Sources, rng: random.Random, target: int) -> list[dict]:
    pool: list[tuple[ApiObject, str]] = []
    for name, module in src.modules:
        sentence = first_sentence(module.__doc__)
        if sentence:
            pool.append((ApiObject(name, name, "module", module), sentence))
    for item in src.objects + [b for b in src.builtins if b.kind == "method"]:
        sentence = first_sentence(item.obj.__doc__)
        if sentence:
            pool.append((item, sentence))
    chosen = _capped_sample(rng, pool, target, key=lambda pair: pair[0].module, cap=12)
    out = []
    for item, sentence in chosen:
        name = item.dotted
        if item.kind == "module":
            templates = [
                f"What is the Python `{name}` module for?",
                f"Describe the standard library module `{name}` in one sentence.",
            ]
        elif item.kind == "class" and _starts_imperative(sentence):
            templates = [
                f"What does calling the class `{name}` do?",
                f"In one sentence, what does the `{name}` constructor do?",
            ]
        elif item.kind == "class":
            templates = [
                f"What is `{name}` in Python?",
                f"Describe the class `{name}` in one sentence.",
            ]
        else:
            rendered = render_signature(item)
            call = rendered[0] if rendered and len(rendered[0]) <= 60 else name
            noun = "method" if item.kind == "method" else "function"
            templates = [
                f"What does `{call}` do?",
                f"In one sentence, explain what the {noun} `{call}` does.",
                f"Briefly describe the Python {noun} `{name}`.",
            ]
        out.append(record("describe_api", rng.choice(templates), "", sentence, name))
    return out


def python_builtins(src: Sources, rng: random.Random, target: int) -> list[dict]:
    pool: list[tuple[ApiObject, str]] = []
    for item in src.builtins:
        if item.kind == "method":
            continue
        sentence = first_sentence(item.obj.__doc__)
        if sentence:
            pool.append((item, sentence))
    chosen = _capped_sample(rng, pool, target, key=lambda pair: pair[0].kind, cap=target)
    out = []
    for item, sentence in chosen:
        name = item.name
        is_exception = inspect.isclass(item.obj) and issubclass(item.obj, BaseException)
        if is_exception and sentence.startswith(("Base class", "Common base class")):
            templates = [f"What is the built-in exception `{name}`?"]
        elif is_exception and issubclass(item.obj, Warning):
            templates = [f"What is the built-in warning category `{name}` for?"]
        elif is_exception:
            templates = [
                f"What does the built-in exception `{name}` indicate?",
                f"What kind of error does Python's built-in `{name}` exception report?",
            ]
        elif item.kind == "class" and _starts_imperative(sentence):
            templates = [f"What does calling the built-in `{name}` do?"]
        elif item.kind == "class":
            templates = [f"What is the built-in type `{name}`?"]
        else:
            rendered = render_signature(item)
            call = rendered[0] if rendered and len(rendered[0]) <= 50 else name
            templates = [
                f"What does the built-in function `{call}` do?",
                f"Explain the Python built-in `{name}` in one sentence.",
            ]
        out.append(record("python_builtins", rng.choice(templates), "", sentence, name))
    return out


def module_lookup(src: Sources, rng: random.Random, target: int) -> list[dict]:
    owners: dict[str, set[str]] = {}
    for item in src.objects:
        if item.kind != "method":
            owners.setdefault(item.name, set()).add(item.module)
    builtin_names = set(dir(builtins))
    pool = []
    for item in src.objects:
        if item.kind == "method" or len(owners[item.name]) != 1 or item.name in builtin_names:
            continue
        if len(item.name) < 4:
            continue
        sentence = first_sentence(item.obj.__doc__)
        if sentence:
            pool.append((item, sentence))
    chosen = _capped_sample(rng, pool, target, key=lambda pair: pair[0].module, cap=4)
    out = []
    for item, sentence in chosen:
        noun = item.kind
        templates = [
            (
                f"Which Python standard library module provides the {noun} `{item.name}` "
                "described below?"
            ),
            (
                f"Name the standard library module that defines the {noun} `{item.name}`, "
                "documented as follows."
            ),
        ]
        answer = f"The {noun} {item.name} is provided by the {item.module} module."
        out.append(record("module_lookup", rng.choice(templates), sentence, answer, item.dotted))
    return out


def object_kind(src: Sources, rng: random.Random, target: int) -> list[dict]:
    per_kind = target // 3
    modules = [ApiObject(name, name, "module", module) for name, module in src.modules]
    candidates = [item for item in src.objects + src.builtins if item.kind != "method"]
    functions = [item for item in candidates if item.kind == "function"]
    classes = [item for item in candidates if item.kind == "class"]
    chosen = (
        _capped_sample(rng, modules, per_kind, key=lambda item: item.module, cap=1)
        + _capped_sample(rng, functions, per_kind, key=lambda item: item.module, cap=4)
        + _capped_sample(rng, classes, target - 2 * per_kind, key=lambda i: i.module, cap=4)
    )
    out = []
    for item in chosen:
        name = item.dotted
        templates = [
            f"Is `{name}` a function, a class, or a module?",
            f"In Python, is `{name}` a module, a class, or a function?",
            f"Classify the Python name `{name}` as a function, a class, or a module.",
        ]
        answer = f"{name} is a {item.kind}."
        out.append(record("object_kind", rng.choice(templates), "", answer, name))
    return out


def _signature_pool(src: Sources) -> list[tuple[ApiObject, str, list[inspect.Parameter]]]:
    pool = []
    for item in src.objects + src.builtins:
        if item.kind == "class":
            continue
        rendered = render_signature(item)
        if rendered and len(rendered[0]) <= 110:
            pool.append((item, rendered[0], rendered[1]))
    return pool


def signature_params(src: Sources, rng: random.Random, target: int) -> list[dict]:
    pool = [entry for entry in _signature_pool(src) if 2 <= len(entry[2]) <= 8]
    chosen = _capped_sample(rng, pool, target, key=lambda entry: entry[0].module, cap=5)
    templates = [
        "List the parameter names in this Python signature, in order, separated by commas.",
        (
            "Extract the parameter names from the following function signature, in order, "
            "comma-separated and without * or ** prefixes."
        ),
        (
            "What are the names of the parameters in this signature? Give them in order, "
            "separated by commas."
        ),
    ]
    out = []
    for item, rendered, params in chosen:
        answer = ", ".join(param.name for param in params)
        out.append(record("signature_params", rng.choice(templates), rendered, answer, item.dotted))
    return out


def default_value(src: Sources, rng: random.Random, target: int) -> list[dict]:
    pool = []
    for item, rendered, params in _signature_pool(src):
        with_default = [p for p in params if p.default is not p.empty]
        if with_default:
            pool.append((item, rendered, with_default))
    chosen = _capped_sample(rng, pool, target, key=lambda entry: entry[0].module, cap=5)
    out = []
    for item, rendered, with_default in chosen:
        # Most defaults are None; prefer the more informative ones when there are any.
        informative = [p for p in with_default if p.default is not None]
        param = rng.choice(informative if informative and rng.random() < 0.8 else with_default)
        templates = [
            f"What is the default value of the parameter `{param.name}` in this signature?",
            f"According to the signature below, what does `{param.name}` default to?",
        ]
        answer = repr(param.default)
        out.append(record("default_value", rng.choice(templates), rendered, answer, item.dotted))
    return out


def first_sentence_family(src: Sources, rng: random.Random, target: int) -> list[dict]:
    pool = []
    for source, passage in src.passages:
        if any(abbr in passage for abbr in _ABBREVIATIONS) or ". " not in passage:
            continue
        sentences = split_sentences(passage)
        if not (2 <= len(sentences) <= 5) or not (20 <= len(passage.split()) <= 90):
            continue
        if all(good_sentence(s, min_words=3, max_words=45) for s in sentences):
            pool.append((source, passage, sentences[0]))
    chosen = _capped_sample(rng, pool, target, key=lambda e: e[0].split(".")[0], cap=10)
    templates = [
        "What is the first sentence of the following passage?",
        "Copy out only the first sentence of this text.",
        "Summarise the following documentation excerpt by quoting its opening sentence.",
    ]
    return [
        record("first_sentence", rng.choice(templates), passage, answer, source)
        for source, passage, answer in chosen
    ]


_VOWELS = "aeiou"


def misspell(word: str, rng: random.Random) -> str:
    """A deterministic (given `rng`) single-edit misspelling of `word`."""
    op = rng.choice(["swap", "drop", "double", "vowel"])
    i = rng.randrange(1, len(word) - 1)  # never the first or last letter
    if op == "swap" and i + 1 < len(word) - 1 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == "vowel" and word[i] in _VOWELS:
        return word[:i] + rng.choice([v for v in _VOWELS if v != word[i]]) + word[i + 1 :]
    doubled = word[i] in (word[i - 1], word[i + 1])
    if doubled or (op == "drop" and len(word) >= 7):
        # Drop a letter: one of a double ("loging"), or any in a long word (in a short word,
        # dropping a letter too often leaves another real word).
        return word[:i] + word[i + 1 :]
    return word[: i + 1] + word[i] + word[i + 1 :]


def stdlib_source_words() -> set[str]:
    """Lower-cased words in the standard library's own `.py` files (tests and site-packages
    excluded): a misspelling that is a real word ("quit" for "quiet") is likely to occur there."""
    root = Path(sysconfig.get_paths()["stdlib"])
    words: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if {"site-packages", "test", "tests"} & set(parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        words.update(word.lower() for word in re.findall(r"[A-Za-z]+", text))
    return words


def _vocabulary(src: Sources) -> tuple[Counter[str], set[str]]:
    """Counts of plain lowercase words in the prose, and every word seen anywhere."""
    counts: Counter[str] = Counter()
    every: set[str] = stdlib_source_words()
    for _source, sentence in src.sentences:
        for token in re.findall(r"[A-Za-z_]+", sentence):
            every.add(token.lower())
        counts.update(re.findall(r"(?<![\w.\"'])[a-z]+(?![\w.(\"'])", sentence))
    for _source, passage in src.passages:
        every.update(token.lower() for token in re.findall(r"[A-Za-z_]+", passage))
    return counts, every


def spelling_correction(src: Sources, rng: random.Random, target: int) -> list[dict]:
    counts, every = _vocabulary(src)
    keywords = set(dir(builtins)) | set(keyword.kwlist)
    common = {w for w, n in counts.items() if n >= 4 and len(w) >= 5 and w not in keywords}
    pool = [(s, t) for s, t in src.sentences if len(t.split()) <= 22]
    order = _capped_sample(rng, pool, len(pool), key=lambda e: e[0], cap=2)
    templates = [
        "Correct the spelling mistake in the following sentence.",
        (
            "The sentence below contains one misspelled word. Rewrite the sentence with the "
            "spelling fixed."
        ),
        "Fix the typo in this sentence.",
    ]
    out = []
    for source, sentence in order:
        words = [m for m in re.finditer(r"(?<![\w.\"'])[a-z]+(?![\w.(\"'])", sentence)]
        candidates = [m for m in words if m.group() in common]
        if not candidates:
            continue
        match = rng.choice(candidates)
        wrong = misspell(match.group(), rng)
        if wrong in every or wrong == match.group():
            continue
        broken = sentence[: match.start()] + wrong + sentence[match.end() :]
        out.append(record("spelling_correction", rng.choice(templates), broken, sentence, source))
        if len(out) == target:
            break
    return out


def _strip_punctuation(sentence: str) -> str | None:
    words = []
    for token in sentence.split():
        word = token.rstrip(".,;:!?")
        if not re.fullmatch(r"[A-Za-z0-9]+", word):
            return None
        words.append(word)
    return " ".join(words)


def _capitalise_words(sentence: str) -> str:
    return " ".join(token[:1].upper() + token[1:] for token in sentence.split(" "))


REWRITES: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    ("Rewrite the following sentence in lowercase letters.", str.lower),
    ("Rewrite the following sentence in uppercase letters.", str.upper),
    (
        "Remove the punctuation marks from the following sentence.",
        _strip_punctuation,
    ),
    (
        (
            "Capitalise the first letter of every word in the following sentence, leaving the "
            "other letters unchanged."
        ),
        _capitalise_words,
    ),
)


_PLAIN_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*[.,;:!?]?")


def rewrite(src: Sources, rng: random.Random, target: int) -> list[dict]:
    pool = [
        (s, t)
        for s, t in src.sentences
        if len(t.split()) <= 25 and all(_PLAIN_WORD_RE.fullmatch(w) for w in t.split())
    ]
    order = _capped_sample(rng, pool, len(pool), key=lambda e: e[0], cap=2)
    out = []
    for index, (source, sentence) in enumerate(order):
        instruction, transform = REWRITES[index % len(REWRITES)]
        answer = transform(sentence)
        if not answer or answer == sentence:
            continue
        out.append(record("rewrite", instruction, sentence, answer, source))
        if len(out) == target:
            break
    return out


def word_count(src: Sources, rng: random.Random, target: int) -> list[dict]:
    pool = [
        (s, t)
        for s, t in src.sentences
        if len(t.split()) <= 24 and all(re.search(r"[A-Za-z0-9]", w) for w in t.split())
    ]
    chosen = _capped_sample(rng, pool, target, key=lambda e: e[0], cap=2)
    templates = [
        "How many words are in the following sentence? Count whitespace-separated words.",
        "Count the words in this sentence (words are separated by spaces).",
    ]
    return [
        record("word_count", rng.choice(templates), sentence, str(len(sentence.split())), source)
        for source, sentence in chosen
    ]


def arithmetic(_src: Sources, rng: random.Random, target: int) -> list[dict]:
    out = []
    for index in range(target):
        op = ("add", "subtract", "multiply", "remainder")[index % 4]
        if op == "add":
            a, b = rng.randint(10, 9999), rng.randint(10, 9999)
            instruction = rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}."])
            answer = a + b
        elif op == "subtract":
            a, b = rng.randint(10, 9999), rng.randint(10, 9999)
            instruction = rng.choice([f"What is {a} - {b}?", f"Subtract {b} from {a}."])
            answer = a - b
        elif op == "multiply":
            a, b = rng.randint(2, 99), rng.randint(2, 999)
            instruction = rng.choice([f"What is {a} * {b}?", f"Multiply {a} by {b}."])
            answer = a * b
        else:
            a, b = rng.randint(20, 9999), rng.randint(3, 97)
            instruction = f"What is the remainder when {a} is divided by {b}?"
            answer = a % b
        out.append(record("arithmetic", instruction, "", str(answer), None))
    return out


def _fmt(value: Decimal) -> str:
    """A Decimal without exponent or trailing zeros after the point."""
    return format(value.normalize(), "f")


def unit_conversion(_src: Sources, rng: random.Random, target: int) -> list[dict]:
    out = []
    kinds = ("km_m", "h_min", "min_s", "kg_g", "m_cm", "c_f", "f_c", "in_cm", "kib_b", "l_ml")
    for index in range(target):
        kind = kinds[index % len(kinds)]
        if kind == "km_m":
            km = Decimal(rng.randint(1, 400)) / 10
            instruction = f"Convert {_fmt(km)} km to metres."
            answer = f"{_fmt(km * 1000)} m"
        elif kind == "h_min":
            hours = Decimal(rng.randint(1, 96)) / 4
            instruction = f"How many minutes are there in {_fmt(hours)} hours?"
            answer = f"{_fmt(hours * 60)} minutes"
        elif kind == "min_s":
            minutes = rng.randint(2, 600)
            instruction = f"Convert {minutes} minutes to seconds."
            answer = f"{minutes * 60} seconds"
        elif kind == "kg_g":
            kg = Decimal(rng.randint(1, 2000)) / 100
            instruction = f"Convert {_fmt(kg)} kg to grams."
            answer = f"{_fmt(kg * 1000)} g"
        elif kind == "m_cm":
            metres = Decimal(rng.randint(1, 999)) / 100
            instruction = f"Express {_fmt(metres)} m in centimetres."
            answer = f"{_fmt(metres * 100)} cm"
        elif kind == "c_f":
            celsius = rng.randint(-40, 120)
            fahrenheit = Decimal(celsius) * 9 / 5 + 32
            instruction = (
                f"Convert {celsius} °C to degrees Fahrenheit (F = C × 9/5 + 32), "
                "rounded to one decimal place."
            )
            answer = f"{fahrenheit.quantize(Decimal('0.1'), ROUND_HALF_UP)} °F"
        elif kind == "f_c":
            fahrenheit = rng.randint(-40, 250)
            celsius = (Decimal(fahrenheit) - 32) * 5 / 9
            instruction = (
                f"Convert {fahrenheit} °F to degrees Celsius (C = (F − 32) × 5/9), "
                "rounded to one decimal place."
            )
            answer = f"{celsius.quantize(Decimal('0.1'), ROUND_HALF_UP)} °C"
        elif kind == "in_cm":
            inches = rng.randint(1, 100)
            instruction = f"Convert {inches} inches to centimetres (1 inch = 2.54 cm)."
            answer = f"{_fmt(Decimal(inches) * Decimal('2.54'))} cm"
        elif kind == "kib_b":
            kib = rng.randint(1, 512)
            instruction = f"How many bytes are in {kib} KiB (1 KiB = 1024 bytes)?"
            answer = f"{kib * 1024} bytes"
        else:
            litres = Decimal(rng.randint(1, 500)) / 10
            instruction = f"Convert {_fmt(litres)} litres to millilitres."
            answer = f"{_fmt(litres * 1000)} ml"
        out.append(record("unit_conversion", instruction, "", answer, None))
    return out


FAMILIES: dict[str, Callable[[Sources, random.Random, int], list[dict]]] = {
    "describe_api": describe_api,
    "python_builtins": python_builtins,
    "module_lookup": module_lookup,
    "object_kind": object_kind,
    "signature_params": signature_params,
    "default_value": default_value,
    "first_sentence": first_sentence_family,
    "spelling_correction": spelling_correction,
    "rewrite": rewrite,
    "word_count": word_count,
    "arithmetic": arithmetic,
    "unit_conversion": unit_conversion,
}

# --------------------------------------------------------------------------------------------
# Length filter

ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
_PRETOKEN_RE = re.compile(r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+")


def alpaca_text(rec: dict) -> str:
    """The record as `tunelab.data.prompts.Alpaca` renders it, answer included."""
    text = f"{ALPACA_HEADER}\n\n### Instruction:\n{rec['instruction']}"
    if rec["input"]:
        text += f"\n\n### Input:\n{rec['input']}"
    return text + f"\n\n### Response:\n{rec['output']}"


def estimate_tokens(text: str) -> int:
    """A conservative (rarely low) estimate of the GPT-2 BPE token count, without a tokenizer."""
    total = 0
    for piece in _PRETOKEN_RE.findall(text):
        core = piece.strip()
        if not piece.isascii():
            total += len(piece.encode("utf-8"))
        elif not core:
            total += len(piece)
        elif core.isalpha():
            total += 1 + len(core) // 5
        elif core.isdigit():
            total += (len(core) + 2) // 3
        else:
            total += len(core)
    return total


# --------------------------------------------------------------------------------------------
# Build


def build_records(log: Callable[[str], None] | None = None) -> list[dict]:
    """Build every family, drop duplicates and over-long records, shuffle with the seed."""
    log = log or (lambda message: None)
    if sys.version_info[:3] != REFERENCE_PYTHON:
        found = ".".join(map(str, sys.version_info[:3]))
        wanted = ".".join(map(str, REFERENCE_PYTHON))
        log(
            f"warning: building with Python {found}; the committed file was built with {wanted} "
            "and docstrings differ between versions"
        )
    src = collect_sources()
    records: list[dict] = []
    seen: set[tuple[str, str]] = set()
    too_long = 0
    for family, build in FAMILIES.items():
        rng = random.Random(f"{SEED}:{family}")
        kept = 0
        for rec in build(src, rng, TARGETS[family]):
            key = (rec["instruction"], rec["input"])
            if key in seen:
                continue
            if estimate_tokens(alpaca_text(rec)) > MAX_PROMPT_TOKENS:
                too_long += 1
                continue
            seen.add(key)
            records.append(rec)
            kept += 1
        log(f"{family}: {kept} records")
    log(f"dropped {too_long} records over the {MAX_PROMPT_TOKENS}-token budget")
    random.Random(SEED).shuffle(records)
    log(f"total: {len(records)} records")
    return records


def render(records: list[dict]) -> str:
    return json.dumps(records, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSON file")
    parser.add_argument(
        "--check", action="store_true", help="rebuild in memory; exit 1 if --out differs"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    text = render(build_records(log=lambda message: print(message, file=sys.stderr)))
    data = text.encode("utf-8")
    elapsed = time.perf_counter() - start
    return write_or_check(args.out, data, elapsed, args.check)


if __name__ == "__main__":
    raise SystemExit(main())
