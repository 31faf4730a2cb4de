"""Log-likelihoods of continuations given contexts, as lm-evaluation-harness computes them.

A request is (context, continuation) text. Encoding follows the harness's `_encode_pair`:
trailing whitespace of the context moves to the front of the continuation, the continuation's
tokens are those of `encode(context + continuation)` after the first `len(encode(context))`, and an
empty context becomes the prefix token (BOS when the tokenizer has one, else end-of-text). The
model reads `(context + continuation)[-(n_ctx + 1):][:-1]` (left-truncated to its context) and the
result is the summed log-probability of the continuation's tokens and whether each of them is the
greedy (argmax) token. User text is encoded as text: special-token strings stay text.

Scoring paths, all giving the same numbers up to float rounding (tests check it):
- single-token continuations: one row per distinct context, read at the context's last position
  (MMLU's letters: one forward per question instead of one per choice);
- shared prefix (`shared_prefix`): the context once (KV cache), then all its continuations as a
  batch over the cached prefix;
- plain: every (context + continuation) a row, rows sorted by length and batched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tunelab.models.decoder import Decoder, KVCache
from tunelab.models.tokenizer import Tokenizer


@dataclass(frozen=True)
class Scored:
    """Summed log-probability of a continuation, whether it is the greedy one, its token count."""

    logprob: float
    is_greedy: bool
    n_tokens: int


def prefix_id(tokenizer: Tokenizer) -> int:
    return tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id


def encode_pair(
    tokenizer: Tokenizer, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) by the harness's rules (see the module docstring)."""
    if not context:
        return [prefix_id(tokenizer)], tokenizer.encode(continuation, allow_special=False)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, allow_special=False)
    ctx = tokenizer.encode(context, allow_special=False)
    return ctx, whole[len(ctx) :]


def _device(model: Decoder) -> torch.device:
    return next(model.parameters()).device


def _score_rows(logp: torch.Tensor, tokens: list[int], start: int) -> Scored:
    """Sum of logp[start + i, tokens[i]] and whether each is the argmax (logp: (T, V) float)."""
    n = len(tokens)
    rows = logp[start : start + n]
    target = torch.tensor(tokens, device=logp.device)
    picked = rows.gather(-1, target[:, None]).squeeze(-1)
    greedy = bool((rows.argmax(-1) == target).all())
    return Scored(float(picked.sum()), greedy, n)


def _plain(
    model: Decoder, pairs: list[tuple[list[int], list[int]]], batch_size: int
) -> list[Scored]:
    n_ctx = model.cfg.context_length
    rows = []
    for ctx, cont in pairs:
        if not cont:
            raise ValueError("loglikelihood: a continuation encodes to no tokens")
        whole = (ctx + cont)[-(n_ctx + 1) :]
        rows.append((whole[:-1], len(whole) - 1 - len(cont), cont))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[Scored | None] = [None] * len(rows)
    device = _device(model)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(rows[i][0]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(rows[i][0])] = torch.tensor(rows[i][0])
        logp = model(ids.to(device)).float().log_softmax(-1)
        for r, i in enumerate(idx):
            out[i] = _score_rows(logp[r], rows[i][2], rows[i][1])
    return out  # type: ignore[return-value]


def _single_token(
    model: Decoder, pairs: list[tuple[list[int], list[int]]], batch_size: int
) -> list[Scored]:
    """Every continuation is one token: one row per distinct context, read at its end."""
    n_ctx = model.cfg.context_length
    contexts: dict[tuple[int, ...], int] = {}
    for ctx, _ in pairs:
        contexts.setdefault(tuple(ctx[-n_ctx:]), len(contexts))
    keys = list(contexts)
    order = sorted(range(len(keys)), key=lambda i: -len(keys[i]))
    last: list[torch.Tensor | None] = [None] * len(keys)
    device = _device(model)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(keys[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(keys[i])] = torch.tensor(keys[i])
        hidden = model.hidden_states(ids.to(device))
        ends = torch.tensor([len(keys[i]) - 1 for i in idx], device=device)
        h = hidden[torch.arange(len(idx), device=device), ends]
        logp = model.lm_head(h).float().log_softmax(-1)
        for r, i in enumerate(idx):
            last[i] = logp[r]
    out = []
    for ctx, cont in pairs:
        row = last[contexts[tuple(ctx[-n_ctx:])]]
        out.append(_score_rows(row[None], cont, 0))  # type: ignore[index]
    return out


def _shared_prefix(
    model: Decoder, ctx: list[int], conts: list[list[int]], batch_size: int
) -> list[Scored]:
    """One context, several continuations: the context once into a KV cache, then the
    continuations (right-padded: padding comes after every real token, so causality hides it)."""
    device = _device(model)
    dtype = next(model.parameters()).dtype
    width = max(len(c) for c in conts)
    cache = KVCache(model.cfg, 1, len(ctx) + width, device, dtype)
    hidden = model.hidden_states(torch.tensor([ctx], device=device), cache=cache)
    first = model.lm_head(hidden[0, -1]).float().log_softmax(-1)
    out = []
    for b in range(0, len(conts), batch_size):
        part = conts[b : b + batch_size]
        logps: list[torch.Tensor | None] = [None] * len(part)
        if max(len(c) for c in part) > 1:
            n = len(part)
            sub = KVCache(model.cfg, n, cache.max_len, device, dtype)
            for layer in range(model.cfg.n_layer):
                sub.k[layer][:, :, : len(ctx)] = cache.k[layer][:, :, : len(ctx)]
                sub.v[layer][:, :, : len(ctx)] = cache.v[layer][:, :, : len(ctx)]
            sub.key_valid[:, : len(ctx)] = True
            sub.length = len(ctx)
            w = max(len(c) for c in part) - 1
            ids = torch.zeros(n, w, dtype=torch.long)
            for r, c in enumerate(part):
                ids[r, : len(c) - 1] = torch.tensor(c[:-1])
            rest = model(ids.to(device), cache=sub).float().log_softmax(-1)
            for r in range(n):
                logps[r] = torch.cat([first[None], rest[r]])
        for r, c in enumerate(part):
            row = logps[r] if logps[r] is not None else first[None]
            out.append(_score_rows(row, c, 0))
    return out


@torch.inference_mode()
def score_pairs(
    model: Decoder,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 8,
    shared_prefix: bool = True,
) -> list[Scored]:
    """Score encoded (context ids, continuation ids) pairs; eval mode while scoring."""
    was_training = model.training
    model.eval()
    try:
        return _score(model, list(pairs), batch_size, shared_prefix)
    finally:
        model.train(was_training)


def _score(
    model: Decoder, pairs: list[tuple[list[int], list[int]]], batch_size: int, shared: bool
) -> list[Scored]:
    if any(not cont for _, cont in pairs):
        raise ValueError("loglikelihood: a continuation encodes to no tokens")
    n_ctx = model.cfg.context_length
    out: list[Scored | None] = [None] * len(pairs)
    single = [i for i, (c, t) in enumerate(pairs) if len(t) == 1 and len(c) >= 1]
    single_set = set(single)
    rest = [i for i in range(len(pairs)) if i not in single_set]
    if single:
        for i, s in zip(
            single, _single_token(model, [pairs[i] for i in single], batch_size), strict=True
        ):
            out[i] = s
    plain = []
    if shared:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i in rest:
            groups[tuple(pairs[i][0])].append(i)
        for ctx, members in groups.items():
            fits = len(ctx) + max(len(pairs[i][1]) for i in members) - 1 <= n_ctx
            if len(members) > 1 and fits:
                scored = _shared_prefix(
                    model, list(ctx), [pairs[i][1] for i in members], batch_size
                )
                for i, s in zip(members, scored, strict=True):
                    out[i] = s
            else:
                plain.extend(members)
    else:
        plain = rest
    if plain:
        for i, s in zip(plain, _plain(model, [pairs[i] for i in plain], batch_size), strict=True):
            out[i] = s
    return out  # type: ignore[return-value]


def loglikelihood(
    model: Decoder,
    tokenizer: Tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    shared_prefix: bool = True,
) -> list[Scored]:
    """(context, continuation) text pairs -> Scored, in order."""
    pairs = [encode_pair(tokenizer, c, t) for c, t in requests]
    return score_pairs(model, pairs, batch_size, shared_prefix)


@torch.inference_mode()
def loglikelihood_rolling(model: Decoder, tokenizer: Tokenizer, text: str) -> float:
    """Summed log-probability of the whole text (the harness's perplexity request): the prefix
    token then the text, in disjoint windows of the model's context (each window conditioned on
    the tokens just before it, up to the context length)."""
    tokens = tokenizer.encode(text, allow_special=False)
    if not tokens:
        return 0.0
    n_ctx = model.cfg.context_length
    seq = [prefix_id(tokenizer)] + tokens
    total = 0.0
    was_training = model.training
    model.eval()
    try:
        device = _device(model)
        pos = 1  # next target index in seq
        while pos < len(seq):
            end = min(pos + n_ctx, len(seq))
            start = max(0, end - 1 - n_ctx)
            window = seq[start : end - 1]
            logp = model(torch.tensor([window], device=device))[0].float().log_softmax(-1)
            targets = seq[pos:end]
            offset = pos - 1 - start
            total += _score_rows(logp, targets, offset).logprob
            pos = end
    finally:
        model.train(was_training)
    return total
