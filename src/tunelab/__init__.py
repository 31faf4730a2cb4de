"""tunelab: LLM post-training experiments on Lightning and Hydra."""

from tunelab.models import Config, Decoder, load_model, load_pretrained

__all__ = ["Config", "Decoder", "load_model", "load_pretrained"]
__version__ = "0.1.0"
