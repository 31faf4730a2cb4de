"""Varlen spans computed by the packing collate on the host: equal to the device path's.

`packed_spans(doc_ids)` reads the longest span back from the GPU in every forward; the collate
knows the spans already. The varlen kernel needs a GPU; here a per-span reference with its
signature stands in for it on the CPU (as in tests/models/test_varlen.py).
"""

from __future__ import annotations

import pytest
import torch

import tunelab.models.decoder as decoder
from tests.models.test_varlen import _reference_varlen
from tunelab.data.packing import collate_packed, row_spans
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder, PackedSpans, packed_spans
from tunelab.tasks.base import _forward_kwargs

PAD = 0


def _random_batches():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        lengths = torch.randint(1, 17, (n,), generator=gen).tolist()
        seqs = [torch.randint(1, 100, (k,), generator=gen).tolist() for k in lengths]
        for multiple in (1, 8):
            yield collate_packed(
                seqs, pad_id=PAD, max_length=16, pad_to_multiple_of=multiple, spans=True
            )


def test_collate_spans_equal_packed_spans_of_the_doc_ids():
    for batch in _random_batches():
        device = packed_spans(batch["doc_ids"])
        assert batch["cu_seqlens"].dtype == torch.int32
        assert batch["cu_seqlens"].tolist() == device.cu_seqlens.tolist()
        assert isinstance(batch["max_seqlen"], int) and batch["max_seqlen"] == device.max_len


def test_row_spans_count_padding_runs_as_spans():
    assert row_spans([[2, 3], [3, 1]], 6) == ([0, 2, 5, 6, 9, 10, 12], 3)
    assert row_spans([[4], [1, 3]], 4) == ([0, 4, 5, 8], 4)


def test_collate_without_spans_keeps_its_keys():
    batch = collate_packed([[5, 6, 7], [8, 9]], pad_id=PAD, max_length=8)
    assert set(batch) == {"input_ids", "targets", "positions", "doc_ids"}
    assert _forward_kwargs(batch)["spans"] is None


def test_forward_with_host_spans_equals_the_doc_ids_path(monkeypatch):
    seqs = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16, 17, 18, 19]]
    batch = collate_packed(seqs, pad_id=PAD, max_length=8, pad_to_multiple_of=4, spans=True)
    ids = batch["input_ids"]
    calls = []
    real_packed_spans = decoder.packed_spans

    def counting_packed_spans(doc_ids):
        calls.append(1)
        return real_packed_spans(doc_ids)

    torch.manual_seed(0)
    for preset in ("tiny-gpt2", "tiny-llama"):
        model = Decoder(Config.from_preset(preset)).eval()
        with monkeypatch.context() as m:
            m.setattr(decoder, "varlen_attn", _reference_varlen)
            m.setattr(decoder, "_VARLEN_PARAMS", {"window_size"})
            m.setattr(decoder, "packed_spans", counting_packed_spans)
            m.setattr(Decoder, "_use_varlen", lambda *a: True)
            from_doc_ids = model(ids, positions=batch["positions"], doc_ids=batch["doc_ids"])
            assert len(calls) == 1
            from_host = model(ids, **_forward_kwargs(batch))
            assert len(calls) == 1  # the host spans were used: no packed_spans(doc_ids)
        torch.testing.assert_close(from_host, from_doc_ids, atol=0, rtol=0)
        calls.clear()


def test_spans_that_do_not_cover_the_batch_are_refused(monkeypatch):
    batch = collate_packed([[5, 6, 7], [8, 9]], pad_id=PAD, max_length=8, spans=True)
    model = Decoder(Config.from_preset("tiny-gpt2")).eval()
    bad = PackedSpans(torch.tensor([0, 2, 4], dtype=torch.int32), 2)
    with monkeypatch.context() as m:
        m.setattr(decoder, "varlen_attn", _reference_varlen)
        m.setattr(decoder, "_VARLEN_PARAMS", {"window_size"})
        m.setattr(Decoder, "_use_varlen", lambda *a: True)
        with pytest.raises(ValueError, match=r"cover 4 tokens, the batch has 5"):
            model(batch["input_ids"], doc_ids=batch["doc_ids"], spans=bad)
