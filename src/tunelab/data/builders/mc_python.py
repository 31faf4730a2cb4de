"""Build the embedded multiple-choice set "what does this Python snippet print?"
(`src/tunelab/data/embedded/mc/python_semantics.jsonl`).

Each item is a short snippet (1-9 lines, numbers below 100, three- to six-letter words) made from one of the
families below with seeded random values. The right answer is what the snippet prints when run
here, at build time (its one printed line); the three distractors are what *mutants* of the
snippet print: the same code with one plausible mistake made (the neighbouring index, the other
variable or branch, insert for append, the loop bound one too far, the other case method, ...).
Only mutant outputs of the answer's *shape* are kept: the same length in characters and the same
characters except that a digit may be any digit and a letter any letter (`[2, 4, 6]` against
`[1, 4, 9]`, `7` against `5`, `HELLO` against `hello`). So no choice wins by being shorter or of
another kind, a random model is at chance, and `acc` and `acc_norm` agree. Outputs equal to the
answer or to another distractor are dropped; an instance without three distinct distractors of
the answer's shape is skipped.

Answer positions are balanced: the n-th item of the i-th family puts the answer at position
(n + i) mod 4 (PER_FAMILY is a multiple of 4), and the file interleaves the families (one item of
each in turn), so the first items (`limit=64`) are a fair sample too. The question is the snippet
in a fenced block followed by `Output:`, asked as a cloze (the continuation is `" " + printed
line`).

Deterministic: one seed, one `random.Random` per (family, attempt); the snippets are tunelab's
own (nothing is read or downloaded). Output: JSON lines `{question, choices, answer, subject,
code}` with subject = family.

    python -m tunelab.data.builders.mc_python            # writes python_semantics.jsonl
    python -m tunelab.data.builders.mc_python --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tunelab.data.builders.output import write_or_check

SEED = 27182
PER_FAMILY = 16
N_CHOICES = 4
OUT = Path(__file__).resolve().parents[1] / "embedded" / "mc" / "python_semantics.jsonl"
QUESTION = "```python\n{code}\n```\nOutput:"
# short words with distinct letters, grouped by length (same-shape choices need equal lengths)
WORDS3 = ["red", "tan", "sky", "fog", "oak", "ivy", "owl", "elk", "yak", "ant", "cup", "jar"]
WORDS5 = ["plane", "stone", "crumb", "light", "brick", "cloud", "frost", "grape", "mouse"]
WORDS6 = ["python", "planet", "garden", "silver", "bright", "castle", "winter", "oyster"]

Snippet = tuple[str, list[str]]  # (code, mutant codes)


def run(code: str) -> str | None:
    """What the code prints (one line, trailing spaces stripped), or None if it fails or prints
    several lines or nothing."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<snippet>", "exec"), {"__builtins__": __builtins__})
    except Exception:
        return None
    text = out.getvalue().rstrip("\n").rstrip()
    return text if text and "\n" not in text else None


def shape(text: str) -> str:
    """Digits -> 9, letters -> a, everything else as it is: choices of one item share it."""
    return re.sub(r"[A-Za-z]", "a", re.sub(r"[0-9]", "9", text))


def addition(rng: random.Random) -> Snippet:
    a, b = rng.randint(11, 44), rng.randint(11, 44)
    return f"print({a} + {b})", [
        f"print({a} + {b} + 1)",
        f"print({a} + {b} - 1)",
        f"print({a} + {b} + 10)",
        f"print({a} + {b} - 10)",
        f"print({a} - {b})",
        f"print({b} - {a})",
    ]


def reassign(rng: random.Random) -> Snippet:
    a, b, c = rng.sample(range(1, 5), 3)
    head = f"x = {a}\ny = x + {b}\nx = {c}\n"
    return f"{head}print(y)", [
        f"x = {a}\nx = {c}\ny = x + {b}\nprint(y)",
        f"{head}print(x)",
        f"{head}print(x + y)",
        f"{head}print({b})",
    ]


def list_index(rng: random.Random) -> Snippet:
    xs = rng.sample(range(10, 100), 5)
    i = rng.randint(1, 3)
    head = f"xs = {xs}\n"
    return f"{head}print(xs[{i}])", [f"{head}print(xs[{j}])" for j in (i - 1, i + 1, -i, -i - 1)]


def negative_index(rng: random.Random) -> Snippet:
    words = rng.sample(WORDS3, 5)
    k = rng.randint(1, 3)
    head = f"words = {words}\n"
    return f"{head}print(words[-{k}])", [
        f"{head}print(words[{j}])" for j in (k, k - 1, -k - 1, -k + 1 if k > 1 else 2)
    ]


def dict_lookup(rng: random.Random) -> Snippet:
    keys = rng.sample("abcdefgh", 4)
    d = dict(zip(keys, rng.sample(range(1, 10), 4), strict=True))
    key = rng.choice(keys)
    head = f"d = {d}\n"
    return f"{head}print(d[{key!r}])", [f"{head}print(d[{k!r}])" for k in keys if k != key] + [
        f"{head}print(len(d))"
    ]


def branches(rng: random.Random) -> Snippet:
    labels = rng.sample(WORDS3, 4)
    x = rng.randint(1, 12)
    body = (
        f"if x < 3:\n    print({labels[0]!r})\nelif x < 6:\n    print({labels[1]!r})\n"
        f"elif x < 9:\n    print({labels[2]!r})\nelse:\n    print({labels[3]!r})"
    )
    return f"x = {x}\n{body}", [f"x = {v}\n{body}" for v in (x - 3, x + 3, x - 1, x + 1, 12 - x)]


def max_min(rng: random.Random) -> Snippet:
    xs = rng.sample(range(1, 10), 4)
    op, other = rng.choice([("max", "min"), ("min", "max")])
    head = f"xs = {xs}\n"
    return f"{head}print({op}(xs))", [
        f"{head}print({other}(xs))",
        f"{head}print(xs[0])",
        f"{head}print(xs[-1])",
        f"{head}print(len(xs))",
        f"{head}print(sorted(xs)[1])",
    ]


def loop_sum(rng: random.Random) -> Snippet:
    xs = rng.sample(range(1, 10), 4)
    loop = "for x in xs:\n    total += x\n"
    head = f"xs = {xs}\ntotal = 0\n"
    return f"{head}{loop}print(total)", [
        f"xs = {xs}\ntotal = 1\n{loop}print(total)",
        f"{head}for x in xs[1:]:\n    total += x\nprint(total)",
        f"{head}for x in xs[:-1]:\n    total += x\nprint(total)",
        f"{head}for x in xs:\n    total += x + 1\nprint(total)",
        f"{head}for x in xs:\n    total = x\nprint(total)",
    ]


def string_index(rng: random.Random) -> Snippet:
    s = rng.choice(WORDS6)
    i = rng.randint(1, 4)
    head = f"s = {s!r}\n"
    return f"{head}print(s[{i}])", [f"{head}print(s[{j}])" for j in (i - 1, i + 1, -i, -i - 1)]


def string_slice(rng: random.Random) -> Snippet:
    s = rng.choice(WORDS6)
    i = rng.randint(1, 2)
    j = i + rng.randint(2, 3)
    head = f"s = {s!r}\n"
    return f"{head}print(s[{i}:{j}])", [
        f"{head}print(s[{i - 1}:{j - 1}])",
        f"{head}print(s[{i + 1}:{j + 1}])",
        f"{head}print(s[{i}:{j}][::-1])",
        f"{head}print(s[-{j}:-{i}])",
    ]


def sorting(rng: random.Random) -> Snippet:
    xs = rng.sample(range(1, 10), 4)
    return f"print(sorted({xs}))", [
        f"print(sorted({xs}, reverse=True))",
        f"print({xs})",
        f"print(list(reversed({xs})))",
        f"print(sorted({xs})[1:] + sorted({xs})[:1])",
    ]


def append_insert(rng: random.Random) -> Snippet:
    xs = rng.sample(range(1, 10), 3)
    v = rng.choice([n for n in range(1, 10) if n not in xs])
    head = f"xs = {xs}\n"
    return f"{head}xs.append({v})\nprint(xs)", [
        f"{head}xs.insert(0, {v})\nprint(xs)",
        f"{head}xs.insert(1, {v})\nprint(xs)",
        f"{head}xs.insert(2, {v})\nprint(xs)",
    ]


def case_methods(rng: random.Random) -> Snippet:
    s = rng.choice(WORDS5 + WORDS6).capitalize()
    methods = ["upper", "lower", "swapcase", "title"]
    m = rng.choice(methods)
    return f"s = {s!r}\nprint(s.{m}())", [f"s = {s!r}\nprint(s.{o}())" for o in methods if o != m]


def concat(rng: random.Random) -> Snippet:
    a, b = rng.sample(["ab", "cd", "xy", "pq", "mn", "uv"], 2)
    head = f"a = {a!r}\nb = {b!r}\n"
    return f"{head}print(a + b)", [
        f"{head}print(b + a)",
        f"{head}print(a * 2)",
        f"{head}print(b * 2)",
        f"{head}print(a[::-1] + b)",
    ]


def loop_print(rng: random.Random) -> Snippet:
    xs = rng.sample(range(1, 5), 3)
    k = rng.choice([2, 3])
    return f"for x in {xs}:\n    print(x * {k}, end=' ')", [
        f"for x in {xs}:\n    print(x + {k}, end=' ')",
        f"for x in {xs[::-1]}:\n    print(x * {k}, end=' ')",
        f"for x in {xs}:\n    print(x * x, end=' ')",
        f"for x in {sorted(xs)}:\n    print(x * {k}, end=' ')",
    ]


def variables(rng: random.Random) -> Snippet:
    names = rng.choice(["abcd", "wxyz", "pqrs", "ijkn"])
    values = rng.sample(range(1, 10), 4)
    head = "".join(f"{n} = {v}\n" for n, v in zip(names, values, strict=True))
    pick = rng.choice(names)
    return f"{head}print({pick})", [f"{head}print({n})" for n in names if n != pick]


def string_vars(rng: random.Random) -> Snippet:
    a, b = rng.sample(WORDS3, 2)
    head = f"a = {a!r}\nb = {b!r}\n"
    fmt = rng.choice(["{a}-{b}", "{b}-{a}", "{a}:{b}", "{b}:{a}"])
    return f"{head}print(f{fmt!r})", [
        f"{head}print(f{f!r})"
        for f in (
            fmt.replace("a", "_").replace("b", "a").replace("_", "b"),
            fmt.replace("b", "a"),
            fmt.replace("a", "b"),
        )
    ]


def small_sum(rng: random.Random) -> Snippet:
    a, b = rng.randint(1, 5), rng.randint(1, 4)
    head = f"x = {a}\ny = {b}\n"
    return f"{head}print(x + y)", [
        f"{head}print(x + y + 1)",
        f"{head}print(x + y - 1)",
        f"{head}print(x * y)",
        f"{head}print(x - y)",
        f"{head}print(y - x)",
        f"{head}print(x)",
    ]


def range_list(rng: random.Random) -> Snippet:
    n, k = rng.randint(3, 4), rng.randint(1, 2)
    a = rng.randint(0, 9 - n * k)
    b = a + n * k
    return f"print(list(range({a}, {b}, {k})))", [
        f"print(list(range({a + k}, {b + k}, {k})))",
        f"print(list(range({a - k}, {b - k}, {k})))",
        f"print(list(range({b - k}, {a - 1}, -{k})))",
        f"print(list(range({a}, {a + n * (k + 1)}, {k + 1})))",
        f"print(list(range({a + 1}, {b + 1}, {k})))",
    ]


def first_element(rng: random.Random) -> Snippet:
    words = rng.sample(WORDS3, 4)
    head = f"words = {words}\n"
    return f"{head}print(words[0])", [f"{head}print(words[{j}])" for j in (1, 2, 3, -1)]


FAMILIES: dict[str, Callable[[random.Random], Snippet]] = {
    f.__name__: f
    for f in (
        addition,
        reassign,
        list_index,
        negative_index,
        dict_lookup,
        branches,
        max_min,
        loop_sum,
        string_index,
        string_slice,
        sorting,
        append_insert,
        case_methods,
        concat,
        loop_print,
        variables,
        string_vars,
        small_sum,
        range_list,
        first_element,
    )
}


def distractors(answer: str, mutants: list[str]) -> list[str]:
    """Distinct outputs of the mutants with the answer's shape, in mutant order."""
    out: list[str] = []
    for code in mutants:
        text = run(code)
        if text is not None and shape(text) == shape(answer) and text not in (answer, *out):
            out.append(text)
    return out


def family_items(family: str, offset: int) -> list[dict]:
    """PER_FAMILY items of one family; the n-th puts its answer at (n + offset) mod N_CHOICES."""
    make = FAMILIES[family]
    items: list[dict] = []
    seen: set[str] = set()
    attempt = 0
    while len(items) < PER_FAMILY:
        if attempt >= PER_FAMILY * 50:
            raise RuntimeError(f"family {family}: only {len(items)} items in {attempt} attempts")
        rng = random.Random(f"{SEED}:{family}:{attempt}")
        attempt += 1
        code, mutants = make(rng)
        answer = run(code)
        if code in seen or answer is None:
            continue
        wrong = distractors(answer, mutants)
        if len(wrong) < N_CHOICES - 1:
            continue
        choices = rng.sample(wrong, N_CHOICES - 1)
        pos = (len(items) + offset) % N_CHOICES
        choices.insert(pos, answer)
        seen.add(code)
        items.append(
            {
                "question": QUESTION.format(code=code),
                "choices": choices,
                "answer": pos,
                "subject": family,
                "code": code,
            }
        )
    return items


def build_items() -> list[dict]:
    """All families, interleaved (one item of each family in turn), so that the first n items
    (`limit=n`) cover every family and every answer position about equally."""
    per_family = [family_items(f, i) for i, f in enumerate(FAMILIES)]
    return [items[n] for n in range(PER_FAMILY) for items in per_family]


def render(items: list[dict]) -> str:
    return "".join(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items)


def summary(items: list[dict]) -> str:
    by = Counter(it["subject"] for it in items)
    pos = Counter(it["answer"] for it in items)
    return (
        f"{len(items)} items in {len(by)} families of {PER_FAMILY}; answer positions "
        f"{dict(sorted(pos.items()))}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output JSONL file")
    parser.add_argument(
        "--check", action="store_true", help="rebuild in memory; exit 1 if --out differs"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    items = build_items()
    data = render(items).encode("utf-8")
    elapsed = time.perf_counter() - start
    print(summary(items), file=sys.stderr)
    return write_or_check(args.out, data, elapsed, args.check)


if __name__ == "__main__":
    raise SystemExit(main())
