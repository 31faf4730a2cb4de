"""Data: records, prompt styles, datasets, collators and embedded data."""
