"""Token streaming for tunelab.serve: the per-token callback of `generate`, incremental UTF-8
decoding, stop strings held back across pieces, and both protocols streaming as tokens arrive."""

from __future__ import annotations

import ollama
import openai
import pytest
import torch

from tests.serve_support import Gate
from tunelab.models import load_pretrained
from tunelab.models.generation import generate, sample_next
from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve.textstream import TextStream

PROMPT = [464, 2068, 7586, 21831]


@pytest.fixture(scope="module")
def loaded():
    return load_pretrained("tiny-gpt2", seed=1)


def test_on_token_sees_every_token_and_can_stop(loaded):
    full = generate(loaded.model, [PROMPT], max_new_tokens=6)[0]
    seen: list[int] = []
    assert generate(loaded.model, [PROMPT], max_new_tokens=6, on_token=seen.append)[0] == full
    assert seen == full and len(full) == 6
    # Returning True stops right after that token: 3 tokens generated, the same 3.
    seen.clear()
    out = generate(
        loaded.model,
        [PROMPT],
        max_new_tokens=6,
        on_token=lambda t: seen.append(t) or len(seen) == 3,
    )[0]
    assert out == seen == full[:3]
    with pytest.raises(ValueError, match="on_token streams one prompt, got 2"):
        generate(loaded.model, [PROMPT, PROMPT], on_token=seen.append)


def test_tiny_temperature_samples_the_argmax_without_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0], [50.0, -4.0, 49.0]])
    for temperature in (1e-300, 5e-324, 1e-30):
        gen = torch.Generator().manual_seed(0)
        assert sample_next(logits, temperature, generator=gen).tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    assert sample_next(logits, 1e-300, top_k=2, top_p=0.5, generator=gen).tolist() == [1, 0]


# --- incremental decoding ---------------------------------------------------------------------
def _stream_all(tok, ids, stops=()):
    stream = TextStream(tok.decode, stops)
    pieces = [stream.feed(i) for i in ids]
    pieces.append(stream.finish())
    return [p for p in pieces if p], stream


def test_characters_split_across_tokens_are_never_broken(loaded):
    tok = loaded.tokenizer
    text = "Grüße aus 日本語 🙂 café"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # the tokens do split characters
    pieces, stream = _stream_all(tok, ids)
    assert len(pieces) > 5 and not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == stream.text == text


def test_streamed_text_equals_the_decoded_answer_for_any_ids(loaded):
    """Random ids (lone UTF-8 continuation bytes included): the pieces join to decode().strip()."""
    tok = loaded.tokenizer
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, tok.vocab_size - 1, (40,), generator=gen).tolist()
        ids[5:5] = tok.encode(" 🙂 ")  # a multi-byte character in the middle
        pieces, stream = _stream_all(tok, ids)
        assert "".join(pieces) == stream.text == tok.decode(ids).strip()


def test_stop_strings_are_held_back_until_known(loaded):
    tok = loaded.tokenizer
    stream = TextStream(tok.decode, ["###", "<|im_end|>"])
    fed = [stream.feed(i) for i in tok.encode(" Hello ##x## there #")]
    assert "".join(fed) == "Hello ##x## there"  # the trailing " #" may begin "###": held
    assert stream.feed(tok.encode("#")[0]) == "" and not stream.stopped
    assert stream.feed(tok.encode("# tail")[0]) == "" and stream.stopped
    assert stream.finish() == "" and stream.text == "Hello ##x## there"
    pieces, stream = _stream_all(tok, tok.encode("a<|im_end|>b"), ["<|im_end|>"])
    assert pieces == ["a"] and stream.stopped


# --- streaming over HTTP ----------------------------------------------------------------------
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def served(loaded):
    app = create_app(loaded, ServeSettings(model_name="tiny", max_new_tokens=12))
    with BackgroundServer(app) as server:
        yield server, app.state.chat_model


def test_both_protocols_stream_tokens_while_they_are_generated(served):
    server, chat_model = served
    expected = chat_model.chat(MESSAGES, max_new_tokens=12).text
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    for protocol in ("openai", "ollama"):
        with Gate(chat_model.loaded.model, after=3) as gate:
            if protocol == "openai":
                chunks = iter(
                    client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
                )
                texts = (c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                parts = ollama.Client(host=server.url).chat("tiny", MESSAGES, stream=True)
                texts = (p.message.content for p in parts)
            first = next(t for t in texts if t)
            # The first piece arrived while the model cannot finish: it is held before its 4th
            # token until the gate opens.
            assert gate.reached.wait(30) and gate.calls == 4
            gate.open()
            assert first + "".join(texts) == expected, protocol


def test_multi_byte_text_streams_whole_characters(served, monkeypatch):
    """A model answering 'Grüße 日本語 🙂' token by token: every streamed piece is whole text."""
    server, chat_model = served
    answer = "Grüße 日本語 🙂"
    ids = chat_model.loaded.tokenizer.encode(answer)

    def scripted(model, prompts, max_new_tokens, on_token=None, **kwargs):
        for i in ids:
            on_token(i)
        return [list(ids)]

    monkeypatch.setattr("tunelab.serve.chat.generate", scripted)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    chunks = client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
    openai_pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    parts = ollama.Client(host=server.url).chat("tiny", MESSAGES, stream=True)
    ollama_pieces = [p.message.content for p in parts if p.message.content]
    for pieces in (openai_pieces, ollama_pieces):
        assert len(pieces) > 3 and "".join(pieces) == answer
        assert not any("\ufffd" in p for p in pieces)
