import pytest
import torch

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder, KVCache
from tunelab.models.generation import generate


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def model(request):
    torch.manual_seed(0)
    m = Decoder(Config.from_preset(request.param)).eval()
    # Larger weights than the init so greedy continuations vary between positions.
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(8)
    return m


def test_logits_shape(model):
    x = torch.randint(0, 1000, (2, 7))
    assert model(x).shape == (2, 7, model.cfg.vocab_size)


def test_kv_cache_matches_full_forward(model):
    x = torch.randint(0, 1000, (2, 12))
    full = model(x)
    cache = KVCache(model.cfg, 2, 12, "cpu", torch.float32)
    parts = [
        model(x[:, :5], cache=cache),
        model(x[:, 5:9], cache=cache),
        model(x[:, 9:], cache=cache),
    ]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4)


def test_packed_rows_equal_separate_sequences(model):
    a, b = torch.randint(0, 1000, (1, 5)), torch.randint(0, 1000, (1, 4))
    packed = torch.cat([a, b], 1)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    doc_ids = torch.tensor([[0] * 5 + [1] * 4])
    out = model(packed, positions=positions, doc_ids=doc_ids)
    assert torch.allclose(out[:, :5], model(a), atol=1e-4)
    assert torch.allclose(out[:, 5:], model(b), atol=1e-4)


def test_batched_left_padded_generation_equals_one_by_one(model):
    prompts = [[11, 12, 13, 14, 15, 16], [21, 22], [31, 32, 33]]
    batched = generate(model, prompts, max_new_tokens=8)
    for prompt, got in zip(prompts, batched, strict=True):
        ids = list(prompt)
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        assert got == ids[len(prompt) :]
    assert len(set(map(tuple, batched))) > 1


def test_generation_stops_at_stop_ids(model):
    first = generate(model, [[5, 6, 7]], max_new_tokens=8)[0]
    k = next(i for i, t in enumerate(first) if i > 0 and t not in first[:i])
    assert generate(model, [[5, 6, 7]], max_new_tokens=8, stop_ids=[first[k]])[0] == first[:k]


def test_generation_gives_back_train_mode_on_every_exit(model):
    model.train()
    assert generate(model, [[5, 6, 7]], max_new_tokens=0) == [[]]  # the early return
    assert model.training

    def cancel(token):
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        generate(model, [[5, 6, 7]], max_new_tokens=4, on_token=cancel)
    assert model.training
    model.eval()
    generate(model, [[5, 6, 7]], max_new_tokens=2)
    assert not model.training


def test_presets_and_config_errors():
    assert Decoder(Config.from_preset("gpt2-124m")).num_parameters == 124_439_808
    with pytest.raises(KeyError, match="unknown model preset 'gpt5'"):
        Config.from_preset("gpt5")
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        Config(n_head=4, n_kv_head=3, n_embd=64)
