# vss — the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vss-installed
# DeepSpeed compiles its CPU ops (cpu_adam, shm_comm) on first use (~75 s): keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export DS_ACCELERATOR ?= cpu

.PHONY: install demo test test-unit lint format clean help

help:
	@echo "make install   create .venv and install vss with its pinned stack"
	@echo "make demo      run the whole pipeline on the embedded default (tiny model, CPU)"
	@echo "make test      run the test suite (unit + integration on CPU)"
	@echo "make lint      ruff: lint, import order and format check (what CI runs first)"
	@echo "make format    ruff: fix import order and reformat the tree"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/vss demo

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

test-unit: install
	$(BIN)/pytest -m "not integration"

clean:
	rm -rf .vss .pytest_cache
