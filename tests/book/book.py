"""Helpers for the parity tests against the book's own code (`llms-from-scratch==1.0.19`,
installed `--no-deps` by `make setup`): its modules, GPT-2's tokenizer, shared records, and
tunelab <-> book GPTModel weights.

The book's ch05 imports matplotlib at the top for its plotting helpers, which no test calls;
when matplotlib is not installed (it is not a test dependency), an empty stand-in is registered
so the training functions can be imported. Nothing is stubbed when matplotlib is present.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch

from benchmarks.common import tunelab_to_seed as tunelab_to_book
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import tokenizer_by_name

EOT = 50256

# Alpaca records of the book's shape (instruction, input, output), with and without an input.
RECORDS = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {
        "instruction": "Convert the sentence to passive voice.",
        "input": "The cat chased the mouse.",
        "output": "The mouse was chased by the cat.",
    },
    {"instruction": "Give a synonym of 'quick'.", "input": "", "output": "Fast."},
    {
        "instruction": "Add the two numbers.",
        "input": "12 and 30",
        "output": "12 + 30 = 42",
    },
    {"instruction": "Spell 'occasion' correctly.", "input": "", "output": "Occasion."},
    {
        "instruction": "Translate to German.",
        "input": "Good morning",
        "output": "Guten Morgen",
    },
    {"instruction": "What is 7 times 6?", "input": "", "output": "7 times 6 is 42."},
    {"instruction": "Classify the word.", "input": "banana", "output": "A fruit."},
]

PAIRS = [
    {**r, "chosen": r["output"], "rejected": rejected}
    for r, rejected in zip(
        RECORDS,
        [
            "I don't know, figure it out yourself.",
            "The cat chased the mouse.",
            "Slow.",
            "12 + 30 = 43",
            "Ocassion.",
            "Good night, my friend, good night.",
            "It is 48.",
            "A vegetable, obviously.",
        ],
        strict=True,
    )
]


def book(module: str) -> types.ModuleType:
    """`llms_from_scratch.<module>`, importable without matplotlib (see the module docstring)."""
    if importlib.util.find_spec("matplotlib") is None and "matplotlib" not in sys.modules:
        mpl = types.ModuleType("matplotlib")
        pyplot = types.ModuleType("matplotlib.pyplot")
        ticker = types.ModuleType("matplotlib.ticker")
        ticker.MaxNLocator = object
        mpl.pyplot, mpl.ticker = pyplot, ticker
        sys.modules.update(
            {"matplotlib": mpl, "matplotlib.pyplot": pyplot, "matplotlib.ticker": ticker}
        )
    return importlib.import_module(f"llms_from_scratch.{module}")


def gpt2_encoding():
    """GPT-2's tiktoken Encoding (the book's `tiktoken.get_encoding("gpt2")`, built offline
    from the same BPE files)."""
    return tokenizer_by_name("gpt2").encoding


def tiny_tunelab_gpt2(seed: int = 0, tie_embeddings: bool = True) -> Decoder:
    torch.manual_seed(seed)
    cfg = Config.from_preset("tiny-gpt2", dropout=0.0, tie_embeddings=tie_embeddings)
    return Decoder(cfg)


def book_config(cfg: Config) -> dict:
    return {
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.context_length,
        "emb_dim": cfg.n_embd,
        "n_heads": cfg.n_head,
        "n_layers": cfg.n_layer,
        "drop_rate": 0.0,
        "qkv_bias": True,
    }


def book_model(model: Decoder):
    """The book's ch04 GPTModel holding `model`'s weights (its own, untied parameters)."""
    gpt = book("ch04").GPTModel(book_config(model.cfg))
    result = gpt.load_state_dict(tunelab_to_book(model.state_dict(), model.cfg), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(".att.mask")]
    assert not missing and not result.unexpected_keys, (missing, result.unexpected_keys)
    return gpt.train()


def max_weight_diff(model: Decoder, gpt) -> float:
    """Largest absolute difference between tunelab's weights and the book model's."""
    mine = tunelab_to_book(model.state_dict(), model.cfg)
    theirs = gpt.state_dict()
    return max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
