import pytest
import torch

from tunelab import load_model
from tunelab.models.config import Config
from tunelab.models.decoder import Decoder
from tunelab.models.loaders.hf import load_hf_folder, save_hf_gpt2
from tunelab.models.tokenizer import gpt2_tokenizer


def test_hf_gpt2_folder_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(1)
    model = Decoder(Config.from_preset("tiny-gpt2")).eval()
    save_hf_gpt2(model, tmp_path / "gpt2")
    loaded, tokenizer = load_model(str(tmp_path / "gpt2"))
    x = torch.randint(0, 50257, (2, 9))
    assert torch.equal(loaded(x), model(x))
    assert tokenizer.name == "gpt2"


def test_missing_folder_and_shape_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_hf_folder(tmp_path / "nope")
    model = Decoder(Config.from_preset("tiny-gpt2"))
    folder = save_hf_gpt2(model, tmp_path / "g")
    text = (folder / "config.json").read_text().replace('"n_embd": 64', '"n_embd": 128')
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor '.*' has shape .* implies"):
        load_hf_folder(folder)


def test_gpt2_tokenizer_round_trip_and_end_of_text():
    tok = gpt2_tokenizer()
    text = "Hello, wörld! 1234 — ünïcødé 🚀\n\ttabs"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.eos_id == tok.pad_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
