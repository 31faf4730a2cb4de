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


_LINEARS = (("attn.proj", "att.out_proj"), ("mlp.fc", "ff.layers.0"), ("mlp.proj", "ff.layers.2"))
_NORMS = (("norm1", "norm1"), ("norm2", "norm2"))


def tunelab_to_book(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """tunelab GPT-2 weights in the naming of the book's ch04 GPTModel (the fused qkv split
    into W_query/W_key/W_value; `out_head` a copy of the LM head, as the book's loader does)."""
    d = cfg.n_embd
    out = {
        "tok_emb.weight": state["wte.weight"],
        "pos_emb.weight": state["wpe.weight"],
        "final_norm.scale": state["norm_f.weight"],
        "final_norm.shift": state["norm_f.bias"],
        "out_head.weight": state["lm_head.weight"],
    }
    for i in range(cfg.n_layer):
        b, s = f"blocks.{i}.", f"trf_blocks.{i}."
        w, bias = state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"]
        for j, name in enumerate(("W_query", "W_key", "W_value")):
            out[s + f"att.{name}.weight"] = w[j * d : (j + 1) * d]
            out[s + f"att.{name}.bias"] = bias[j * d : (j + 1) * d]
        for src, dst in _LINEARS:
            out[s + dst + ".weight"] = state[b + src + ".weight"]
            out[s + dst + ".bias"] = state[b + src + ".bias"]
        for src, dst in _NORMS:
            out[s + dst + ".scale"] = state[b + src + ".weight"]
            out[s + dst + ".shift"] = state[b + src + ".bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


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
