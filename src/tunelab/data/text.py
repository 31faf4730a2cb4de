"""Text corpora -> token ids -> fixed-length blocks, with held-out validation blocks per corpus.

A corpus is given as a file, a folder, a glob, or `embedded:<name>` (the corpora shipped with
tunelab: `embedded:old_prose`, `embedded:new_python`). Plain-text files are one document each;
JSONL files (`.jsonl`, `.jsonl.gz`) hold one document per line in a `text` field (the key is
configurable). Documents are tokenized without special tokens, each followed by the end-of-text
separator, joined into one stream and cut into disjoint blocks of `block_len + 1` tokens
(inputs = block[:-1], targets = block[1:]), so every block trains on exactly `block_len` targets.
The tail that does not fill a block is dropped and counted in the log.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunelab.data.records import DataError
from tunelab.models.tokenizer import Tokenizer
from tunelab.utils.io import InputFileError, check_input_file

log = logging.getLogger(__name__)

EMBEDDED_CORPORA_DIR = Path(__file__).parent / "embedded" / "corpora"
EMBEDDED_PREFIX = "embedded:"
#: File endings a folder is searched for (explicit files and globs take any ending).
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py", ".jsonl", ".jsonl.gz", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


def embedded_corpora() -> dict[str, Path]:
    """Names of the corpora shipped with tunelab and their files."""
    return {
        p.name.removesuffix(".jsonl.gz"): p for p in sorted(EMBEDDED_CORPORA_DIR.glob("*.jsonl.gz"))
    }


def resolve_corpus_paths(spec: str | Path) -> list[Path]:
    """Expand one corpus spec (file, folder, glob or `embedded:<name>`) to sorted files."""
    spec = str(spec)
    if spec.startswith(EMBEDDED_PREFIX):
        name = spec[len(EMBEDDED_PREFIX) :]
        known = embedded_corpora()
        if name not in known:
            raise FileNotFoundError(
                f"{spec}: unknown embedded corpus; known: "
                + ", ".join(EMBEDDED_PREFIX + k for k in known)
            )
        return [known[name]]
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"{spec}: the glob matches no file")
        return files
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        all_files = sorted(p for p in path.rglob("*") if p.is_file())
        files = [
            p
            for p in all_files
            if p.name.endswith(TEXT_SUFFIXES) and not any(s.startswith(".") for s in p.parts)
        ]
        if len(files) < len(all_files):
            log.info(
                "%s: skipped %d files that are hidden or not %s",
                path,
                len(all_files) - len(files),
                "/".join(TEXT_SUFFIXES),
            )
        if not files:
            raise FileNotFoundError(
                f"{path}: the folder holds no text file ({', '.join(TEXT_SUFFIXES)})"
            )
        return files
    raise FileNotFoundError(f"{spec}: corpus path not found (expected a file, folder or glob)")


def _read_text(path: Path) -> str:
    try:
        check_input_file(path, "corpus file")  # a FIFO would block the read forever
    except InputFileError as e:
        raise DataError(str(e)) from None
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte offset {e.start}): {e.reason}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def read_documents(path: Path, text_key: str = "text") -> list[str]:
    """Documents of one file: JSONL -> the `text_key` field of each line; else the whole file."""
    text = _read_text(path)
    if not path.name.endswith(JSONL_SUFFIXES):
        return [text] if text.strip() else []
    docs, blank = [], 0
    # Split on "\n" only: documents may contain U+2028 and friends, which splitlines() cuts at.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict) or text_key not in obj:
            raise DataError(f"{path}:{lineno}: expected a JSON object with a {text_key!r} field")
        value = obj[text_key]
        if not isinstance(value, str):
            raise DataError(
                f"{path}:{lineno}: field {text_key!r} must be a string, got {type(value).__name__}"
            )
        if value.strip():
            docs.append(value)
        else:
            blank += 1
    if blank:
        log.info("%s: skipped %d blank %r values", path, blank, text_key)
    return docs


def load_documents(
    spec: str | Path, text_key: str = "text", max_docs: int | None = None
) -> list[str]:
    """All documents of a corpus spec, in file order (then line order), at most `max_docs`."""
    docs: list[str] = []
    for path in resolve_corpus_paths(spec):
        docs.extend(read_documents(path, text_key))
        if max_docs and len(docs) >= max_docs:
            break
    if max_docs and len(docs) > max_docs:
        log.info("%s: kept the first %d documents (max_docs)", spec, max_docs)
        docs = docs[:max_docs]
    if not docs:
        raise DataError(f"{spec}: the corpus has no non-empty document")
    return docs


def end_of_text_id(tokenizer: Tokenizer) -> int:
    """The document separator: `<|endoftext|>` where it is one token, else the tokenizer's eos.

    (SmolLM2's eos is `<|im_end|>`, but its pretraining separator is `<|endoftext|>` = 0.)
    """
    ids = tokenizer.encode("<|endoftext|>", allow_special=True)
    return ids[0] if len(ids) == 1 else tokenizer.eos_id


def encode_documents(docs: list[str], tokenizer: Tokenizer, separator_id: int) -> np.ndarray:
    """One token stream: each document's ids (special-token text stays plain) + the separator."""
    parts = []
    sep = np.array([separator_id], dtype=np.int64)
    for doc in docs:
        parts.append(np.asarray(tokenizer.encode(doc, allow_special=False), dtype=np.int64))
        parts.append(sep)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def make_blocks(ids: np.ndarray | list[int], block_len: int) -> torch.Tensor:
    """Cut a token stream into disjoint blocks of block_len + 1 tokens: (N, block_len + 1).

    The final partial block is dropped (the caller logs how many tokens that was).
    """
    if block_len < 1:
        raise ValueError(f"block_len must be >= 1, got {block_len}")
    ids = np.asarray(ids, dtype=np.int64)
    width = block_len + 1
    n = len(ids) // width
    return torch.from_numpy(ids[: n * width].reshape(n, width).copy())


def split_blocks(
    blocks: torch.Tensor, val_blocks: int | float, seed: int, where: str = "corpus"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out validation blocks: a count (int >= 1) or a fraction (0 < float < 1), seeded.

    Returns (train, val); both keep stream order, so the split depends only on the seed.
    """
    n = len(blocks)
    if isinstance(val_blocks, float) and 0 < val_blocks < 1:
        n_val = max(1, int(round(val_blocks * n)))
    elif val_blocks >= 0 and float(val_blocks).is_integer():
        n_val = int(val_blocks)
    else:
        raise ValueError(
            f"val_blocks must be a count (int >= 0) or a fraction in (0, 1), got {val_blocks}"
        )
    if n_val >= n:
        raise DataError(
            f"{where}: {n} blocks are too few to hold out {n_val} validation blocks and train on "
            "the rest (give more text, a smaller block_len or fewer val_blocks)"
        )
    perm = np.random.default_rng(seed).permutation(n)
    is_val = np.zeros(n, dtype=bool)
    is_val[perm[:n_val]] = True
    mask = torch.from_numpy(is_val)
    return blocks[~mask], blocks[mask]


@dataclass
class TextCorpus:
    """One corpus, tokenized and blocked: train pool and held-out validation blocks."""

    name: str
    train: torch.Tensor  # (N_train, block_len + 1)
    val: torch.Tensor  # (N_val, block_len + 1)
    n_docs: int
    n_tokens: int
    n_dropped_tokens: int


def build_corpus(
    spec: str | Path,
    tokenizer: Tokenizer,
    block_len: int,
    val_blocks: int | float,
    seed: int,
    text_key: str = "text",
    max_docs: int | None = None,
    separator_id: int | None = None,
) -> TextCorpus:
    """Load, tokenize, block and split one corpus (validation blocks held out by `seed`)."""
    docs = load_documents(spec, text_key, max_docs)
    sep = end_of_text_id(tokenizer) if separator_id is None else separator_id
    ids = encode_documents(docs, tokenizer, sep)
    blocks = make_blocks(ids, block_len)
    dropped = len(ids) - blocks.numel()
    train, val = split_blocks(blocks, val_blocks, seed, where=str(spec))
    log.info(
        "corpus %s: %d documents, %d tokens -> %d blocks of %d+1 (%d tail tokens dropped); "
        "%d train, %d validation",
        spec,
        len(docs),
        len(ids),
        len(blocks),
        block_len,
        dropped,
        len(train),
        len(val),
    )
    return TextCorpus(str(spec), train, val, len(docs), len(ids), dropped)
