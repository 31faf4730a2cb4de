"""The logit lens (nostalgebraist, 2020): read every layer's residual stream as a prediction.

For residual i (0 = embeddings, i >= 1 = output of block i) the lens logits are
`lm_head(norm_f(residual_i))`: the model's own final norm and unembedding applied early. The last
residual gives exactly the model's output. Per layer and position we report the top-1 token, the
rank of the final layer's top token (1 = it is already the top), KL(final || layer) in nats, top-1
agreement with the final layer, and the cross-entropy of the true next token.

`logit_lens()` is the pure computation shared by the `LogitLens` callback (fixed probe prompts at
the start and the end of training: table + heatmap to W&B, PNG/CSV/JSON in the run folder) and by
`python -m tunelab.lens`.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from tunelab.callbacks.hooks import capture_block_outputs, find_decoder
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import Tokenizer
from tunelab.utils.io import atomic_save, atomic_write_text, write_csv

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def add(a, b):\n    return",
    "Water boils at a temperature of",
)


def show_token(text: str) -> str:
    """A token as one visible cell: spaces as '␣', control characters escaped (\\n, \\t, ...)."""
    out = []
    for ch in text:
        if ch == " ":
            out.append("␣")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def layer_name(i: int) -> str:
    return "emb" if i == 0 else str(i)


@dataclass
class PromptLens:
    """Lens of one prompt: tensors shaped (layers, positions), on the CPU."""

    prompt: str
    ids: list[int]
    positions: list[int]  # prompt positions that were lensed (the last K)
    input_tokens: list[str]  # the token at each lensed position
    top_ids: torch.Tensor
    top_tokens: list[list[str]]
    rank: torch.Tensor  # 1-based rank of the final layer's top token
    kl: torch.Tensor  # KL(final || layer), nats
    agree: torch.Tensor  # bool: layer top-1 == final top-1
    ce: torch.Tensor  # -log p_layer(true next token); nan where there is no next token
    final_top_ids: torch.Tensor  # (positions,) the model's own argmax
    final_top_tokens: list[str]


@dataclass
class LensResult:
    layers: list[int]
    prompts: list[PromptLens] = field(default_factory=list)

    @property
    def layer_names(self) -> list[str]:
        return [layer_name(i) for i in self.layers]

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer: means over every probe position (CE: positions with a next token)."""
        rows = []
        for r, i in enumerate(self.layers):
            kl = torch.cat([p.kl[r] for p in self.prompts]).double()
            agree = torch.cat([p.agree[r] for p in self.prompts]).double()
            ce = torch.cat([p.ce[r] for p in self.prompts]).double()
            ce = ce[~ce.isnan()]
            ranks = torch.cat([p.rank[r] for p in self.prompts]).tolist()
            rows.append(
                {
                    "layer": layer_name(i),
                    "index": i,
                    "kl": float(kl.mean()),
                    "agree": float(agree.mean()),
                    "ce": float(ce.mean()) if ce.numel() else math.nan,
                    "rank_median": float(statistics.median(ranks)),
                    # The top-1 token at each prompt's last position (what the model would say).
                    "top1_last": [p.top_tokens[r][-1] for p in self.prompts],
                }
            )
        return rows

    def rows(self) -> list[dict[str, Any]]:
        """Long format: one row per (prompt, layer, position), for CSV and W&B tables."""
        out = []
        for n, p in enumerate(self.prompts):
            for r, i in enumerate(self.layers):
                for c, pos in enumerate(p.positions):
                    ce = float(p.ce[r, c])
                    out.append(
                        {
                            "prompt": n,
                            "layer": layer_name(i),
                            "position": pos,
                            "input_token": p.input_tokens[c],
                            "top1": p.top_tokens[r][c],
                            "final_top1": p.final_top_tokens[c],
                            "rank_of_final_top1": int(p.rank[r, c]),
                            "kl_final_layer": float(p.kl[r, c]),
                            "agree_final": bool(p.agree[r, c]),
                            "ce_next": None if math.isnan(ce) else ce,
                        }
                    )
        return out


def lens_logits(model: Decoder, residual: torch.Tensor) -> torch.Tensor:
    """The lens: the model's final norm and LM head applied to a residual stream."""
    return model.lm_head(model.norm_f(residual))


def select_layers(spec: str | list[int] | None, n_layer: int) -> list[int]:
    """Residual indices from None/'all', a list, 'a,b,c', or a Python slice 'start:stop:step'."""
    total = n_layer + 1
    if spec is None or spec == "all":
        return list(range(total))
    if isinstance(spec, str):
        spec = spec.strip()
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) > 3:
                raise ValueError(f"layers={spec!r}: expected start:stop[:step]")
            chosen = list(range(total))[slice(*parts)]
        else:
            chosen = [int(p) if p.strip() != "emb" else 0 for p in spec.split(",") if p.strip()]
    else:
        chosen = [int(i) for i in spec]
    bad = [i for i in chosen if not 0 <= i < total]
    if bad or not chosen:
        raise ValueError(
            f"layers={spec!r}: expected residual indices in 0..{n_layer} (0 = embeddings, "
            f"i = after block i); got {bad or 'none'}"
        )
    if n_layer not in chosen:
        chosen.append(n_layer)  # the final layer is the reference every other row is compared to
    return sorted(set(chosen))


@torch.no_grad()
def logit_lens(
    model: Decoder,
    tokenizer: Tokenizer,
    prompts: list[str],
    last_k: int | None = None,
    layers: str | list[int] | None = None,
    max_tokens: int | None = None,
) -> LensResult:
    """Run the lens on `prompts` in one right-padded batch (causal: padding changes nothing).

    last_k: lens only each prompt's last K positions (the forward pass still sees all tokens).
    max_tokens: keep only each prompt's last `max_tokens` tokens (bounds the forward pass).
    Runs in eval mode without gradients; the model's train/eval mode is restored.
    """
    if not prompts:
        raise ValueError("logit lens: no probe prompts given")
    device = next(model.parameters()).device
    limit = (
        model.cfg.context_length
        if max_tokens is None
        else min(max_tokens, model.cfg.context_length)
    )
    ids_list = []
    for p in prompts:
        ids = tokenizer.encode(p)
        if not ids:
            raise ValueError(f"logit lens: prompt {p!r} encodes to no tokens")
        ids_list.append(ids[-limit:])
    chosen = select_layers(layers, len(model.blocks))
    T = max(len(ids) for ids in ids_list)
    batch = torch.full((len(ids_list), T), tokenizer.pad_id, dtype=torch.long)
    for b, ids in enumerate(ids_list):
        batch[b, : len(ids)] = torch.tensor(ids)
    batch = batch.to(device)

    # Which (row, position) pairs to lens, flattened so each layer is one GEMM with the LM head.
    rows, cols, spans = [], [], []
    for b, ids in enumerate(ids_list):
        start = 0 if not last_k else max(0, len(ids) - last_k)
        spans.append((len(rows), len(ids) - start, start))
        rows += [b] * (len(ids) - start)
        cols += list(range(start, len(ids)))
    rows_t = torch.tensor(rows, device=device)
    cols_t = torch.tensor(cols, device=device)
    nxt = torch.tensor(
        [
            ids_list[b][c + 1] if c + 1 < len(ids_list[b]) else -1
            for b, c in zip(rows, cols, strict=True)
        ],
        device=device,
    )
    has_next = nxt >= 0

    was_training = model.training
    model.eval()
    try:
        with capture_block_outputs(model) as residuals:
            logits = model(batch)
        final = logits[rows_t, cols_t].float()
        final_logp = F.log_softmax(final, dim=-1)
        final_top = final.argmax(-1)
        per_layer: dict[str, list[torch.Tensor]] = {k: [] for k in ("top", "rank", "kl", "ce")}
        for i in chosen:
            lg = lens_logits(model, residuals[i][rows_t, cols_t]).float()
            logp = F.log_softmax(lg, dim=-1)
            per_layer["top"].append(lg.argmax(-1))
            ref = lg.gather(-1, final_top[:, None])
            per_layer["rank"].append((lg > ref).sum(-1) + 1)
            per_layer["kl"].append((final_logp.exp() * (final_logp - logp)).sum(-1).clamp_min(0))
            ce = -logp.gather(-1, nxt.clamp_min(0)[:, None]).squeeze(-1)
            per_layer["ce"].append(torch.where(has_next, ce, torch.full_like(ce, math.nan)))
    finally:
        model.train(was_training)
    top, rank, kl, ce = (torch.stack(per_layer[k]).cpu() for k in ("top", "rank", "kl", "ce"))
    final_top = final_top.cpu()

    result = LensResult(layers=chosen)
    for b, (offset, n, start) in enumerate(spans):
        sl = slice(offset, offset + n)
        top_b = top[:, sl]
        result.prompts.append(
            PromptLens(
                prompt=prompts[b],
                ids=ids_list[b],
                positions=list(range(start, start + n)),
                input_tokens=[tokenizer.token_str(t) for t in ids_list[b][start:]],
                top_ids=top_b,
                top_tokens=[[tokenizer.token_str(t) for t in row] for row in top_b.tolist()],
                rank=rank[:, sl],
                kl=kl[:, sl],
                agree=top_b == final_top[sl][None, :],
                ce=ce[:, sl],
                final_top_ids=final_top[sl],
                final_top_tokens=[tokenizer.token_str(t) for t in final_top[sl].tolist()],
            )
        )
    return result


# -- files and plots ------------------------------------------------------------------------------
ROW_COLUMNS = [
    "prompt",
    "layer",
    "position",
    "input_token",
    "top1",
    "final_top1",
    "rank_of_final_top1",
    "kl_final_layer",
    "agree_final",
    "ce_next",
]


def plot_lens(result: LensResult, path: Path, title: str = "", max_prompts: int = 4) -> Path:
    """Heatmap per prompt: rows = layers, columns = positions, text = top-1 token, colour = KL."""
    # A bare Figure (no pyplot): no global backend state, nothing to close, safe off the main thread.
    from matplotlib.figure import Figure

    prompts = result.prompts[:max_prompts]
    n_rows = len(result.layers)
    widths = [max(2.0, 0.9 * len(p.positions) + 1.2) for p in prompts]
    fig = Figure(figsize=(sum(widths) + 1.5, 0.26 * n_rows + 2.0))
    axes = fig.subplots(1, len(prompts), gridspec_kw={"width_ratios": widths}, squeeze=False)
    # The embedding row is often far off (tens of nats): scale colours to the block rows.
    rows = [r for r, i in enumerate(result.layers) if i != 0] or list(range(n_rows))
    vmax = max(1e-6, max(float(p.kl[rows].max()) for p in prompts))
    image = None
    for ax, p in zip(axes[0], prompts, strict=True):
        kl = p.kl.numpy()[::-1]  # last layer on top, as in nostalgebraist's plots
        image = ax.imshow(kl, aspect="auto", cmap="viridis_r", vmin=0.0, vmax=vmax)
        labels = p.top_tokens[::-1]
        size = 7 if n_rows <= 16 else 6
        for r, row in enumerate(labels):
            for c, tok in enumerate(row):
                ax.text(
                    c,
                    r,
                    show_token(tok)[:10],
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if kl[r, c] > 0.6 * vmax else "black",
                )
        ax.set_yticks(range(n_rows))
        ax.set_yticklabels(result.layer_names[::-1], fontsize=6)
        ax.set_xticks(range(len(p.positions)))
        ax.set_xticklabels(
            [show_token(t)[:10] for t in p.input_tokens], rotation=60, ha="right", fontsize=7
        )
        ax.set_title(show_token(p.prompt)[:48], fontsize=8)
    axes[0][0].set_ylabel("layer (emb = embeddings, i = after block i)", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, pad=0.01, extend="max").set_label(
            "KL(final || layer), nats", fontsize=7
        )
    fig.suptitle(title or "logit lens: top-1 token per layer and position", fontsize=9)
    return atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def compare_rows(start: LensResult, end: LensResult) -> list[dict[str, Any]]:
    """Per-layer start vs end summary: what training changed in the lens."""
    out = []
    for a, b in zip(start.summary(), end.summary(), strict=True):
        row = {"layer": a["layer"]}
        for k in ("kl", "agree", "ce", "rank_median"):
            row[f"{k}_start"], row[f"{k}_end"] = a[k], b[k]
        row["top1_last_start"] = " | ".join(a["top1_last"])
        row["top1_last_end"] = " | ".join(b["top1_last"])
        out.append(row)
    return out


# -- the callback ---------------------------------------------------------------------------------
class LogitLens(L.Callback):
    """Runs the lens on fixed probe prompts at the start and the end of training.

    Writes `<output_dir>/logit_lens/{start,end}.{png,csv,json}` (and `compare.csv` once both
    exist); logs per-layer scalars `lens/layer_{i}/{kl,agree,ce,rank_median}` to every logger,
    and, to loggers with `log_table`/`log_image` (W&B), the long table and the heatmap.
    Cost is bounded: one no-grad forward of `len(prompts)` prompts of at most `max_tokens` tokens,
    plus one LM-head product per layer for the last `last_k` positions of each prompt.
    """

    def __init__(
        self,
        output_dir: str,
        prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS,
        apply_prompt_style: bool = False,
        last_k: int | None = 8,
        max_tokens: int = 64,
        layers: str | list[int] | None = None,
        at_start: bool = True,
        at_end: bool = True,
        max_plot_prompts: int = 4,
        prefix: str = "lens",
    ) -> None:
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError(
                f"callbacks.logit_lens.prompts: expected a non-empty list of strings, got {prompts!r}"
            )
        if last_k is not None and last_k < 1:
            raise ValueError(f"callbacks.logit_lens.last_k must be >= 1 or null, got {last_k}")
        if max_tokens < 1:
            raise ValueError(f"callbacks.logit_lens.max_tokens must be >= 1, got {max_tokens}")
        self.output_dir = Path(output_dir) / "logit_lens"
        self.prompts, self.apply_prompt_style = prompts, apply_prompt_style
        self.last_k, self.max_tokens, self.layers = last_k, max_tokens, layers
        self.at_start, self.at_end = at_start, at_end
        self.max_plot_prompts, self.prefix = max_plot_prompts, prefix
        self.results: dict[str, LensResult] = {}
        self.seconds: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start:
            self.probe(trainer, pl_module, "start")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end:
            self.probe(trainer, pl_module, "end")

    def probe_texts(self, pl_module: L.LightningModule) -> list[str]:
        if not self.apply_prompt_style:
            return list(self.prompts)
        from tunelab.data.prompts import get_style
        from tunelab.data.records import Record

        style = get_style(pl_module.prompt_style, getattr(pl_module, "tokenizer", None))
        return [style.prompt(Record(instruction=p)) for p in self.prompts]

    def probe(
        self, trainer: L.Trainer, pl_module: L.LightningModule, phase: str
    ) -> LensResult | None:
        if not trainer.is_global_zero:
            return None
        tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("logit lens: the task has no `tokenizer` to encode the probe prompts")
        t0 = time.perf_counter()
        result = logit_lens(
            find_decoder(pl_module),
            tokenizer,
            self.probe_texts(pl_module),
            last_k=self.last_k,
            layers=self.layers,
            max_tokens=self.max_tokens,
        )
        for p, text in zip(result.prompts, self.prompts, strict=True):
            p.prompt = text  # show the user's prompt, not the styled one, in titles
        self.results[phase] = result
        step = trainer.global_step
        png = self.save(result, phase, step)
        self.log_to(trainer, result, phase, step, png)
        self.seconds[phase] = time.perf_counter() - t0
        last = result.summary()[-1]
        log.info(
            "logit lens (%s, step %d): %d prompts x %d layers in %.2f s; final top-1 at last "
            "position: %s",
            phase,
            step,
            len(result.prompts),
            len(result.layers),
            self.seconds[phase],
            " | ".join(show_token(t) for t in last["top1_last"]),
        )
        return result

    def save(self, result: LensResult, phase: str, step: int) -> Path:
        rows = result.rows()
        write_csv(self.output_dir / f"{phase}.csv", rows, ROW_COLUMNS)
        payload = {
            "phase": phase,
            "step": step,
            "prompts": [p.prompt for p in result.prompts],
            "layers": result.layer_names,
            "summary": [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                for r in result.summary()
            ],
            "grid": [
                {"input_tokens": p.input_tokens, "positions": p.positions, "top1": p.top_tokens}
                for p in result.prompts
            ],
        }
        atomic_write_text(
            self.output_dir / f"{phase}.json",
            json.dumps(payload, indent=1, ensure_ascii=False) + "\n",
        )
        if "start" in self.results and "end" in self.results:
            cmp = compare_rows(self.results["start"], self.results["end"])
            write_csv(self.output_dir / "compare.csv", cmp, list(cmp[0]))
        return plot_lens(
            result,
            self.output_dir / f"{phase}.png",
            title=f"logit lens at the {phase} of training (step {step}): top-1 token; "
            "colour = KL(final || layer)",
            max_prompts=self.max_plot_prompts,
        )

    def log_to(
        self, trainer: L.Trainer, result: LensResult, phase: str, step: int, png: Path
    ) -> None:
        width = len(str(result.layers[-1]))
        scalars = {}
        for row in result.summary():
            name = f"{row['index']:0{width}d}"  # as act/layer_{i}: 0 = embeddings
            for k in ("kl", "agree", "ce", "rank_median"):
                if not math.isnan(row[k]):
                    scalars[f"{self.prefix}/layer_{name}/{k}"] = row[k]
        rows = result.rows()
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            if hasattr(logger, "log_table") and hasattr(logger, "log_image"):
                data = [[r[c] for c in ROW_COLUMNS] for r in rows]
                logger.log_table(key=f"{self.prefix}/{phase}_table", columns=ROW_COLUMNS, data=data)
                logger.log_image(key=f"{self.prefix}/{phase}_heatmap", images=[str(png)])
