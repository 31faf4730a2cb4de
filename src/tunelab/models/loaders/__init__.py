"""Weight loaders: Hugging Face folders, GGUF files and tunelab checkpoints."""
