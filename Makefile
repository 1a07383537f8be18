# Sotto — one command to run, one to test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/homeserver.yaml
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test lint check venv bench bench-quick clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

## Start the homeserver on SQLite (writes config/homeserver.yaml on first run).
run: $(STAMP)
	@test -f $(CONFIG) || $(BIN)/sotto generate-config --config $(CONFIG)
	$(BIN)/sotto migrate --config $(CONFIG)
	$(BIN)/sotto serve --config $(CONFIG)

## Run every test (with the benchmark harness's extras: a bounded run of it is a test), in two
## lanes side by side: the PostgreSQL re-runs beside everything else (tests/run_all.py).
test: $(BENCH_STAMP)
	$(BIN)/python -m tests.run_all

## ruff + mypy --strict.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	@touch $(BENCH_STAMP)

## Benchmarks side by side with Synapse (installed once under .cache/); see bench/README.md.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

## The same scenarios at smaller sizes: finishes in minutes.
bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
