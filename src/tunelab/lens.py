"""`python -m tunelab.lens model=<preset|checkpoint> prompt="..."`: the logit lens as a table.

Prints the layer x position grid of top-1 tokens (nostalgebraist's logit lens), the grid of ranks
of the final layer's top token, and a per-layer summary (KL, agreement, next-token CE).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # imported lazily below so that `--help` answers at once (no Lightning import)
    import torch

    from tunelab.callbacks.logit_lens import LensResult, PromptLens


def show_token(text: str) -> str:
    from tunelab.callbacks.logit_lens import show_token as show

    return show(text)


USAGE = """\
usage: python -m tunelab.lens model=SOURCE [prompt=TEXT] [key=value ...]

The logit lens: apply the model's final norm and LM head to the residual stream after every
layer and show what each layer would predict at each position.

options (key=value; quote values with spaces):
  model=SOURCE     preset (smollm2-135m, gpt2-124m, tiny-llama, ...), a tunelab .ckpt or run
                   folder, a .gguf file, or a Hugging Face-format folder        (required)
  prompt=TEXT      the text to read                   (default: "The capital of France is")
  style=NAME       none: the raw prompt (default); model: wrap it as an instruction in the
                   model's own prompt style; or a style name (alpaca, chatml, phi3, smollm2)
  last_k=N         show only the last N positions (default 0 = all)
  max_tokens=N     keep only the prompt's last N tokens (default: the model's context length)
  layers=SPEC      all (default), a list "0,10,20", or a slice "10:" / "::2"; 0 = embeddings,
                   i = after block i; the last layer is always shown
  ranks=BOOL       also print the rank grid of the final top token (default true)
  summary=BOOL     also print per-layer KL / agreement / next-token CE (default true)
  top_k=N          also list the top N tokens at the last position for each layer (default 1:
                   off)
  device=NAME      cpu, cuda, cuda:1, ... or auto (default auto: cuda when available)
  -h, --help       show this help

rows: emb = the embeddings, i = the residual stream after block i (the last row is the model's own
output). cells: the top-1 token, spaces shown as '␣'. rank: 1-based rank of the final layer's top
token at that layer (1 = the layer already predicts it).

example:
  python -m tunelab.lens model=smollm2-135m prompt="The capital of France is"
"""

OPTIONS = {
    "model": None,
    "prompt": "The capital of France is",
    "style": "none",
    "last_k": "0",
    "max_tokens": "0",
    "layers": "all",
    "ranks": "true",
    "summary": "true",
    "top_k": "1",
    "device": "auto",
}


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """`key=value` pairs (split at the first '='); unknown keys are an error naming the choices."""
    opts = dict(OPTIONS)
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"argument {arg!r}: expected key=value (see --help)")
        key, value = arg.split("=", 1)
        key = key.strip().lstrip("-")
        if key not in OPTIONS:
            raise KeyError(f"unknown option {key!r}; expected one of: {', '.join(OPTIONS)}")
        opts[key] = value
    if not opts["model"]:
        raise ValueError("model=SOURCE is required (a preset name or a checkpoint; see --help)")
    return opts


def _bool(key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key}={value!r}: expected true or false")


def _int(key: str, value: str, minimum: int = 0) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{key}={value!r}: expected an integer") from None
    if n < minimum:
        raise ValueError(f"{key}={value!r}: expected an integer >= {minimum}")
    return n


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available here; use device=cpu")
    return torch.device(name)


def _grid(title: str, result: LensResult, p: PromptLens, cell) -> Table:
    table = Table(title=title, show_lines=False, title_justify="left", pad_edge=False)
    table.add_column("layer", justify="right", style="bold")
    for pos, tok in zip(p.positions, p.input_tokens, strict=True):
        table.add_column(Text(f"{pos}:{show_token(tok)}"), justify="left", no_wrap=True)
    for r in reversed(range(len(result.layers))):  # last layer on top, as in the seed's tables
        table.add_row(result.layer_names[r], *(cell(r, c) for c in range(len(p.positions))))
    return table


def render(result: LensResult, console: Console, ranks: bool = True, summary: bool = True) -> None:
    p = result.prompts[0]

    def top_cell(r: int, c: int) -> Text:
        agree = bool(p.agree[r, c])
        return Text(show_token(p.top_tokens[r][c]), style="green" if agree else "")

    console.print(
        _grid("top-1 token per layer (green: agrees with the final layer)", result, p, top_cell)
    )
    if ranks:

        def rank_cell(r: int, c: int) -> Text:
            return Text(str(int(p.rank[r, c])))

        console.print(_grid("rank of the final layer's top token (1 = top)", result, p, rank_cell))
    if summary:
        table = Table(title="per layer, over the shown positions", title_justify="left")
        for name in ("layer", "KL(final||layer)", "top-1 agree", "next-token CE", "top-1 (last)"):
            table.add_column(name, justify="right")
        for row in reversed(result.summary()):
            ce = "" if row["ce"] != row["ce"] else f"{row['ce']:.3f}"
            table.add_row(
                row["layer"],
                f"{row['kl']:.3f}",
                f"{row['agree']:.2f}",
                ce,
                Text(show_token(row["top1_last"][0])),
            )
        console.print(table)


def top_k_table(model, tokenizer, result: LensResult, k: int) -> Table:
    """The top k tokens (with probabilities) at the last position, per layer."""
    import torch

    from tunelab.callbacks.hooks import capture_block_outputs
    from tunelab.callbacks.logit_lens import lens_logits

    p = result.prompts[0]
    device = next(model.parameters()).device
    ids = torch.tensor([p.ids], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_block_outputs(model) as res:
            model(ids)
            table = Table(title=f"top {k} at the last position", title_justify="left")
            table.add_column("layer", justify="right", style="bold")
            for j in range(k):
                table.add_column(f"#{j + 1}")
            for r in reversed(range(len(result.layers))):
                probs = lens_logits(model, res[result.layers[r]][0, -1]).float().softmax(-1)
                vals, idx = probs.topk(k)
                cells = [
                    Text(f"{show_token(tokenizer.token_str(int(t)))} {float(v):.2f}")
                    for v, t in zip(vals, idx, strict=True)
                ]
                table.add_row(result.layer_names[r], *cells)
    finally:
        model.train(was_training)
    return table


def run(argv: Sequence[str], console: Console | None = None) -> LensResult:
    """Parse `argv`, load the model, print the grids; returns the lens result (for tests)."""
    from tunelab.callbacks.logit_lens import logit_lens
    from tunelab.models import load_pretrained

    opts = parse_args(argv)
    last_k = _int("last_k", opts["last_k"])
    max_tokens = _int("max_tokens", opts["max_tokens"])
    top_k = _int("top_k", opts["top_k"], minimum=1)
    ranks, summary = _bool("ranks", opts["ranks"]), _bool("summary", opts["summary"])
    device = _device(opts["device"])
    loaded = load_pretrained(opts["model"])
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    text = opts["prompt"]
    if opts["style"] != "none":
        from tunelab.data.prompts import get_style
        from tunelab.data.records import Record

        name = loaded.prompt_style if opts["style"] == "model" else opts["style"]
        text = get_style(name, tokenizer).prompt(Record(instruction=text))
    result = logit_lens(
        model,
        tokenizer,
        [text],
        last_k=last_k or None,
        layers=opts["layers"],
        max_tokens=max_tokens or None,
    )
    p = result.prompts[0]
    if console is None:
        console = Console()
        # Piped output has no terminal width: make room for every column instead of wrapping.
        if not console.is_terminal:
            console = Console(width=max(100, 8 + 14 * len(p.positions)))
    console.print(
        Text(
            f"logit lens: {loaded.source} ({model.cfg.family}, {len(model.blocks)} blocks); "
            f"{len(p.ids)} prompt tokens, showing positions {p.positions[0]}..{p.positions[-1]}; "
            f"the model predicts {show_token(p.final_top_tokens[-1])!s} next"
        )
    )
    render(result, console, ranks=ranks, summary=summary)
    if top_k > 1:
        console.print(top_k_table(model, tokenizer, result, top_k))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE, end="")
        return 0
    if not argv:
        print(USAGE, end="", file=sys.stderr)
        return 2
    from tunelab.utils.errors import friendly_errors

    with friendly_errors():
        run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
