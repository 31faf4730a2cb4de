"""Side-by-side benchmarks of tunelab against its peers (see benchmarks/README.md)."""
