"""Models: one decoder class, presets, loaders, tokenizers and generation."""

from tunelab.models.api import LoadedModel, load_model, load_pretrained
from tunelab.models.config import PRESETS, Config
from tunelab.models.decoder import Decoder

__all__ = ["PRESETS", "Config", "Decoder", "LoadedModel", "load_model", "load_pretrained"]
