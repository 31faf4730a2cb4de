"""Thin LightningModules: wire a model, a pure loss function and logging."""
