"""Build the two embedded text corpora used by the continued-pretraining / forgetting study.

Both corpora are built offline, deterministically, from text that ships with CPython 3.11
itself (no network, no Debian packages, nothing from PyPI beyond what CPython bundles):

* ``old_prose`` ("old domain"): English technical prose --
  the Python language reference topics in :mod:`pydoc_data.topics`, docstrings of pure-Python
  standard-library modules (read with :mod:`ast`, nothing is imported), docstrings of a fixed
  allowlist of built-in / C extension modules (read with :mod:`inspect`), docstrings of an
  allowlist of packages inside the pip and setuptools wheels that CPython bundles under
  ``Lib/ensurepip/_bundled`` (read with :mod:`ast` from the zip, nothing is installed), and a
  few plain-text documents shipped in the standard library (IDLE's NEWS/README files, IDLE's
  HTML help rendered to text, ``email/architecture.rst``, ``LICENSE.txt``).  Doctest blocks,
  reST literal (code) blocks, code directives and reST markup roles are removed, so the
  corpus is prose-first.
* ``new_python`` ("new domain"): verbatim Python source files of the standard library, selected
  deterministically (seeded hash order) up to a byte budget.

The two corpora are disjoint at the file level: docstrings are only harvested from modules that
were *not* selected for ``new_python``; docstrings (C modules, bundled wheels) and paragraphs
(>= 80 characters, all old sources) that also occur in a docstring of a selected source file are
dropped.  The new corpus still contains its own files' docstrings (they are part of the code).

Output: one gzip'd JSON-lines file per corpus, ``{"text": ..., "source": ...}`` per line, one
document per line, documents in a seeded-shuffled order, gzip header without mtime/filename so
the bytes are reproducible for a given Python build (see the README next to the outputs).

CLI::

    python -m tunelab.data.builders.corpora [--out-dir DIR] [--check]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import html
import importlib
import inspect
import io
import json
import re
import sys
import sysconfig
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path

#: Python version the committed files were built with (byte-for-byte reproduction needs it).
EXPECTED_PYTHON = (3, 11, 7)
#: Salt for the deterministic "shuffles" (sha256 of salt + key).
SEED = "tunelab-corpora-v1"
#: Byte budget for the new-domain corpus (sum of UTF-8 sizes of the selected files).
NEW_BUDGET_BYTES = 3_000_000
#: Source files larger than this are never selected.
MAX_FILE_BYTES = 200_000
#: A cleaned old-domain document must have at least this many words.
MIN_WORDS = 5
#: Old-domain paragraphs at least this long that occur in a new-domain docstring are removed.
MIN_OVERLAP_CHARS = 80

OLD_FILENAME = "old_prose.jsonl.gz"
NEW_FILENAME = "new_python.jsonl.gz"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "embedded" / "corpora"

#: Path components (relative to the stdlib root) excluded from every .py walk.  ``test``
#: directories are also stripped from many distributions (e.g. the official Docker images).
_EXCLUDED_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
#: Top-level directories excluded from the new-domain (code) corpus only.
_NEW_EXCLUDED_TOP = frozenset({"idlelib"})
#: Machine-generated modules (tables, build configuration) -- not human-written code.
_GENERATED = frozenset({"pydoc_data/topics.py", "re/_casefix.py", "stringprep.py", "token.py"})

#: Built-in / C-extension modules whose docstrings are harvested with :mod:`inspect`.  All of
#: them are part of a standard CPython 3.11 build on Linux; a missing one is an error.
C_MODULES: tuple[str, ...] = (
    "_asyncio",
    "_bisect",
    "_blake2",
    "_bz2",
    "_codecs",
    "_collections",
    "_contextvars",
    "_csv",
    "_datetime",
    "_decimal",
    "_functools",
    "_hashlib",
    "_heapq",
    "_io",
    "_json",
    "_lsprof",
    "_lzma",
    "_operator",
    "_pickle",
    "_queue",
    "_random",
    "_signal",
    "_socket",
    "_sqlite3",
    "_ssl",
    "_stat",
    "_struct",
    "_thread",
    "_tracemalloc",
    "array",
    "atexit",
    "binascii",
    "builtins",
    "cmath",
    "errno",
    "faulthandler",
    "fcntl",
    "gc",
    "grp",
    "itertools",
    "marshal",
    "math",
    "mmap",
    "posix",
    "pwd",
    "pyexpat",
    "resource",
    "select",
    "sys",
    "termios",
    "time",
    "unicodedata",
    "zlib",
)

#: Plain-text documents shipped in the standard library directory (relative paths).
TEXT_FILES: tuple[str, ...] = (
    "LICENSE.txt",
    "email/architecture.rst",
    "idlelib/CREDITS.txt",
    "idlelib/HISTORY.txt",
    "idlelib/NEWS.txt",
    "idlelib/NEWS2x.txt",
    "idlelib/README.txt",
    "idlelib/TODO.txt",
    "idlelib/extend.txt",
)
#: Sphinx HTML shipped in the standard library, rendered to text (``<pre>`` blocks dropped).
HTML_FILES: tuple[str, ...] = ("idlelib/help.html",)

#: Docstring sources inside the wheels bundled with CPython (``Lib/ensurepip/_bundled``):
#: (distribution, path prefix inside the wheel, licence).  Vendored copies of stdlib
#: backports (importlib_metadata, tomli, typing_extensions, zipp, ...), the setuptools copy of
#: distutils and copyleft-licensed packages (chardet) are deliberately left out.
WHEEL_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("pip", "pip/_internal/", "MIT"),
    ("pip", "pip/_vendor/distlib/", "PSF-2.0"),
    ("pip", "pip/_vendor/distro/", "Apache-2.0"),
    ("pip", "pip/_vendor/platformdirs/", "MIT"),
    ("pip", "pip/_vendor/pygments/", "BSD-2-Clause"),
    ("pip", "pip/_vendor/pyparsing/", "MIT"),
    ("pip", "pip/_vendor/requests/", "Apache-2.0"),
    ("pip", "pip/_vendor/resolvelib/", "ISC"),
    ("pip", "pip/_vendor/rich/", "MIT"),
    ("pip", "pip/_vendor/urllib3/", "MIT"),
    ("setuptools", "_distutils_hack/", "MIT"),
    ("setuptools", "pkg_resources/__init__.py", "MIT"),
    ("setuptools", "setuptools/", "MIT"),
    ("setuptools", "setuptools/_vendor/more_itertools/", "MIT"),
)
#: Path prefixes inside the wheels that are never used (even under an included prefix).
WHEEL_EXCLUDED: tuple[str, ...] = (
    "setuptools/_distutils/",
    "setuptools/_vendor/",
    "setuptools/extern/",
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def stdlib_root() -> Path:
    """Return the directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _seeded_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join((SEED, *parts)).encode("utf-8")).hexdigest()


def _shuffle(docs: list[dict[str, str]]) -> list[dict[str, str]]:
    """Deterministic, seeded permutation of documents (independent of input order)."""
    return sorted(docs, key=lambda d: (_seeded_key(d["source"], d["text"]), d["source"]))


def _iter_stdlib_py(root: Path) -> Iterator[str]:
    """Yield sorted stdlib-relative POSIX paths of .py files, minus excluded directories."""
    rels = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if _EXCLUDED_PARTS.intersection(rel.split("/")[:-1]):
            continue
        if rel.split("/")[-1].startswith("_sysconfigdata_"):
            continue
        rels.append(rel)
    yield from sorted(rels)


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None


def _is_generated(rel: str, text: str) -> bool:
    return rel in _GENERATED or (rel.startswith("encodings/") and "gencodec" in text[:600])


def _new_candidates(root: Path) -> list[tuple[str, str]]:
    """Every eligible (relative path, source text) for the new-domain corpus, sorted by path."""
    out = []
    for rel in _iter_stdlib_py(root):
        if rel.split("/")[0] in _NEW_EXCLUDED_TOP:
            continue
        path = root / rel
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        text = _read_utf8(path)
        if text is None or not text.strip() or _is_generated(rel, text):
            continue
        out.append((rel, text))
    return out


def select_new_files(root: Path | None = None) -> list[tuple[str, str]]:
    """Deterministically select stdlib source files (path, text) up to ``NEW_BUDGET_BYTES``.

    Candidates are visited in seeded-hash order of their path; a file is taken when it still
    fits in the budget.  The result is sorted by path.
    """
    root = root or stdlib_root()
    chosen, total = [], 0
    for rel, text in sorted(_new_candidates(root), key=lambda c: _seeded_key("select", c[0])):
        size = len(text.encode("utf-8"))
        if total + size <= NEW_BUDGET_BYTES:
            chosen.append((rel, text))
            total += size
    return sorted(chosen)


# --------------------------------------------------------------------------------------------
# prose cleaning
# --------------------------------------------------------------------------------------------

_ROLE_RE = re.compile(r":(?:[\w-]+:)*[\w-]+:`([^`]+)`")
_LITERAL_RE = re.compile(r"``([^`]+)``")
_TARGET_RE = re.compile(r"^(.*?)\s*<[^<>]+>$", re.S)
_DIRECTIVE_RE = re.compile(r"^\s*\.\.\s+([\w:-]+)::")
_EXPLICIT_MARKUP_RE = re.compile(r"^\s*\.\.(\s|$)")
_FOOTNOTE_RE = re.compile(r"^(\s*)\.\.\s+(\[[^\]]+\]\s.*)$")
_ORPHAN_EXAMPLE_RE = re.compile(r"(?i)^(for )?(an? )?(usage )?examples?\b[^\n.]{0,60}:$")
#: Directives whose body is code, not prose (body dropped with the directive line).
_CODE_DIRECTIVES = frozenset({"code", "code-block", "sourcecode", "doctest", "testcode"})


def _role_text(match: re.Match[str]) -> str:
    content = match.group(1).strip()
    target = _TARGET_RE.match(content)
    if target and target.group(1):
        return target.group(1)
    if content.startswith("~"):
        return content[1:].split(".")[-1]
    return content.lstrip("!")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _drop_doctests(lines: list[str]) -> list[str]:
    """Remove doctest blocks: from a ``>>>`` line up to the next blank line."""
    out: list[str] = []
    in_block = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_block = True
        elif not stripped:
            in_block = False
        elif stripped == "..." or stripped.startswith("... "):
            continue
        if not in_block:
            out.append(line)
    return out


def _skip_indented(lines: list[str], i: int, base: int) -> int:
    """Index of the first line at or after ``i`` that ends the block indented deeper than base."""
    j = i
    while j < len(lines) and not lines[j].strip():
        j += 1
    if j < len(lines) and _indent(lines[j]) > base:
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        return j
    return i


def _drop_explicit_markup(lines: list[str]) -> list[str]:
    """Handle reST ``..`` constructs: directive lines dropped (with the body for code
    directives, keeping it otherwise), footnote markers unwrapped, targets/comments dropped."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE_RE.match(line)
        footnote = _FOOTNOTE_RE.match(line)
        if directive:
            i += 1
            if directive.group(1) in _CODE_DIRECTIVES:
                i = _skip_indented(lines, i, _indent(line))
        elif footnote:
            out.append(footnote.group(1) + footnote.group(2))
            i += 1
        elif _EXPLICIT_MARKUP_RE.match(line):
            i += 1
        else:
            out.append(line)
            i += 1
    return out


def _drop_literal_blocks(lines: list[str]) -> list[str]:
    """Remove reST literal blocks (indented text after a paragraph ending in ``::``)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            if head.strip():
                out.append(head + ("" if head.endswith((":", ".")) else ":"))
            out.append("")
            i = _skip_indented(lines, i + 1, _indent(line))
            continue
        out.append(line)
        i += 1
    return out


def clean_prose(text: str) -> str:
    """Normalise a docstring / reST-ish text to prose.

    Drops doctest blocks, reST literal blocks, code directives, directive lines, link
    targets and orphaned "Example:" headings; replaces markup roles (``:func:`x``` -> ``x``)
    and inline literals (````x```` -> ``x``); trims whitespace.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(8)
    lines = [ln.rstrip() for ln in text.split("\n")]
    lines = _drop_doctests(lines)
    lines = _drop_explicit_markup(lines)
    lines = _drop_literal_blocks(lines)
    text = "\n".join(lines)
    text = _ROLE_RE.sub(_role_text, text)
    text = _LITERAL_RE.sub(r"\1", text)
    paragraphs = (p.strip("\n") for p in re.split(r"\n(?:[ \t]*\n)+", text))
    text = "\n\n".join(
        p for p in paragraphs if p.strip() and not _ORPHAN_EXAMPLE_RE.match(p.strip())
    )
    return text.strip()


def _keep(text: str) -> bool:
    return len(text.split()) >= MIN_WORDS


# --------------------------------------------------------------------------------------------
# old-domain sources
# --------------------------------------------------------------------------------------------


def _pydoc_topics() -> Iterator[dict[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = clean_prose(topics[name])
        if _keep(text):
            yield {"text": text, "source": f"cpython:pydoc_data.topics[{name}]"}


def _docstring_nodes(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """Yield (qualified name, raw cleaned docstring) for a module and its defs, source order."""

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                qual = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    yield qual, doc
                yield from visit(child, qual + ".")
            else:
                yield from visit(child, prefix)

    doc = ast.get_docstring(tree, clean=True)
    if doc:
        yield "<module>", doc
    yield from visit(tree, "")


def _stdlib_docstrings(root: Path, skip: set[str]) -> Iterator[dict[str, str]]:
    for rel in _iter_stdlib_py(root):
        if rel in skip:
            continue
        text = _read_utf8(root / rel)
        if text is None or _is_generated(rel, text):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(text, filename=rel)
        except SyntaxError:
            continue
        for qual, doc in _docstring_nodes(tree):
            cleaned = clean_prose(doc)
            if _keep(cleaned):
                yield {"text": cleaned, "source": f"cpython:Lib/{rel}:{qual}"}


def _bundled_wheel(root: Path, dist: str) -> Path:
    wheels = sorted((root / "ensurepip" / "_bundled").glob(f"{dist}-*.whl"))
    if len(wheels) != 1:
        raise FileNotFoundError(f"expected one bundled {dist} wheel under ensurepip, got {wheels}")
    return wheels[0]


def _wheel_member_allowed(dist: str, name: str) -> bool:
    """A ``.py`` member is used when its longest matching prefix is an included one."""
    if not name.endswith(".py"):
        return False
    included = [len(p) for d, p, _ in WHEEL_SOURCES if d == dist and name.startswith(p)]
    excluded = [len(p) for p in WHEEL_EXCLUDED if name.startswith(p)]
    return bool(included) and max(included) > max(excluded, default=-1)


def _wheel_docstrings(root: Path, exclude: set[str]) -> Iterator[dict[str, str]]:
    """Docstrings of allowlisted packages inside the wheels bundled with ``ensurepip``."""
    for dist in sorted({d for d, _, _ in WHEEL_SOURCES}):
        wheel = _bundled_wheel(root, dist)
        with zipfile.ZipFile(wheel) as zf:
            for name in sorted(zf.namelist()):
                if not _wheel_member_allowed(dist, name):
                    continue
                text = zf.read(name).decode("utf-8")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tree = ast.parse(text, filename=name)
                for qual, doc in _docstring_nodes(tree):
                    if doc in exclude:
                        continue
                    cleaned = clean_prose(doc)
                    if _keep(cleaned):
                        yield {"text": cleaned, "source": f"{wheel.name}:{name}:{qual}"}


def _c_module_objects(modname: str) -> Iterator[tuple[str, object]]:
    """(qualified name, object): the module, its public classes/routines, their public members.

    Hooks that may be replaced at run time (``sys.excepthook``, ``sys.unraisablehook``, ...)
    are read from their saved originals (``sys.__excepthook__``, ...), so that the result does
    not depend on what the host process (e.g. pytest) installed.
    """
    module = importlib.import_module(modname)
    namespace = vars(module)
    yield "<module>", module
    for name in sorted(namespace):
        obj = namespace.get(f"__{name}__", namespace[name])
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", modname) not in (modname, None, "builtins"):
            continue
        yield name, obj
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_"):
                    yield f"{name}.{attr}", member


def _c_module_docstrings(exclude: set[str]) -> Iterator[dict[str, str]]:
    """Docstrings of the :data:`C_MODULES` (read with :mod:`inspect`), minus ``exclude``."""
    for modname in C_MODULES:
        seen: set[int] = set()
        for qual, obj in _c_module_objects(modname):
            doc = getattr(obj, "__doc__", None)
            if not isinstance(doc, str) or id(obj) in seen:
                continue
            seen.add(id(obj))
            raw = inspect.cleandoc(doc)
            if raw in exclude:
                continue
            cleaned = clean_prose(raw)
            if _keep(cleaned):
                yield {"text": cleaned, "source": f"cpython:{modname}:{qual}"}


class _HelpHTMLText(HTMLParser):
    """Minimal Sphinx-HTML to text renderer: main body only, ``<pre>`` and chrome dropped."""

    _BLOCK = frozenset({"p", "li", "dt", "dd", "h1", "h2", "h3", "h4", "div", "section", "tr"})
    _SKIP = frozenset({"pre", "script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._depth = 0  # depth inside the main body div (0 = outside)
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._depth == 0:
            if tag == "div" and ("role", "main") in attrs:
                self._depth = 1
            return
        if tag == "div":
            self._depth += 1
        if tag in self._SKIP:
            self._skip += 1
        if tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if self._depth == 0:
            return
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        if tag in self._BLOCK:
            self.parts.append("\n\n")
        if tag == "div":
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth and not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        raw = "".join(self.parts).replace("\u00b6", "")
        paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", raw))
        return "\n\n".join(p for p in paragraphs if p)


def _text_files(root: Path) -> Iterator[dict[str, str]]:
    for rel in TEXT_FILES:
        raw = (root / rel).read_text(encoding="utf-8")
        if rel.endswith(".rst"):
            cleaned = clean_prose(raw)
        else:
            cleaned = "\n".join(_drop_doctests([ln.rstrip() for ln in raw.split("\n")])).strip()
        if _keep(cleaned):
            yield {"text": cleaned, "source": f"cpython:Lib/{rel}"}
    for rel in HTML_FILES:
        parser = _HelpHTMLText()
        parser.feed((root / rel).read_text(encoding="utf-8"))
        parser.close()
        cleaned = html.unescape(parser.text())
        if _keep(cleaned):
            yield {"text": cleaned, "source": f"cpython:Lib/{rel}"}


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _drop_paragraphs(docs: Iterable[dict[str, str]], banned: set[str]) -> list[dict[str, str]]:
    """Remove paragraphs found in ``banned`` from each document; drop documents left too short."""
    out = []
    for doc in docs:
        paragraphs = _paragraphs(doc["text"])
        if any(p in banned for p in paragraphs):
            text = "\n\n".join(p for p in paragraphs if p not in banned)
            if not _keep(text):
                continue
            doc = {"text": text, "source": doc["source"]}
        out.append(doc)
    return out


def _dedup(docs: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    seen: set[str] = set()
    out = []
    for doc in docs:
        if doc["text"] not in seen:
            seen.add(doc["text"])
            out.append(doc)
    return out


def _check_python() -> None:
    if sys.version_info[:3] != EXPECTED_PYTHON:
        found = ".".join(map(str, sys.version_info[:3]))
        want = ".".join(map(str, EXPECTED_PYTHON))
        print(
            f"warning: building with Python {found}; committed corpora were built with {want} "
            "and will not be reproduced byte-for-byte",
            file=sys.stderr,
        )


# --------------------------------------------------------------------------------------------
# public builders
# --------------------------------------------------------------------------------------------


def build_new_python() -> list[dict[str, str]]:
    """New-domain corpus: verbatim stdlib ``.py`` files, one document per file, shuffled."""
    docs = [{"text": text, "source": f"cpython:Lib/{rel}"} for rel, text in select_new_files()]
    return _shuffle(docs)


def build_old_prose() -> list[dict[str, str]]:
    """Old-domain corpus: English technical prose shipped with CPython, shuffled.

    Docstrings are only taken from modules not selected for :func:`build_new_python`, and
    docstrings / long paragraphs that also occur in a selected module's docstrings are
    removed; exact duplicate documents (by text) are removed, keeping the first in source
    order (topics, text files, stdlib, C modules, bundled wheels).
    """
    root = stdlib_root()
    selected = select_new_files(root)
    skip = {rel for rel, _ in selected}
    new_docstrings: set[str] = set()
    for rel, text in selected:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text, filename=rel)
        new_docstrings.update(doc for _, doc in _docstring_nodes(tree))
    # Paragraphs (>= MIN_OVERLAP_CHARS) of the new corpus' docstrings must not recur in old.
    banned = {
        p
        for doc in new_docstrings
        for p in _paragraphs(clean_prose(doc))
        if len(p) >= MIN_OVERLAP_CHARS
    }
    docs = [
        *_pydoc_topics(),
        *_text_files(root),
        *_stdlib_docstrings(root, skip),
        *_c_module_docstrings(new_docstrings),
        *_wheel_docstrings(root, new_docstrings),
    ]
    return _shuffle(_dedup(_drop_paragraphs(docs, banned)))


# --------------------------------------------------------------------------------------------
# serialisation + CLI
# --------------------------------------------------------------------------------------------


def to_jsonl_gz(docs: list[dict[str, str]]) -> bytes:
    """Serialise documents as reproducible gzip'd JSON lines (mtime=0, no file name)."""
    payload = "".join(
        json.dumps({"text": d["text"], "source": d["source"]}, ensure_ascii=False) + "\n"
        for d in docs
    ).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(payload)
    return buf.getvalue()


def read_jsonl_gz(path: Path) -> list[dict[str, str]]:
    """Load a corpus file written by :func:`to_jsonl_gz`."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def build_all() -> dict[str, bytes]:
    """Build both corpora; map of output file name to file bytes."""
    _check_python()
    return {
        OLD_FILENAME: to_jsonl_gz(build_old_prose()),
        NEW_FILENAME: to_jsonl_gz(build_new_python()),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tunelab.data.builders.corpora", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="directory of the corpus files (default: the package's data/embedded/corpora)",
    )
    parser.add_argument(
        "--check", action="store_true", help="rebuild in memory; exit 1 if files differ"
    )
    args = parser.parse_args(argv)
    built = build_all()
    status = 0
    for name, data in built.items():
        path = args.out_dir / name
        if args.check:
            same = path.is_file() and path.read_bytes() == data
            print(f"{'ok' if same else 'DIFFERS'}: {path}")
            status |= 0 if same else 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            print(f"wrote {path} ({len(data):,} bytes)")
    return status


if __name__ == "__main__":
    sys.exit(main())
