"""SentencePiece-style tokenizer folders built in tests (hub files cannot be downloaded here).

`sp_folder(kind, dir)` trains a small BPE with byte fallback and "▁" spaces on a fixed corpus
with the `tokenizers` library, turns it into the pieces and scores of a SentencePiece model
(`sp_pieces`, what llama.cpp's converter writes to GGUF) and back into a tokenizer.json as
transformers converts such a model (merges from the scores), laid out as the real files of that
family are laid out (Gemma 3: Replace(" ", "▁") normalizer; Phi-3: Prepend("▁") + Replace
normalizer, rstrip chat markers and `</s>`; Llama 2 / Mistral: Metaspace pre-tokenizer;
LlamaTokenizer class for both) and writes tokenizer.json and tokenizer_config.json (with the
family's chat template) into `dir`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 40))\n",
    "Numbers 1234567890 and 3.14159, dates 2024-05-01.",
    "Über straße naïve café résumé — «quotes» and ‘single’.",
    "日本語のテキストと中文文本。한국어도 조금.",
    "Emoji 🤗🚀✨ and symbols ©®™ ∑∫√.",
    "Tabs\tand   runs of   spaces\n\n\nnew lines.",
    "Instruction: answer the question briefly. Response: the answer is forty-two.",
]

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = "
    "messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}"
    "{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + "
    "(first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}"
    "{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

SPECIALS = {
    "gemma": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
    "llama2": ["<unk>", "<s>", "</s>"],
    "phi3": [
        "<unk>",
        "<s>",
        "</s>",
        "<|endoftext|>",
        "<|assistant|>",
        "<|end|>",
        "<|system|>",
        "<|user|>",
    ],
}


@cache
def _trained() -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=420, show_progress=False, special_tokens=["<unk>"])
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def sp_pieces(kind: str) -> tuple[list[str], list[float], list[int]]:
    """The pieces of a `tokenizer.model` of a family kind, with SentencePiece's scores and types.

    Laid out as SentencePiece's BPE trainer lays them out: special pieces (type 3, `<unk>` 2),
    the 256 byte pieces (type 6), then the learned pieces and characters (type 1) with score
    -(their order), specials and bytes 0.
    """
    specials = SPECIALS[kind]
    trained: dict[str, int] = json.loads(_trained())["model"]["vocab"]
    pieces = list(specials) + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [t for t in sorted(trained, key=trained.get) if t not in pieces]
    n_fixed = len(specials) + 256
    scores = [0.0] * n_fixed + [-float(i) for i in range(len(pieces) - n_fixed)]
    types = [2 if s == "<unk>" else 3 for s in specials] + [6] * 256
    types += [1] * (len(pieces) - n_fixed)
    return pieces, scores, types


def sp_tokenizer(kind: str) -> Tokenizer:
    """The library tokenizer of a family kind ("gemma", "llama2" or "phi3"), as transformers
    converts a SentencePiece BPE model: every split of every piece a merge, by piece score."""
    from transformers.tokenization_utils_base import generate_merges

    pieces, scores, _ = sp_pieces(kind)
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = generate_merges(vocab, dict(zip(pieces, scores, strict=True)))
    model = models.BPE(
        vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True
    )
    tok = Tokenizer(model)
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if kind == "gemma":
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous", invert=False)
        tok.decoder = decoders.Sequence(decode)
    elif kind == "phi3":  # Phi-3's own tokenizer.json: a prefix on every fragment, no pre-tokenizer
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        tok.decoder = decoders.Sequence([*decode, decoders.Strip(content=" ", left=1)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False
        )
        tok.decoder = decoders.Sequence([*decode, decoders.Strip(content=" ", left=1)])
    rstrip = kind == "phi3"
    tok.add_special_tokens(
        [
            AddedToken(
                s,
                special=True,
                normalized=False,
                rstrip=rstrip and s not in ("<unk>", "<s>", "<|endoftext|>"),
            )
            for s in SPECIALS[kind]
        ]
    )
    return tok


def sp_folder(kind: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    sp_tokenizer(kind).save(str(directory / "tokenizer.json"))
    if kind == "gemma":
        config = {
            "tokenizer_class": "GemmaTokenizer",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "chat_template": GEMMA_TEMPLATE,
        }
    else:
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "unk_token": "<unk>",
            "eos_token": "<|endoftext|>" if kind == "phi3" else "</s>",
            "legacy": False,
            "add_bos_token": kind != "phi3",
            "chat_template": PHI3_TEMPLATE if kind == "phi3" else LLAMA2_TEMPLATE,
        }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


# -- byte-level BPE folders (ChatML / Llama 3 style), for the tiktoken kind -------------------

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_GENERATION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Exercises the environment: namespace, loop controls, tojson, strftime_now, trim/lstrip blocks.
FEATURES_TEMPLATE = """{%- set ns = namespace(n=0) -%}
{{ bos_token }}Today: {{ strftime_now('%Y-%m') }}
{% for message in messages %}
    {% if message['role'] == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
    <{{ message['role'] }} n={{ ns.n }}>{{ message['content'] }}{{ eos_token }}
    {% if ns.n > 5 %}{% break %}{% endif %}
{% endfor %}
meta={{ {'n': ns.n, 'é': 'ü'} | tojson }}
{% if add_generation_prompt %}<assistant>{% endif %}"""

BYTE_SPECIALS = {
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama3": [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ],
}


def byte_level_folder(kind: str, directory: Path, template: str | None = None) -> Path:
    """A byte-level BPE tokenizer.json (trained here) with ChatML or Llama 3 specials."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in BYTE_SPECIALS[kind]]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if kind == "chatml":
        config = {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "chat_template": template or CHATML_TEMPLATE,
        }
    else:
        config = {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "chat_template": template or LLAMA3_TEMPLATE,
        }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory
