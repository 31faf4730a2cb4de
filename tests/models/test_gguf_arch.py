"""GGUF beyond llama: tiny random models of each family written as llama.cpp writes them load
with the logits transformers gives for the same weights (F32: 1e-4), quantized types dequantize,
and the tokenizer and template come along."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from tests.models.gguf_fixtures import FAMILIES, hf_model, write_gguf
from tests.models.test_gguf import _tiny_vocab
from tunelab.models.loaders.gguf import load_gguf

IDS = torch.tensor([[3, 70, 100, 7, 250, 260, 9, 41, 42, 43, 44, 120]])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_equal_transformers(tmp_path, family) -> None:
    vocab = len(_tiny_vocab()[0])
    ref = hf_model(family, vocab)
    path = write_gguf(ref, family, tmp_path / f"{family}.gguf")
    model, tok = load_gguf(path)
    with torch.no_grad():
        expected = ref(IDS).logits
        got = model(IDS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model.cfg.extra["gguf"]["architecture"] == family.split("-")[0]
    assert tok.encode(" the") == [3 + 256 + 2]


@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_quantized_non_llama_weights_dequantize(tmp_path, qtype) -> None:
    from gguf import GGUFReader, GGUFWriter
    from gguf.quants import dequantize, quantize

    vocab = len(_tiny_vocab()[0])
    ref = hf_model("qwen3", vocab)
    f32 = write_gguf(ref, "qwen3", tmp_path / "f32.gguf")
    t = GGMLQuantizationType[qtype]
    # rewrite the 2-D tensors of the F32 file in `qtype`, as llama.cpp's quantizer would
    reader = GGUFReader(f32)
    out = GGUFWriter(str(tmp_path / f"{qtype}.gguf"), "qwen3")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        out.add_key_value(field.name, field.contents(), field.types[0], field.types[-1])
    for tensor in reader.tensors:
        arr = np.array(tensor.data).reshape([int(n) for n in reversed(tensor.shape)])
        if arr.ndim == 2:
            out.add_tensor(tensor.name, quantize(arr, t), raw_dtype=t)
        else:
            out.add_tensor(tensor.name, arr)
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()
    model, _ = load_gguf(tmp_path / f"{qtype}.gguf")
    w = ref.model.layers[1].mlp.down_proj.weight.detach().numpy()
    expected = dequantize(quantize(w, t), t).reshape(w.shape)
    np.testing.assert_array_equal(model.blocks[1].mlp.down.weight.detach().numpy(), expected)


def test_gguf_template_is_the_model_style(tmp_path) -> None:
    from tests.models.sp_fixtures import CHATML_TEMPLATE
    from tunelab.data.prompts import get_style
    from tunelab.data.records import Record

    vocab = len(_tiny_vocab()[0])
    path = write_gguf(hf_model("qwen2", vocab), "qwen2", tmp_path / "t.gguf", CHATML_TEMPLATE)
    _, tok = load_gguf(path)
    assert tok.chat_template == CHATML_TEMPLATE
    style = get_style("model", tok)
    assert style.prompt(Record(instruction="hi")) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_unknown_rope_freqs_are_refused(tmp_path) -> None:
    from gguf import GGUFReader

    vocab = len(_tiny_vocab()[0])
    path = write_gguf(hf_model("llama-llama3", vocab), "llama-llama3", tmp_path / "r.gguf")
    data = bytearray(path.read_bytes())
    (tensor,) = [t for t in GGUFReader(path).tensors if t.name == "rope_freqs.weight"]
    start = int(tensor.data_offset)
    data[start : start + 4] = np.float32(3.0).tobytes()  # a factor no released model uses
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="rope_freqs.*matches no released Llama 3") as err:
        load_gguf(bad)
    assert "\n" not in str(err.value)


PRE_TEXTS = [
    "I'M here, you'LL see: it's 1234567 and 3.14159!",
    "  leading\r\n\r\n  lines\n\n\ttabs   end  ",
    "日本語 🤗 naïve café",
    "the theatre in a tin<|im_end|>",
]


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_gguf_pretokenizers_equal_the_families_tokenizer_json(tmp_path, pre) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    from tests.models.test_gguf import MERGES, SPECIALS
    from tunelab.models.loaders.gguf_tokenizer import GGUF_PRE_REGEX

    tokens, _ = _tiny_vocab()
    path = write_gguf(hf_model("qwen2", len(tokens)), "qwen2", tmp_path / "p.gguf", pre=pre)
    _, tok = load_gguf(path)
    vocab = {t: i for i, t in enumerate(tokens)}  # specials keep their ids 0-2
    ref = Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in MERGES]))
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GGUF_PRE_REGEX[pre]), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    ref.decoder = decoders.ByteLevel()
    ref.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    for text in PRE_TEXTS:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids, text


@pytest.mark.parametrize(("family", "kind"), [("gemma3", "gemma"), ("phi3", "phi3")])
def test_sentencepiece_gguf_ids_and_logits_equal_the_folder(tmp_path, family, kind) -> None:
    """A Gemma 3 / Phi-3 GGUF with its SentencePiece vocabulary: the text's ids equal the
    folder's tokenizer.json, and the logits on them equal transformers' (F32: 1e-4)."""
    from tokenizers import Tokenizer as RustTokenizer

    from tests.models.gguf_fixtures import spm_vocab_size
    from tests.models.sp_fixtures import sp_folder

    ref = hf_model(family, spm_vocab_size(kind))
    model, tok = load_gguf(write_gguf(ref, family, tmp_path / "m.gguf", spm=kind))
    folder = RustTokenizer.from_file(str(sp_folder(kind, tmp_path / "tok") / "tokenizer.json"))
    text = "The quick brown fox: 12345 naïve 日本語 🤗\n\tdef f(x): return x"
    ids = tok.encode(text)
    assert ids == folder.encode(text, add_special_tokens=False).ids and len(ids) > 10
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits
        got = model(torch.tensor([ids]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
