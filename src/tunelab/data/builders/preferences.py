"""Build the embedded preference pairs (`src/tunelab/data/embedded/preferences.json`).

Every record of the embedded instruction data (`instructions.json`) becomes one pair: chosen =
its reference answer; rejected = a plausibly worse answer of a kind users complain about:

- wrong   : a near miss made from the record itself (an off-by-a-bit number, another module or
            kind, a parameter dropped or swapped, another API's description, the typo left in,
            the wrong case, the second sentence instead of the first);
- evasive : a non-answer ("It depends ...", "I'm not sure ...");
- rude    : the right answer wrapped in condescension;
- padded  : the right answer buried in filler.

Deterministic: one seed, a separate `random.Random` per record (keyed by its position), input
read from the committed `instructions.json`; no third-party package, no network.

    python -m tunelab.data.builders.preferences            # writes preferences.json
    python -m tunelab.data.builders.preferences --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tunelab.data.builders.output import write_or_check

SEED = 2718
EMBEDDED = Path(__file__).resolve().parents[1] / "embedded"
SOURCE = EMBEDDED / "instructions.json"
DEFAULT_OUT = EMBEDDED / "preferences.json"
# Share of each rejected kind (the rest of the weight after "wrong" is split evenly).
KIND_WEIGHTS = {"wrong": 0.4, "evasive": 0.2, "rude": 0.2, "padded": 0.2}

EVASIVE = (
    "I'm not sure. You could check the Python documentation for that.",
    "It depends on the context, so I can't give a definite answer.",
    "That is a good question, but I would rather not guess.",
    "I can't help with that.",
    "There are many ways to look at this; it really depends on what you need.",
    "You should be able to work that out yourself with a little research.",
)
RUDE = (
    "Seriously? Even a beginner knows this. {answer}",
    "{answer} Next time, look it up yourself.",
    "Ugh, fine. {answer}",
    "This is a waste of my time, but here you go: {answer}",
    "{answer} Was that really so hard?",
    "Try reading the question before asking. {answer}",
)
PADDED = (
    "Great question! Let me think about this carefully, step by step, so that the answer is as "
    "clear as possible. {answer} I hope this helps, and please let me know if you have any "
    "other questions!",
    "Certainly! This is an interesting and important topic that many people wonder about. After "
    "careful consideration, here is the answer: {answer} In summary, that is the answer to your "
    "question. Feel free to ask me anything else at any time.",
    "Thank you for asking! Before I answer, it is worth saying that questions like this come up "
    "very often, and it is always good to double-check. {answer} To conclude, I hope this "
    "explanation was useful to you.",
)
NUMBER = re.compile(r"^(-?\d+(?:\.\d+)?)(.*)$", re.S)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _shift_number(text: str, rng: random.Random, small_only: bool = False) -> str | None:
    """The same answer with its leading number changed by a plausible slip."""
    m = NUMBER.match(text.strip())
    if not m:
        return None
    num, rest = m.groups()
    decimals = len(num.split(".")[1]) if "." in num else 0
    value = float(num)
    step = 10**-decimals
    for _ in range(20):
        how = "small" if small_only else rng.choice(("small", "tens", "scale"))
        if how == "small":
            new = value + rng.choice((-3, -2, -1, 1, 2, 3)) * step
        elif how == "tens":
            new = value + rng.choice((-1, 1)) * 10 * step * rng.randint(1, 9)
        else:
            new = value * rng.choice((10, 0.1)) if value else value + step
        new = round(new, decimals) or 0.0  # no "-0"
        if small_only and new <= 0:
            continue
        out = f"{new:.{decimals}f}" + rest
        if out != text.strip():
            return out
    return None


def _wrong_module_lookup(rec: dict, rng: random.Random, pools: dict) -> str | None:
    m = re.match(r"^(The \w+ \S+ is provided by the )(\S+)( module\.)$", rec["output"])
    if not m:
        return None
    others = [x for x in pools["modules"] if x != m.group(2)]
    return m.group(1) + rng.choice(others) + m.group(3)


def _wrong_object_kind(rec: dict, rng: random.Random, pools: dict) -> str | None:
    m = re.match(r"^(.* is a )(function|class|module)(\.)$", rec["output"])
    if not m:
        return None
    return (
        m.group(1)
        + rng.choice([k for k in ("function", "class", "module") if k != m.group(2)])
        + m.group(3)
    )


def _wrong_from_pool(rec: dict, rng: random.Random, pools: dict) -> str | None:
    """Another record's answer from the same family: a plausible but wrong description."""
    others = [x for x in pools["outputs"][rec["family"]] if x != rec["output"]]
    return rng.choice(others) if others else None


def _wrong_params(rec: dict, rng: random.Random, pools: dict) -> str | None:
    names = [n.strip() for n in rec["output"].split(",")]
    if len(names) == 1:
        return "self, " + names[0] if names[0] != "self" else None
    if rng.random() < 0.5:
        i = rng.randrange(len(names) - 1)
        names[i], names[i + 1] = names[i + 1], names[i]
    else:
        del names[rng.randrange(len(names))]
    return ", ".join(names)


def _wrong_spelling(rec: dict, rng: random.Random, pools: dict) -> str | None:
    return rec["input"] if rec["input"] != rec["output"] else None  # the typo left in


def _wrong_rewrite(rec: dict, rng: random.Random, pools: dict) -> str | None:
    src = rec["input"]
    candidates = [
        src,
        src.lower(),
        src.upper(),
        " ".join(w[:1].upper() + w[1:] for w in src.split(" ")),
        src.translate(str.maketrans("", "", string.punctuation)),
    ]
    options = sorted({c for c in candidates if c != rec["output"]})
    return rng.choice(options) if options else None


def _wrong_first_sentence(rec: dict, rng: random.Random, pools: dict) -> str | None:
    rest = (
        rec["input"][len(rec["output"]) :].strip() if rec["input"].startswith(rec["output"]) else ""
    )
    if not rest:
        return None
    return SENTENCE_END.split(rest, maxsplit=1)[0]  # the second sentence


def _wrong_number(rec: dict, rng: random.Random, pools: dict) -> str | None:
    return _shift_number(rec["output"], rng, small_only=rec["family"] == "word_count")


def _wrong_default(rec: dict, rng: random.Random, pools: dict) -> str | None:
    shifted = _shift_number(rec["output"], rng)
    return shifted if shifted is not None else _wrong_from_pool(rec, rng, pools)


WRONG: dict[str, Callable[[dict, random.Random, dict], str | None]] = {
    "arithmetic": _wrong_number,
    "unit_conversion": _wrong_number,
    "word_count": _wrong_number,
    "module_lookup": _wrong_module_lookup,
    "object_kind": _wrong_object_kind,
    "default_value": _wrong_default,
    "signature_params": _wrong_params,
    "describe_api": _wrong_from_pool,
    "python_builtins": _wrong_from_pool,
    "spelling_correction": _wrong_spelling,
    "rewrite": _wrong_rewrite,
    "first_sentence": _wrong_first_sentence,
}


def rejected_for(rec: dict, rng: random.Random, pools: dict) -> tuple[str, str]:
    """(kind, rejected answer) for one instruction record."""
    kinds = list(KIND_WEIGHTS)
    kind = rng.choices(kinds, weights=[KIND_WEIGHTS[k] for k in kinds])[0]
    answer = rec["output"]
    if kind == "wrong":
        wrong = WRONG[rec["family"]](rec, rng, pools)
        if wrong and wrong.strip() != answer.strip():
            return kind, wrong
        kind = "evasive"  # no near miss for this record: fall back to a non-answer
    if kind == "evasive":
        return kind, rng.choice(EVASIVE)
    if kind == "rude":
        return kind, rng.choice(RUDE).format(answer=answer)
    return kind, rng.choice(PADDED).format(answer=answer)


def build_pairs(source: Path = SOURCE) -> list[dict]:
    records = json.loads(source.read_text(encoding="utf-8"))
    outputs: dict[str, list[str]] = collections.defaultdict(set)
    modules: set[str] = set()
    for r in records:
        outputs[r["family"]].add(r["output"])
        m = re.match(r"^The \w+ \S+ is provided by the (\S+) module\.$", r["output"])
        if m:
            modules.add(m.group(1))
    pools = {"outputs": {k: sorted(v) for k, v in outputs.items()}, "modules": sorted(modules)}
    pairs = []
    for i, rec in enumerate(records):
        rng = random.Random(f"{SEED}:{i}")
        kind, rejected = rejected_for(rec, rng, pools)
        pair = {
            "instruction": rec["instruction"],
            "input": rec["input"],
            "chosen": rec["output"],
            "rejected": rejected,
            "rejected_kind": kind,
            "family": rec["family"],
            "source_index": i,
        }
        pairs.append(pair)
    return pairs


def render(pairs: list[dict]) -> str:
    return json.dumps(pairs, indent=1, ensure_ascii=False) + "\n"


def summary(pairs: list[dict], source: Path = SOURCE) -> str:
    kinds = collections.Counter(p["rejected_kind"] for p in pairs)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    return (
        f"{len(pairs)} pairs; rejected kinds: "
        + ", ".join(f"{k}={kinds[k]}" for k in KIND_WEIGHTS)
        + f"; from {source.name} sha256 {sha}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="instruction records (JSON)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSON file")
    parser.add_argument(
        "--check", action="store_true", help="rebuild in memory; exit 1 if --out differs"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pairs = build_pairs(args.source)
    data = render(pairs).encode("utf-8")
    elapsed = time.perf_counter() - start
    print(summary(pairs, args.source), file=sys.stderr)
    return write_or_check(args.out, data, elapsed, args.check)


if __name__ == "__main__":
    raise SystemExit(main())
