# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINTED := services tests $(wildcard benchmarks)

.PHONY: install demo test lint typecheck bench clean stack-up stack-down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/concord demo

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy services/concord

bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py

stack-up: $(STAMP)
	$(BIN)/concord stack up

stack-down: $(STAMP)
	$(BIN)/concord stack down

clean:
	rm -rf $(VENV) .concord .pytest_cache .mypy_cache .ruff_cache
