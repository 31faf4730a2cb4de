"""Small helpers: config printing, instantiation, run-folder files."""
