"""Quick look at any model: `python -m tunelab.generate model=<source> prompt="..." [options]`.

Options (key=value):
  model           preset (smollm2-135m, gpt2-124m, tiny-gpt2, ...), HF folder, .gguf, or a tunelab
                  checkpoint / run folder                                   [smollm2-135m]
  prompt          the user message; repeat prompt=... for a batch          [required]
  style           prompt style (alpaca, chatml, phi3, smollm2, raw); default: the model's own
  system          system message for chat styles
  max_new_tokens  [128]    temperature [0 = greedy]    top_k [none]    top_p [none]    seed [123]
"""

from __future__ import annotations

import sys
import time

from tunelab.data.prompts import get_style
from tunelab.data.records import Record
from tunelab.models import load_pretrained
from tunelab.models.generation import generate

DEFAULTS = {
    "model": "smollm2-135m",
    "style": None,
    "system": None,
    "max_new_tokens": "128",
    "temperature": "0",
    "top_k": None,
    "top_p": None,
    "seed": "123",
}


def parse_args(argv: list[str]) -> tuple[dict[str, str | None], list[str]]:
    opts: dict[str, str | None] = dict(DEFAULTS)
    prompts: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("-")
        if not sep:
            raise ValueError(f"argument {arg!r}: expected key=value (see --help)")
        if key == "prompt":
            prompts.append(value)
        elif key in DEFAULTS:
            opts[key] = value
        else:
            raise ValueError(f"unknown option {key!r}; options: prompt, {', '.join(DEFAULTS)}")
    if not prompts:
        raise ValueError('give at least one prompt="..." (see --help)')
    return opts, prompts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:
        opts, prompts = parse_args(argv)
        loaded = load_pretrained(str(opts["model"]))
        style_name = opts["style"] or loaded.prompt_style
        tok = loaded.tokenizer
        if style_name == "raw":
            prompt_ids, stop_strings = [tok.encode(t) for t in prompts], ()
        else:
            style = get_style(style_name, tok)
            records = [Record(instruction=p, system=opts["system"]) for p in prompts]
            prompt_ids = [style.encode_prompt(r, tok) for r in records]
            stop_strings = style.stop_strings
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    outs = generate(
        loaded.model,
        prompt_ids,
        max_new_tokens=int(opts["max_new_tokens"]),
        stop_ids=sorted(set(tok.stop_ids) | {tok.eos_id}),
        temperature=float(opts["temperature"]),
        top_k=int(opts["top_k"]) if opts["top_k"] else None,
        top_p=float(opts["top_p"]) if opts["top_p"] else None,
        seed=int(opts["seed"]),
    )
    seconds = time.perf_counter() - start
    for prompt, out in zip(prompts, outs, strict=True):
        text = tok.decode(out)
        for s in stop_strings:
            text = text.split(s)[0]
        print(f">>> {prompt}\n{text.strip()}\n")
    n = sum(len(o) for o in outs)
    print(
        f"[{n} tokens in {seconds:.1f} s, {n / max(seconds, 1e-9):.1f} tokens/s, style {style_name}]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
