"""Build the embedded multiple-choice set "what does this Python snippet print?"
(`src/tunelab/data/embedded/mc/python_semantics.jsonl`).

Each item is a short snippet made from one of the families below with seeded random values. The
right answer is what the snippet prints when run here, at build time (Python 3.11, its printed
line); the three distractors are what *mutants* of the snippet print: the same code with one
plausible mistake made (floor vs true division, an off-by-one bound, the other string method, a
copy instead of an alias, ...). Mutant outputs equal to the answer or to another distractor (ignoring surrounding spaces) are dropped; an instance
without three distinct distractors is skipped. The position of the right answer is seeded.

Deterministic: one seed, one `random.Random` per (family, instance); the snippets are tunelab's
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
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tunelab.data.builders.output import write_or_check

SEED = 31415
PER_FAMILY = 18
OUT = Path(__file__).resolve().parents[1] / "embedded" / "mc" / "python_semantics.jsonl"
QUESTION = "What does this Python code print?\n\n```python\n{code}\n```"
WORDS = ["apple", "kiwi", "banana", "fig", "cherry", "plum", "mango", "pear", "grape", "lime"]

Snippet = tuple[str, list[str]]  # (code, mutant codes)


def run(code: str) -> str | None:
    """What the code prints (one line, stripped), or None if it fails or prints several lines."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<snippet>", "exec"), {"__builtins__": __builtins__})
    except Exception as e:  # a mutant that raises prints the exception's name, a plausible answer
        return f"{type(e).__name__}" if out.getvalue() == "" else None
    text = out.getvalue().rstrip("\n")
    return text if text and "\n" not in text else None


def floor_division(rng: random.Random) -> Snippet:
    a, b = rng.choice([-1, 1]) * rng.randint(7, 40), rng.randint(2, 9)
    code = f"print({a} // {b}, {a} % {b})"
    return code, [
        f"print(int({a} / {b}), {a} - int({a} / {b}) * {b})",
        f"print({a} / {b}, {a} % {b})",
        f"print({a} // {b} + 1, {a} % {b})",
        f"print({b} // {a}, {b} % {a})",
    ]


def slicing(rng: random.Random) -> Snippet:
    n = rng.randint(5, 8)
    xs = list(range(10, 10 + 10 * n, 10))
    i, j = sorted(rng.sample(range(n + 1), 2))
    code = f"xs = {xs}\nprint(xs[{i}:{j}])"
    return code, [
        f"xs = {xs}\nprint(xs[{i}:{j + 1}])",
        f"xs = {xs}\nprint(xs[{i + 1}:{j + 1}])",
        f"xs = {xs}\nprint(xs[{max(i - 1, 0)}:{j}])",
        f"xs = {xs}\nprint(xs[{i}:{j}][::-1])",
    ]


def negative_index(rng: random.Random) -> Snippet:
    words = rng.sample(WORDS, rng.randint(4, 6))
    k = rng.randint(1, len(words) - 1)
    code = f"words = {words}\nprint(words[-{k}])"
    return code, [
        f"words = {words}\nprint(words[{k}])",
        f"words = {words}\nprint(words[-{k + 1}])",
        f"words = {words}\nprint(words[{k - 1}])",
        f"words = {words}\nprint(words[-{k - 1 if k > 1 else 2}])",
    ]


def string_methods(rng: random.Random) -> Snippet:
    text = rng.choice(["hello world", "python is fun", "the QUICK fox", "data Science rocks"])
    methods = ["title", "capitalize", "upper", "swapcase", "lower"]
    m = rng.choice(methods)
    return f"print({text!r}.{m}())", [f"print({text!r}.{o}())" for o in methods if o != m]


def repetition(rng: random.Random) -> Snippet:
    s, n = rng.choice(["ab", "xy", "na", "ha", "to"]), rng.randint(2, 4)
    code = f"print({s!r} * {n})"
    return code, [
        f"print({s!r} + '{n}')",
        f"print({s!r} * {n + 1})",
        f"print({s!r} * {n - 1})",
        f"print(' '.join([{s!r}] * {n}))",
    ]


def aliasing(rng: random.Random) -> Snippet:
    xs, v = rng.sample(range(1, 10), rng.randint(2, 3)), rng.randint(10, 20)
    code = f"a = {xs}\nb = a\nb.append({v})\nprint(a)"
    return code, [
        f"a = {xs}\nb = a.copy()\nb.append({v})\nprint(a)",
        f"a = {xs}\nb = a\nb.append({v})\nb.append({v})\nprint(a)",
        f"a = {xs}\nprint([{v}])",
        f"a = {xs}\nb = a\nb.insert(0, {v})\nprint(a)",
    ]


def mutable_default(rng: random.Random) -> Snippet:
    x, y = rng.sample(range(1, 10), 2)
    f = "def f(x, acc=[]):\n    acc.append(x)\n    return acc\n"
    g = "def f(x, acc=None):\n    acc = [] if acc is None else acc\n    acc.append(x)\n    return acc\n"
    code = f"{f}f({x})\nprint(f({y}))"
    return code, [
        f"{g}f({x})\nprint(f({y}))",
        f"{f}f({x})\nprint(f({y})[::-1])",
        f"{f}f({x})\nf({y})\nprint(f({y}))",
        f"print([{x}])",
    ]


def ranges(rng: random.Random) -> Snippet:
    a, s = rng.randint(0, 5), rng.randint(1, 3)
    b = a + s * rng.randint(2, 4) + rng.randint(0, 1)
    code = f"print(list(range({a}, {b}, {s})))"
    return code, [
        f"print(list(range({a}, {b + s}, {s})))",
        f"print(list(range({a + 1}, {b}, {s})))",
        f"print(list(range({a}, {b} + 1, {s})))",
        f"print(list(range({a + s}, {b + s}, {s})))",
    ]


def sorting(rng: random.Random) -> Snippet:
    words = rng.sample(WORDS, 4)
    while len({len(w) for w in words}) < 4:
        words = rng.sample(WORDS, 4)
    code = f"print(sorted({words}, key=len))"
    return code, [
        f"print(sorted({words}))",
        f"print(sorted({words}, key=len, reverse=True))",
        f"print({words})",
        f"print(sorted({words}, reverse=True))",
    ]


def dict_ops(rng: random.Random) -> Snippet:
    keys = rng.sample("abcdef", 3)
    d = {k: rng.randint(1, 9) for k in keys}
    k_new, k_old = rng.choice([c for c in "uvwxyz"]), keys[0]
    v = rng.randint(10, 20)
    code = f"d = {d}\nd[{k_old!r}] = {v}\nd[{k_new!r}] = {v}\nprint(len(d), d[{k_old!r}])"
    return code, [
        f"print({len(d) + 2}, {v})",
        f"print({len(d) + 1}, {d[k_old]})",
        f"print({len(d)}, {v})",
        f"print({len(d) + 1}, {d[k_old] + v})",
    ]


def short_circuit(rng: random.Random) -> Snippet:
    vals = ["0", "''", "[]", "3", "'x'", "[1]", "None"]
    a, b = rng.sample(vals, 2)
    op = rng.choice(["and", "or"])
    other = "or" if op == "and" else "and"
    code = f"print({a} {op} {b})"
    return code, [
        f"print({a} {other} {b})",
        f"print(bool({a} {op} {b}))",
        f"print({b} {op} {a})",
        f"print(not ({a} {op} {b}))",
    ]


def numbers(rng: random.Random) -> Snippet:
    kind = rng.randrange(4)
    if kind == 0:
        x = rng.choice([0.5, 1.5, 2.5, 3.5, 4.5])
        return f"print(round({x}))", [
            f"print(int({x}) + 1)",
            f"print(float(round({x})))",
            f"print({x})",
            f"print(int({x} + 0.5))",
        ]
    if kind == 1:
        x = -rng.randint(2, 9) - rng.choice([0.3, 0.5, 0.7])
        return f"print(int({x}))", [
            f"import math\nprint(math.floor({x}))",
            f"print(round({x}))",
            f"print(float(int({x})))",
            f"print(-int({x}))",
        ]
    if kind == 2:
        a, b, c = rng.randint(2, 3), rng.randint(2, 3), 2
        return f"print({a} ** {b} ** {c})", [
            f"print(({a} ** {b}) ** {c})",
            f"print({a} * {b} * {c})",
            f"print({a} ** {b} * {c})",
            f"print({a} ^ {b} ^ {c})",
        ]
    a, b = rng.randint(5, 30), rng.randint(2, 8)
    return f"print({a} / {b})", [
        f"print({a} // {b})",
        f"print(round({a} / {b}))",
        f"print({a} % {b})",
        f"print({b} / {a})",
    ]


def join_split(rng: random.Random) -> Snippet:
    if rng.random() < 0.5:
        s, sep = rng.choice(["abc", "xyz", "cat", "dog"]), rng.choice(["-", ", ", "+"])
        code = f"print({sep!r}.join({s!r}))"
        return code, [
            f"print({s!r})",
            f"print({sep!r} + {sep!r}.join({s!r}) + {sep!r})",
            f"print({sep!r}.join([{s!r}]) + {sep!r})",
            f"print({s!r}.join({sep!r}))",
        ]
    parts = rng.sample(["a", "b", "c", "d"], 3)
    s = ",".join(parts[:2]) + ",," + parts[2]
    code = f"print({s!r}.split(','))"
    return code, [
        f"print([p for p in {s!r}.split(',') if p])",
        f"print({s!r}.split(',,'))",
        f"print({s!r}.split())",
        f"print({s!r}.split(',', 1))",
    ]


def comprehension(rng: random.Random) -> Snippet:
    n, m = rng.randint(4, 7), rng.choice([2, 3])
    code = f"print([x * x for x in range({n}) if x % {m}])"
    return code, [
        f"print([x * x for x in range({n}) if not x % {m}])",
        f"print([x * x for x in range(1, {n} + 1) if x % {m}])",
        f"print([x for x in range({n}) if x % {m}])",
        f"print([x * 2 for x in range({n}) if x % {m}])",
    ]


def loop_else(rng: random.Random) -> Snippet:
    n, k = rng.randint(3, 6), rng.randint(1, 8)
    body = f"for i in range({n}):\n    if i == {k}:\n        break\n"
    code = f"{body}else:\n    i = -1\nprint(i)"
    return code, [
        f"{body}print(i)",
        f"print({n})",
        f"{body}else:\n    i = -1\nprint(i + 1)",
        f"print({k})",
    ]


def zips(rng: random.Random) -> Snippet:
    s = rng.choice(["ab", "xy", "pq"])
    xs = list(range(1, rng.randint(3, 4) + 1))
    code = f"print(list(zip({s!r}, {xs})))"
    return code, [
        f"import itertools\nprint(list(itertools.zip_longest({s!r}, {xs})))",
        f"print(list(zip({xs}, {s!r})))",
        f"print(list(enumerate({s!r}, 1)))",
        f"print(list(zip({s!r})))",
    ]


def find_count(rng: random.Random) -> Snippet:
    s, sub = rng.choice(
        [
            ("banana", "an"),
            ("mississippi", "ss"),
            ("abracadabra", "ab"),
            ("hello", "l"),
            ("assess", "s"),
        ]
    )
    code = f"print({s!r}.find({sub!r}), {s!r}.count({sub!r}))"
    return code, [
        f"print({s!r}.rfind({sub!r}), {s!r}.count({sub!r}))",
        f"print({s!r}.find({sub!r}) + 1, {s!r}.count({sub!r}))",
        f"print({s!r}.find({sub!r}), {s!r}.count({sub!r}) + 1)",
        f"print({s!r}.find({sub!r}), len({s!r}))",
    ]


def sets(rng: random.Random) -> Snippet:
    xs = [rng.randint(1, 5) for _ in range(rng.randint(5, 7))]
    code = f"print(len({xs}), len(set({xs})))"
    return code, [
        f"print(len({xs}), len({xs}))",
        f"print(len({xs}), len(set({xs})) - 1)",
        f"print(len(set({xs})), len({xs}))",
        f"print(len({xs}) - 1, len(set({xs})))",
    ]


def formatting(rng: random.Random) -> Snippet:
    if rng.random() < 0.5:
        x = round(rng.uniform(1, 99), 3)
        return f"print(f'{{{x}:.2f}}')", [
            f"print(f'{{{x}:.1f}}')",
            f"print({x})",
            f"print(f'{{{x}:.3f}}')",
            f"print(int({x}))",
        ]
    n = rng.randint(1, 99)
    return f"print(f'{{{n}:03d}}')", [
        f"print(f'{{{n}:3d}}')",
        f"print({n})",
        f"print(f'{{{n}:04d}}')",
        f"print(f'{{{n}:<03d}}')",
    ]


def chained(rng: random.Random) -> Snippet:
    a, b, c = rng.randint(0, 5), rng.randint(0, 5), rng.randint(0, 5)
    code = f"print({a} < {b} < {c}, ({a} < {b}) < {c})"
    return code, [
        f"print(({a} < {b}) < {c}, {a} < {b} < {c})",
        f"print({a} < {b} and {b} > {c}, ({a} < {b}) < {c})",
        f"print(not ({a} < {b} < {c}), ({a} < {b}) < {c})",
        f"print({a} < {b} < {c}, not (({a} < {b}) < {c}))",
    ]


FAMILIES: dict[str, Callable[[random.Random], Snippet]] = {
    f.__name__: f
    for f in (
        floor_division,
        slicing,
        negative_index,
        string_methods,
        repetition,
        aliasing,
        mutable_default,
        ranges,
        sorting,
        dict_ops,
        short_circuit,
        numbers,
        join_split,
        comprehension,
        loop_else,
        zips,
        find_count,
        sets,
        formatting,
        chained,
    )
}


def build_items() -> list[dict]:
    items, seen = [], set()
    for family, make in FAMILIES.items():
        made, attempt = 0, 0
        while made < PER_FAMILY and attempt < PER_FAMILY * 20:
            rng = random.Random(f"{SEED}:{family}:{attempt}")
            attempt += 1
            code, mutants = make(rng)
            if code in seen:
                continue
            answer = run(code)
            if answer is None:
                continue
            wrong = []
            for m in mutants:
                out = run(m)
                taken = {answer.strip(), *(w.strip() for w in wrong)}
                if out is not None and out.strip() not in taken:
                    wrong.append(out)
            if len(wrong) < 3:
                continue
            choices = rng.sample(wrong, 3)
            pos = rng.randrange(4)
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
            made += 1
    return items


def render(items: list[dict]) -> str:
    return "".join(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items)


def summary(items: list[dict]) -> str:
    by = Counter(it["subject"] for it in items)
    pos = Counter(it["answer"] for it in items)
    return (
        f"{len(items)} items in {len(by)} families ("
        + ", ".join(f"{k} {v}" for k, v in by.items())
        + f"); answer positions {dict(sorted(pos.items()))}"
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
