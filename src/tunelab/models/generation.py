"""Text generation with a KV cache for both families: greedy, temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tunelab.models.decoder import Decoder, KVCache


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick next tokens from (B, V) logits. temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(-1)
    # Shift by the maximum and divide in float64: a tiny temperature (1e-300, below float32's
    # range) gives -inf for every token but the best ones, never inf - inf = nan.
    shifted = (logits - logits.amax(-1, keepdim=True)).double()
    logits = (shifted / temperature).float()
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        drop[:, 0] = False  # and always the most likely token (a tiny top_p rounds to 0 in fp32)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: Decoder,
    prompts: list[list[int]],
    max_new_tokens: int = 128,
    stop_ids: list[int] | tuple[int, ...] = (),
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    on_token: Callable[[int], bool | None] | None = None,
) -> list[list[int]]:
    """Generate continuations for a batch of prompts (token ids); returns only the new tokens.

    Prompts are left-padded; a row stops at its first stop id (not included) or max_new_tokens.
    on_token (one prompt only): called with each new token as soon as it is sampled (never the
    stop id); returning True stops generation after that token (streaming, cancelled requests).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs non-empty prompts")
    if on_token is not None and len(prompts) != 1:
        raise ValueError(f"generate: on_token streams one prompt, got {len(prompts)}")
    was_training = model.training
    model.eval()
    try:  # the caller's train/eval mode comes back on every exit
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        B = len(prompts)
        width = max(len(p) for p in prompts)
        limit = model.cfg.context_length
        max_new_tokens = max(0, min(max_new_tokens, limit - width))
        ids = torch.zeros(B, width, dtype=torch.long, device=device)
        valid = torch.zeros(B, width, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, device=device)
            valid[i, width - len(p) :] = True
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        cache = KVCache(model.cfg, B, width + max_new_tokens, device, dtype)
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
        out = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=device)
        if max_new_tokens == 0:
            return out
        logits = model(ids, positions=positions, cache=cache, attention_mask=valid)[:, -1]
        next_pos = positions[:, -1] + 1
        for _ in range(max_new_tokens):
            tok = sample_next(logits, temperature, top_k, top_p, generator)
            done |= torch.isin(tok, stop)
            for i in range(B):
                if not done[i]:
                    out[i].append(int(tok[i]))
            if on_token is not None and not bool(done[0]) and on_token(out[0][-1]):
                break
            if bool(done.all()) or cache.length >= cache.max_len:
                break
            logits = model(
                tok[:, None],
                positions=next_pos[:, None],
                cache=cache,
                attention_mask=torch.ones(B, 1, dtype=torch.bool, device=device),
            )[:, -1]
            next_pos = next_pos + 1
        return out
    finally:
        model.train(was_training)
