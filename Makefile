# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_COMPILE := uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --generate-hashes -q
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1

.PHONY: install test lint typecheck pytest demo lock bench clean test-llm

$(BIN)/.installed: pyproject.toml requirements.lock requirements-nodeps.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements.lock -r requirements-nodeps.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed

lint: install
	$(BIN)/ruff format --check server tests tests_llm benchmarks scripts/local_llm.py
	$(BIN)/ruff check server tests tests_llm benchmarks scripts/local_llm.py

typecheck: install
	$(BIN)/pyright

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

demo: install
	$(BIN)/memalign-mcp demo

# A real (tiny) model on this machine: llama.cpp serving SmolLM2-135M-Instruct, in a venv of its own outside the
# project's, pinned with hashes. It runs the demo and a 20-item FeedbackQA eval through it (completion and
# well-formed results, not quality). Not part of `make test`: it downloads 127 MB once and takes minutes.
LLM_VENV ?= $(HOME)/.cache/memalign-mcp/llm-venv

$(LLM_VENV)/.installed: requirements-llm.lock
	$(PYTHON) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements-llm.lock
	touch $@

test-llm: install $(LLM_VENV)/.installed
	MEMALIGN_LLM_PYTHON=$(LLM_VENV)/bin/python $(BIN)/pytest -q -s -p no:cacheprovider tests_llm

# Regenerate the lock files (needs network and `uv`); review the diff before committing.
lock:
	$(UV_COMPILE) pyproject.toml requirements.in --extra dev -o requirements.lock
	$(UV_COMPILE) --no-deps requirements-extra.in -o requirements-nodeps.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
