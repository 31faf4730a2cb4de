"""Build the embedded multiple-choice English cloze set
(`src/tunelab/data/embedded/mc/prose_cloze.jsonl`) from the old-domain prose corpus
(`src/tunelab/data/embedded/corpora/old_prose.jsonl.gz`).

An item is one sentence of that corpus cut before a content word in its second half: the
question is the sentence's start, the right choice is the word and the rest of the sentence, and
the three distractors replace the word by words *of the same kind*: from the corpus's own
vocabulary, the same ending (last three letters, else last two: -ing, -ed, -ly, -ion, -es, ...,
so the same part of speech most of the time), a length within two letters, not in the sentence.
Scored as a cloze (the harness's HellaSwag/LAMBADA style): log p(choice | start).

Sentences: from documents of the corpus chosen by a hash of their `source` (1 in 4 documents),
split at ". " / ".\n"; kept when 10-30 words, plain ASCII letters and light punctuation (no code,
no markup), starting with a capital letter and ending with a period; at most one item per
document. Deterministic: seeded `random.Random`s, the committed corpus as the only input.

    python -m tunelab.data.builders.mc_cloze            # writes prose_cloze.jsonl
    python -m tunelab.data.builders.mc_cloze --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from tunelab.data.builders.output import write_or_check

SEED = 27182
N_ITEMS = 320
EMBEDDED = Path(__file__).resolve().parents[1] / "embedded"
SOURCE = EMBEDDED / "corpora" / "old_prose.jsonl.gz"
OUT = EMBEDDED / "mc" / "prose_cloze.jsonl"
SENTENCE = re.compile(r"^[A-Z][A-Za-z ,;'\-]+\.$")
WORD = re.compile(r"(?<![A-Za-z0-9_])[a-z]{4,}(?![A-Za-z0-9_])")
STOP = set(
    [
        "about",
        "above",
        "after",
        "again",
        "against",
        "also",
        "although",
        "another",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "cannot",
        "could",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "either",
        "else",
        "even",
        "every",
        "from",
        "further",
        "have",
        "having",
        "here",
        "itself",
        "just",
        "into",
        "more",
        "most",
        "much",
        "must",
        "neither",
        "only",
        "other",
        "over",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "upon",
        "very",
        "were",
        "what",
        "when",
        "where",
        "whether",
        "which",
        "while",
        "whose",
        "will",
        "with",
        "within",
        "without",
        "would",
        "your",
        "yours",
        "shall",
        "might",
    ]
)


def held_out(source: str) -> bool:
    return int(hashlib.sha256(f"mc-cloze:{source}".encode()).hexdigest(), 16) % 4 == 0


def sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() + "." for s in re.split(r"\.\s+", flat.rstrip(".")) if s.strip()]


def build_items(source: Path = SOURCE) -> list[dict]:
    with gzip.open(source, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    vocab: Counter[str] = Counter()
    for d in docs:
        vocab.update(w for w in WORD.findall(d["text"]) if w not in STOP)
    words = sorted(w for w, n in vocab.items() if n >= 5)
    by_end: dict[str, list[str]] = defaultdict(list)
    for w in words:
        by_end[w[-3:]].append(w)
        by_end[w[-2:]].append(w)
    candidates = []
    for d in docs:
        if not held_out(d["source"]):
            continue
        for s in sentences(d["text"]):
            n_words = len(s.split())
            if 10 <= n_words <= 30 and SENTENCE.match(s):
                candidates.append((d["source"], s))
                break  # at most one sentence per document
    rng = random.Random(SEED)
    rng.shuffle(candidates)
    items = []
    for source, s in candidates:
        if len(items) >= N_ITEMS:
            break
        toks = list(re.finditer(r"[A-Za-z]+", s))
        half = len(toks) // 2
        targets = [
            m for m in toks[half:-1] if WORD.fullmatch(m.group()) and m.group() not in STOP
        ] or [m for m in toks[half:] if WORD.fullmatch(m.group()) and m.group() not in STOP]
        if not targets:
            continue
        irng = random.Random(f"{SEED}:{source}")
        m = irng.choice(targets)
        word = m.group()
        in_sentence = {w.lower() for w in re.findall(r"[A-Za-z]+", s)}
        for end in (word[-3:], word[-2:]):
            pool = [
                w
                for w in by_end.get(end, [])
                if w not in in_sentence and abs(len(w) - len(word)) <= 2 and w != word
            ]
            if len(pool) >= 3:
                break
        else:
            continue
        distractors = irng.sample(pool, 3)
        rest = s[m.end() :]
        choices = [w + rest for w in distractors]
        pos = irng.randrange(4)
        choices.insert(pos, word + rest)
        context = s[: m.start()].rstrip()
        if not context or s[m.start() - 1] != " ":
            continue
        items.append(
            {
                "question": context,
                "choices": choices,
                "answer": pos,
                "subject": "prose",
                "source": source,
            }
        )
    return items


def render(items: list[dict]) -> str:
    return "".join(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items)


def summary(items: list[dict]) -> str:
    pos = Counter(it["answer"] for it in items)
    return f"{len(items)} items; answer positions {dict(sorted(pos.items()))}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="old-domain corpus (.jsonl.gz)")
    parser.add_argument("--out", type=Path, default=OUT, help="output JSONL file")
    parser.add_argument(
        "--check", action="store_true", help="rebuild in memory; exit 1 if --out differs"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    items = build_items(args.source)
    data = render(items).encode("utf-8")
    elapsed = time.perf_counter() - start
    print(summary(items), file=sys.stderr)
    return write_or_check(args.out, data, elapsed, args.check)


if __name__ == "__main__":
    raise SystemExit(main())
