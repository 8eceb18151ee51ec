# Two entry points for people: `make simulate` (the main job on its built-in default)
# and `make test` (lint, types and the test suite). Both set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: simulate test lint smoke bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

simulate: $(VENV)/.installed
	$(BIN)/spotguard simulate

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -m "not guest"

smoke: $(VENV)/.installed
	$(BIN)/pytest -m guest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
