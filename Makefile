# The two commands: `make demo` and `make test`. Both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
BUF := node_modules/.bin/buf
PYTEST_ARGS ?=

.PHONY: install demo test lint typecheck proto proto-check pytest bench bench-reconcile bench-obligations soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

$(BUF): package.json
	npm install --no-audit --no-fund --silent
	touch $(BUF)

install: $(STAMP) $(BUF)

demo: install
	$(VENV)/bin/cccfed demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(BUF) lint proto

typecheck: install
	$(VENV)/bin/mypy federation node tests bench

proto: install
	scripts/gen_proto.sh

proto-check: install
	scripts/gen_proto.sh --check

pytest: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck proto-check pytest

bench: install
	$(VENV)/bin/python bench/delivery.py $(BENCH_ARGS)

bench-reconcile: install
	$(VENV)/bin/python bench/reconcile.py $(BENCH_ARGS)

bench-obligations: install
	$(VENV)/bin/python bench/obligations.py $(BENCH_ARGS)

# Four real nodes under SIGKILL restarts and link cuts, about 3 minutes (SOAK_ARGS="--seconds 1800").
soak: install
	$(VENV)/bin/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
