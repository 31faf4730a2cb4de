"""LM-head + loss in chunks of tokens: the (tokens x vocab) logits are never built whole.

A 50k-word vocabulary makes the logits the largest tensors of a small model's step: at 600 tokens
one fp32 copy is 120 MB, and the plain path keeps several (logits, log-softmax, their gradient).
Here the final hidden states of the *counted* positions only (targets != ignore_index) are
projected a chunk of rows at a time, so at most one (chunk x vocab) block is alive; positions
without a target (padding, masked prompts) are never projected at all.

- `linear_cross_entropy`: the summed next-token NLL. Its gradient is known in the forward pass
  (d NLL / d logits = softmax - onehot), so it is computed there, chunk by chunk, and the backward
  only scales it: the same three matrix products as the plain path, no recomputation.
- `linear_target_logprobs`: per-position log p(target), for DPO and per-sequence scores. The
  upstream gradient differs per token and is unknown in the forward, so the backward recomputes
  each chunk's logits from the saved log-sum-exp (one extra matrix product, no logits kept).

Under autocast the matrix products run in the autocast dtype (as `nn.Linear` would) and the
softmax in fp32, like `F.cross_entropy(logits.float())` on the plain path.
"""

from __future__ import annotations

import torch

from tunelab.losses.lm import IGNORE_INDEX

# Elements of one (chunk x vocab) logits block: 128 MB of fp32 on a CPU, 1 GB on a GPU. A typical
# batch then fits one chunk (every extra chunk costs a pass over the weight-sized gradient
# accumulator); a long one is still bounded.
CHUNK_ELEMENTS = {"cpu": 2**25, "cuda": 2**28}


def default_pad_vocab_to(device: torch.device) -> int:
    """GPUs: LM-head rows padded to a multiple of 64 (aligned GEMMs); CPUs: no padding (a copy)."""
    return 64 if device.type == "cuda" else 1


def default_chunk_rows(vocab_size: int, device: torch.device) -> int:
    budget = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cpu"])
    return max(16, budget // max(vocab_size, 1))


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(x.dtype, weight.dtype)


def _accumulate(
    grad_w: torch.Tensor | None, d_logits: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """grad_w + d_logits.T @ h in at least fp32 (the first chunk allocates it); in the GEMM when
    the dtypes allow it."""
    if grad_w is None:
        return _upcast(d_logits.t() @ h)
    if grad_w.dtype == d_logits.dtype:
        return grad_w.addmm_(d_logits.t(), h)
    return grad_w.add_(d_logits.t() @ h)


def _head(weight: torch.Tensor, dtype: torch.dtype, pad_to: int) -> torch.Tensor:
    """The LM head in the compute dtype, rows zero-padded to a multiple of `pad_to`.

    GPT-2's 50,257 words make every LM-head GEMM misaligned: on an H100 cuBLAS falls back to
    `align1` kernels several times slower than aligned ones. Casting to bf16 copies the weight
    anyway, so the copy is made padded; padded words get logit -inf (probability 0).
    """
    vocab = weight.shape[0]
    padded = -(-vocab // pad_to) * pad_to
    if padded == vocab:
        return weight.to(dtype)
    w = torch.zeros(padded, weight.shape[1], dtype=dtype, device=weight.device)
    w[:vocab].copy_(weight)
    return w


def _logits(h: torch.Tensor, w: torch.Tensor, vocab: int) -> torch.Tensor:
    logits = _upcast(h @ w.t())
    if w.shape[0] > vocab:
        logits[:, vocab:] = float("-inf")
    return logits


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Softmax in at least fp32 (fp64 stays fp64, for exact checks)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _exp_shifted_(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows' log-sum-exp, turning the block into exp(logits - row max) in place; returns
    (lse, the rows' sums of that block). `torch.logsumexp` would allocate a second block-sized
    temporary (x - max): 128 MB of a CPU step's peak at the default chunk size."""
    row_max = logits.amax(dim=-1, keepdim=True)
    row_max.masked_fill_(~torch.isfinite(row_max), 0.0)  # an all -inf row stays -inf, not NaN
    sum_exp = logits.sub_(row_max).exp_().sum(dim=-1)
    return sum_exp.log().add_(row_max.squeeze(-1)), sum_exp


def _chunks(n: int, rows: int):
    for start in range(0, n, rows):
        yield start, min(start + rows, n)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean NLL over the rows; its gradients are computed in the forward, already scaled."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows, pad_to):
        dtype = _compute_dtype(hidden, weight)
        h, w, vocab = hidden.to(dtype), _head(weight, dtype, pad_to), weight.shape[0]
        scale = 1.0 / max(h.shape[0], 1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=_upcast(h[:0]).dtype, device=hidden.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = None
        for a, b in _chunks(h.shape[0], chunk_rows):
            logits = _logits(h[a:b], w, vocab)
            rows = torch.arange(b - a, device=h.device)
            target_logits = logits[rows, targets[a:b]]
            lse, sum_exp = _exp_shifted_(logits)
            total += (lse - target_logits).sum()
            if need_h or need_w:
                # softmax - onehot, in place on the logits block
                probs = logits.div_(sum_exp[:, None])
                probs[rows, targets[a:b]] -= 1.0
                probs = probs.to(dtype)
                if need_h:
                    torch.mm(probs, w, out=grad_h[a:b])
                    grad_h[a:b].mul_(scale)
                if need_w:
                    grad_w = _accumulate(grad_w, probs, h[a:b] * scale)
        if grad_w is not None and grad_w.shape[0] != vocab:
            grad_w = grad_w[:vocab]
        # Held as attributes, not saved tensors, and let go in the backward: the returned
        # gradients are then their only reference, so autograd can add other gradients of the
        # same tensor into them in place (a tied embedding's dense gradient into the head's)
        # instead of allocating the sum.
        ctx.grads = (grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward through the same loss twice")
        (grad_h, grad_w), ctx.grads = ctx.grads, None
        h_dtype, w_dtype = ctx.dtypes
        # A loss backpropagated as is has grad_out == 1: skip two passes over the buffers (on a
        # CPU, where reading the value costs nothing). Otherwise scale in place: the buffers are
        # this function's own, used once.
        unit = grad_out.device.type == "cpu" and float(grad_out) == 1.0
        if grad_h is not None and not unit:
            grad_h.mul_(grad_out)
        if grad_w is not None and not unit:
            grad_w.mul_(grad_out)
        gh = grad_h.to(h_dtype) if grad_h is not None else None
        gw = grad_w.to(w_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


class _LinearTargetLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows, pad_to):
        dtype = _compute_dtype(hidden, weight)
        h, w, vocab = hidden.to(dtype), _head(weight, dtype, pad_to), weight.shape[0]
        out = torch.empty(h.shape[0], dtype=_upcast(h[:0]).dtype, device=h.device)
        lse_all = torch.empty_like(out)
        for a, b in _chunks(h.shape[0], chunk_rows):
            logits = _logits(h[a:b], w, vocab)
            rows = torch.arange(b - a, device=h.device)
            target_logits = logits[rows, targets[a:b]]
            lse, _ = _exp_shifted_(logits)
            out[a:b] = target_logits - lse
            lse_all[a:b] = lse
        ctx.save_for_backward(hidden, weight, targets, lse_all)
        ctx.chunk_rows, ctx.dtype, ctx.pad_to = chunk_rows, dtype, pad_to
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse_all = ctx.saved_tensors
        dtype = ctx.dtype
        h, w, vocab = hidden.to(dtype), _head(weight, dtype, ctx.pad_to), weight.shape[0]
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = None
        for a, b in _chunks(h.shape[0], ctx.chunk_rows):
            logits = _logits(h[a:b], w, vocab)
            g = grad_out[a:b].to(logits.dtype)
            rows = torch.arange(b - a, device=h.device)
            # d logp / d logits = onehot - softmax, times the upstream gradient of each row
            d_logits = logits.sub_(lse_all[a:b, None]).exp_().mul_(-g[:, None])
            d_logits[rows, targets[a:b]] += g
            d_logits = d_logits.to(dtype)
            if grad_h is not None:
                torch.mm(d_logits, w, out=grad_h[a:b])
            if ctx.needs_input_grad[1]:
                grad_w = _accumulate(grad_w, d_logits, h[a:b])
        gh = grad_h.to(hidden.dtype) if grad_h is not None else None
        gw = grad_w[:vocab].to(weight.dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def _counted(
    hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = targets != ignore_index
    return mask, hidden[mask], targets[mask]


def _apply(fn, h, weight, t, chunk_rows: int | None, pad_vocab_to: int | None) -> torch.Tensor:
    """Run a chunked function with the device's default chunk size and head padding."""
    rows = chunk_rows or default_chunk_rows(weight.shape[0], h.device)
    pad = pad_vocab_to or default_pad_vocab_to(h.device)
    return fn.apply(h, weight, t, rows, pad)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
    pad_vocab_to: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token NLL of `hidden @ weight.T` over targets != ignore_index, chunked.

    hidden: (B, T, C) final hidden states (after the final norm); weight: (V, C), the LM head;
    targets: (B, T). Same value and gradients as `masked_cross_entropy(hidden @ weight.T, targets)`.
    Returns (mean loss, number of counted tokens); with no counted token the loss is 0, not NaN.
    """
    mask, h, t = _counted(hidden, targets, ignore_index)
    n = mask.sum()
    if h.shape[0] == 0:
        return hidden.sum() * 0.0, n  # keeps the graph connected for DDP
    return _apply(_LinearCrossEntropy, h, weight, t, chunk_rows, pad_vocab_to), n


def linear_target_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
    pad_vocab_to: int | None = None,
) -> torch.Tensor:
    """(B, T) fp32 log p(target) under `hidden @ weight.T`, 0 where targets == ignore_index."""
    mask, h, t = _counted(hidden, targets, ignore_index)
    out = torch.zeros(targets.shape, dtype=_upcast(hidden[:0]).dtype, device=hidden.device)
    if h.shape[0] == 0:
        return out + hidden.sum() * 0.0
    logp = _apply(_LinearTargetLogprobs, h, weight, t, chunk_rows, pad_vocab_to)
    return out.masked_scatter(mask, logp)
