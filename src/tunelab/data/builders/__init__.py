"""Builders that regenerate the files under `tunelab/data/embedded/` from offline sources."""
