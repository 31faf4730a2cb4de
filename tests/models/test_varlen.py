"""Packed rows through FlashAttention's varlen kernel: the spans, and the decoder's plumbing.

The kernel itself needs a GPU (benchmarks/gpu_sft.py checks it there against the masked path);
here a per-span reference with the same signature stands in for it on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import tunelab.models.decoder as decoder
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder, packed_spans


def test_spans_split_rows_at_each_new_doc_id_and_at_row_starts():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 0, 0, 1, -1, -1]])
    spans = packed_spans(doc_ids)
    assert spans.cu_seqlens.tolist() == [0, 2, 5, 6, 9, 10, 12]
    assert spans.cu_seqlens.dtype == torch.int32 and spans.max_len == 3
    # the same doc id at the end of one row and the start of the next is two spans
    assert packed_spans(torch.tensor([[0, 1], [1, 2]])).cu_seqlens.tolist() == [0, 1, 2, 3, 4]


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), **_):
    assert window_size == (-1, 0)  # causal
    out = torch.empty_like(q)
    cu = cu_q.tolist()
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        y = F.scaled_dot_product_attention(
            *(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=True
        )
        out[a:b] = y.transpose(0, 1)
    return out


def _packed_batch():
    ids = torch.randint(0, 1000, (2, 10))
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 0, 0], [0, 1, 2, 3, 4, 5, 0, 1, 0, 0]])
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1, -1, -1], [2, 2, 2, 2, 2, 2, 3, 3, -1, -1]])
    return ids, positions, doc_ids


def test_decoder_gives_the_masked_result_through_the_varlen_path(monkeypatch):
    torch.manual_seed(0)
    for preset in ("tiny-gpt2", "tiny-llama"):  # learned positions / RoPE with grouped KV heads
        model = Decoder(Config.from_preset(preset)).eval()
        ids, positions, doc_ids = _packed_batch()
        with monkeypatch.context() as m:
            m.setattr(decoder, "VARLEN_ATTENTION", False)
            masked = model(ids, positions=positions, doc_ids=doc_ids)
        with monkeypatch.context() as m:
            m.setattr(decoder, "varlen_attn", _reference_varlen)
            m.setattr(decoder, "_VARLEN_PARAMS", {"window_size"})
            m.setattr(Decoder, "_use_varlen", lambda *a: True)
            m.setattr(decoder, "_flash_varlen_device", lambda t: True)  # the GPU's branch
            varlen = model(ids, positions=positions, doc_ids=doc_ids)
        real = doc_ids >= 0
        torch.testing.assert_close(varlen[real], masked[real], atol=1e-5, rtol=1e-5)


def test_cpu_packed_rows_attend_per_example_with_the_masked_paths_values_and_gradients(
    monkeypatch,
):
    """On a CPU, packed rows run one causal SDPA call per example (grouped KV heads not
    repeated); logits and every gradient equal the block-diagonal masked path's."""
    torch.manual_seed(0)
    for preset in ("tiny-gpt2", "tiny-llama"):
        model = Decoder(Config.from_preset(preset))
        ids, positions, doc_ids = _packed_batch()
        assert model._use_varlen(ids, doc_ids, None, None)
        runs = []
        for per_span in (True, False):
            with monkeypatch.context() as m:
                m.setattr(decoder, "VARLEN_ATTENTION", per_span)
                model.zero_grad()
                logits = model(ids, positions=positions, doc_ids=doc_ids)
                logits[doc_ids >= 0].square().mean().backward()
                grads = {n: p.grad.clone() for n, p in model.named_parameters()}
                runs.append((logits.detach(), grads))
        (a, ga), (b, gb) = runs
        real = doc_ids >= 0
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
        for name in ga:
            torch.testing.assert_close(ga[name], gb[name], atol=1e-5, rtol=1e-4, msg=name)


def test_when_packed_rows_take_the_per_example_path():
    model = Decoder(Config.from_preset("tiny-gpt2"))
    ids, doc_ids = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    assert model._use_varlen(ids, doc_ids, None, None)  # a CPU: per-example SDPA calls
    assert not model._use_varlen(ids, None, None, None)  # not packed
    assert not model._use_varlen(ids, doc_ids, object(), None)  # generation with a KV cache
    assert not model._use_varlen(ids, doc_ids, None, torch.ones(1, 4))  # left padding
    windowed = Decoder(Config.from_preset("tiny-llama", sliding_window=4))
    assert not windowed._use_varlen(ids, doc_ids, None, None)  # its masks carry the windows
    dropout = Decoder(Config.from_preset("tiny-gpt2", dropout=0.1)).train()
    assert not dropout._use_varlen(ids, doc_ids, None, None)  # the kernel has no dropout
    compiled = Decoder(Config.from_preset("tiny-gpt2"))
    compiled.blocks[0].compile(backend="eager")  # regional compile: one graph, not a loop
    assert not compiled._use_varlen(ids, doc_ids, None, None)
