"""`task.compile=true`: regional torch.compile of the decoder blocks, same losses as eager.

The fast tests use Dynamo with the eager backend (graph capture without code generation: exact
equality, and a count of the graphs compiled across packed widths); the slow one runs Inductor's
generated C++ code for a few optimizer steps and compares the losses to a stated tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from tunelab.data.packing import collate_packed
from tunelab.models.compile import compile_blocks, compiled_blocks
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.tokenizer import gpt2_tokenizer
from tunelab.tasks.base import next_token_loss
from tunelab.tasks.sft import SFTTask


def _batches(widths=(5, 9, 13, 17, 30)):
    for n in widths:  # packed rows of a new width every step
        seqs = [list(range(1, n)), list(range(3, 3 + n // 2)), [7, 8, 9]]
        yield collate_packed(seqs, pad_id=0, max_length=64, spans=True)


def _train(model: Decoder, steps: int = 3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for batch in list(_batches())[:steps]:
        loss, _ = next_token_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _pair(preset: str) -> tuple[Decoder, Decoder]:
    torch.manual_seed(0)
    eager = Decoder(Config.from_preset(preset)).train()
    other = Decoder(Config.from_preset(preset)).train()
    other.load_state_dict(eager.state_dict())
    return eager, other


def test_task_compile_true_compiles_each_block_in_place():
    model = Decoder(Config.from_preset("tiny-gpt2"))
    keys = list(model.state_dict())
    assert compiled_blocks(model) == 0
    task = SFTTask(model, gpt2_tokenizer(), "alpaca", compile=True)
    assert compiled_blocks(task.model) == model.cfg.n_layer
    assert list(task.model.state_dict()) == keys  # checkpoints unchanged


def test_compiled_blocks_give_the_eager_losses_and_one_graph_for_all_widths():
    torch._dynamo.reset()
    eager, compiled = _pair("tiny-llama")  # RoPE, grouped KV heads
    counter = CompileCounter()
    compile_blocks(compiled, backend=counter)
    assert _train(compiled, steps=3) == _train(eager, steps=3)  # exact
    # one graph, shared by every block and every packed width (no recompiles)
    assert counter.frame_count == 1
    torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_compiled_sft_steps_match_eager():
    torch._dynamo.reset()
    eager, compiled = _pair("tiny-llama")
    compile_blocks(compiled)  # Inductor: generated C++ kernels, reductions reordered
    got, want = _train(compiled, steps=3), _train(eager, steps=3)
    # fp32: float rounding only; 1e-5 relative is ~100x the differences seen on the CPU
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
