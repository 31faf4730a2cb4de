"""Tokenizer kinds (below the file-format loaders): byte-level BPE as tiktoken encodings
(`byte_level`), SentencePiece-style vocabularies through the `tokenizers` library (`library`)."""
