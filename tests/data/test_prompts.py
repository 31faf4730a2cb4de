import pytest

from tunelab.data.prompts import get_style
from tunelab.data.records import Record

SEED_EXAMPLE = Record(
    instruction="Identify the correct spelling of the following word.",
    input="Ocassion",
    output="The correct spelling is 'Occasion.'",
)


def test_alpaca_prompt_is_the_seed_text_byte_for_byte():
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nIdentify the correct spelling of the "
        "following word.\n\n### Input:\nOcassion\n\n### Response:\n"
    )
    assert get_style("alpaca").prompt(SEED_EXAMPLE) == expected


def test_alpaca_omits_the_input_section_when_input_is_empty():
    text = get_style("alpaca").prompt(Record(instruction="Name a prime.", input=""))
    assert "### Input:" not in text
    assert text.endswith("### Instruction:\nName a prime.\n\n### Response:\n")


def test_chat_styles():
    r = Record(instruction="Hi", input="there", history=[("a", "b")], system="Be brief.")
    assert get_style("phi3").prompt(r) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\na<|end|>\n<|assistant|>\nb<|end|>\n"
        "<|user|>\nHi\n\nthere<|end|>\n<|assistant|>\n"
    )
    assert get_style("chatml").prompt(Record(instruction="Q")) == (
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        get_style("smollm2")
        .prompt(Record(instruction="Q"))
        .startswith(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
            "<|im_end|>\n"
        )
    )


def test_unknown_prompt_style_names_it():
    with pytest.raises(KeyError, match="unknown prompt style 'vicuna'"):
        get_style("vicuna")
