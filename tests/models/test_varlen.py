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


def test_decoder_gives_the_masked_result_through_the_varlen_path(monkeypatch):
    torch.manual_seed(0)
    for preset in ("tiny-gpt2", "tiny-llama"):  # learned positions / RoPE with grouped KV heads
        model = Decoder(Config.from_preset(preset)).eval()
        ids = torch.randint(0, 1000, (2, 10))
        positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 0, 0], [0, 1, 2, 3, 4, 5, 0, 1, 0, 0]])
        doc_ids = torch.tensor(
            [[0, 0, 0, 1, 1, 1, 1, -1, -1, -1], [2, 2, 2, 2, 2, 2, 3, 3, -1, -1]]
        )
        masked = model(ids, positions=positions, doc_ids=doc_ids)
        with monkeypatch.context() as m:
            m.setattr(decoder, "varlen_attn", _reference_varlen)
            m.setattr(decoder, "_VARLEN_PARAMS", {"window_size"})
            m.setattr(Decoder, "_use_varlen", lambda *a: True)
            varlen = model(ids, positions=positions, doc_ids=doc_ids)
        real = doc_ids >= 0
        torch.testing.assert_close(varlen[real], masked[real], atol=1e-5, rtol=1e-5)


def test_varlen_is_not_used_on_a_cpu_or_in_fp32():
    model = Decoder(Config.from_preset("tiny-gpt2"))
    ids, doc_ids = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    assert not model._use_varlen(ids, doc_ids, None, None)
