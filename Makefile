# Common commands. `make demo` runs the main job; `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow test-all lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup  ## tiny local models + toy tasks, then all stages and their evaluations on CPU
	$(BIN)/modalprompt make-tiny --models models/tiny --data data/toy
	$(BIN)/modalprompt run --config config.yaml --results results/tiny-demo

test: setup  ## fast unit tests (the default tier)
	$(BIN)/python -m pytest

test-slow: setup  ## end-to-end tier: the CLI in subprocesses
	$(BIN)/python -m pytest -m slow

test-all: test test-slow

lint: setup
	$(BIN)/ruff check modalprompt tests benchmarks
	$(BIN)/ruff format --check modalprompt tests benchmarks

format: setup
	$(BIN)/ruff check --fix modalprompt tests benchmarks
	$(BIN)/ruff format modalprompt tests benchmarks

bench: setup
	$(BIN)/python benchmarks/core.py --out benchmarks/results/core.json

clean:
	rm -rf results models/tiny data/toy .pytest_cache
