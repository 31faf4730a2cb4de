"""Data of the tiny-model forgetting study: training splits and two short multiple-choice sets.

    python experiments/forgetting_replay/prepare.py           # writes experiments/forgetting_replay/data/
    python experiments/forgetting_replay/prepare.py --check   # exit 1 if a file is out of date

From the embedded corpora (src/tunelab/data/embedded/corpora/), split by document with the hash
of the prose cloze builder (`tunelab.data.builders.mc_cloze.held_out`: 1 document in 4 held out):

- `old_train.jsonl.gz` / `new_train.jsonl.gz`: the documents that are *not* held out (training
  and validation blocks of the study: the models never see a multiple-choice source document);
- `mc_old_cloze.jsonl` (old domain, English prose): the embedded `prose_cloze` items (built by
  `mc_cloze.build_items` from held-out documents), cut to fit the study's 64-byte blocks: the
  question keeps its last words up to 40 characters, each choice the word and the next two words;
- `mc_new_code.jsonl` (new domain, Python): lines of held-out Python files cut before an
  identifier or keyword preceded by a space; the question is the code before it (last 48
  characters, previous line included), each choice the token and the rest of the line (up to 14
  characters); distractors are tokens of the same kind (keywords for a keyword; for an
  identifier, identifiers of the corpus seen >= 5 times with the same case shape and a length
  within two, not in the line).

The embedded sets as they are do not fit the study's model: its blocks are 64 bytes (byte-level
tokenizer), and prose_cloze items run to 200 characters, positions it never trained on.
Deterministic: seeded `random.Random`s, the committed corpora as the only input.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import keyword
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from tunelab.data.builders.mc_cloze import build_items as prose_cloze_items
from tunelab.data.builders.mc_cloze import held_out

CORPORA = Path(__file__).resolve().parents[2] / "src" / "tunelab" / "data" / "embedded" / "corpora"
OUT = Path(__file__).resolve().parent / "data"
SEED = 22
N_ITEMS = 320
MAX_CONTEXT = 40  # characters (bytes: both sets are ASCII) of the question
MAX_REST = 14  # characters of a code choice after its first token
IDENT = re.compile(r"(?<![A-Za-z0-9_.])[A-Za-z_][A-Za-z0-9_]*(?![A-Za-z0-9_])")
KEYWORDS = sorted(k for k in keyword.kwlist if k.islower() and len(k) >= 2)


def read_docs(name: str) -> list[dict]:
    with gzip.open(CORPORA / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def gz_bytes(docs: list[dict]) -> bytes:
    """Deterministic gzip (mtime 0) of the documents as JSONL."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        for d in docs:
            f.write((json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n").encode())
    return buf.getvalue()


def tail_words(text: str, limit: int) -> str:
    """The last whole words of text within `limit` characters."""
    words, out = text.split(" "), ""
    for w in reversed(words):
        cand = w if not out else f"{w} {out}"
        if len(cand) > limit:
            break
        out = cand
    return out


def short_prose_items() -> list[dict]:
    items = []
    for it in prose_cloze_items():
        question = tail_words(it["question"], MAX_CONTEXT)
        choices = []
        for c in it["choices"]:
            parts = c.split(" ")
            choices.append(" ".join(parts[:3]))
        if not question or len(set(choices)) != len(choices):
            continue
        items.append({**it, "question": question, "choices": choices})
    return items


def shape(tok: str) -> str:
    if tok.isupper():
        return "upper"
    if "_" in tok.strip("_"):
        return "snake"
    if tok[:1].isupper():
        return "camel"
    return "lower"


def code_items(docs: list[dict]) -> list[dict]:
    vocab: Counter[str] = Counter()
    for d in docs:
        vocab.update(IDENT.findall(d["text"]))
    by_kind: dict[tuple[str, int], list[str]] = defaultdict(list)
    for w, n in sorted(vocab.items()):
        if n >= 5 and not keyword.iskeyword(w) and len(w) >= 2:
            by_kind[(shape(w), len(w))].append(w)
    candidates = []
    for d in docs:
        if not held_out(d["source"]):
            continue
        lines = d["text"].split("\n")
        for i, line in enumerate(lines):
            body = line.strip()
            if (
                not (16 <= len(body) <= 72)
                or body.startswith(("#", '"', "'"))
                or not body.isascii()
            ):
                continue
            if not any(ch in body for ch in "(=:[."):
                continue
            prev = lines[i - 1] if i else ""
            candidates.append((d["source"], i, prev, line))
    rng = random.Random(SEED)
    rng.shuffle(candidates)
    items: list[dict] = []
    per_doc: Counter[str] = Counter()
    for source, i, prev, line in candidates:
        if len(items) >= N_ITEMS:
            break
        if per_doc[source] >= 12:
            continue
        indent = len(line) - len(line.lstrip())
        toks = [
            m for m in IDENT.finditer(line) if m.start() > indent and line[m.start() - 1] == " "
        ]
        if not toks:
            continue
        irng = random.Random(f"{SEED}:{source}:{i}")
        m = irng.choice(toks)
        tok = m.group()
        in_line = set(IDENT.findall(line))
        if keyword.iskeyword(tok):
            pool = [k for k in KEYWORDS if k != tok and k not in in_line]
        else:
            pool = [
                w
                for n in range(len(tok) - 2, len(tok) + 3)
                for w in by_kind.get((shape(tok), n), [])
                if w != tok and w not in in_line
            ]
        if len(pool) < 3:
            continue
        context = (prev + "\n" + line[: m.start() - 1]) if prev.strip() else line[: m.start() - 1]
        context = context[-MAX_CONTEXT:]
        if not context.strip():
            continue
        rest = line[m.end() :][:MAX_REST]
        distractors = irng.sample(pool, 3)
        choices = [w + rest for w in distractors]
        pos = irng.randrange(4)
        choices.insert(pos, tok + rest)
        items.append(
            {
                "question": context,
                "choices": choices,
                "answer": pos,
                "subject": "keyword" if keyword.iskeyword(tok) else "identifier",
                "source": f"{source}:{i + 1}",
            }
        )
        per_doc[source] += 1
    return items


def jsonl(items: list[dict]) -> bytes:
    return "".join(
        json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items
    ).encode()


def build() -> dict[str, bytes]:
    old, new = read_docs("old_prose"), read_docs("new_python")
    return {
        "old_train.jsonl.gz": gz_bytes([d for d in old if not held_out(d["source"])]),
        "new_train.jsonl.gz": gz_bytes([d for d in new if not held_out(d["source"])]),
        "mc_old_cloze.jsonl": jsonl(short_prose_items()),
        "mc_new_code.jsonl": jsonl(code_items(new)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--check", action="store_true", help="compare with the files, write nothing")
    args = p.parse_args(argv)
    files = build()
    stale = []
    for name, data in files.items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        print(f"wrote {path} ({len(data)} bytes)")
    if stale:
        print(f"out of date: {', '.join(stale)} (run prepare.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
