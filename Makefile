# Common commands. `make demo` runs the main job; `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The pipeline's jobs run `modalprompt` from PATH: the project's environment.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test test-slow test-slurm test-browser test-all lint format bench shipped-base schema ui clean \
	docs docs-reference rulegraph

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,deepspeed]'
	touch $@

demo: setup  ## the whole Snakemake DAG on the embedded default (this machine, profiles/default)
	$(BIN)/snakemake

test: setup  ## fast unit tests (the default tier)
	$(BIN)/python -m pytest

test-slow: setup  ## end-to-end tier: the CLI in subprocesses, the real Snakemake, MLflow, 2 gloo ranks
	$(BIN)/python -m pytest -m slow

SLURM_STATE ?= /tmp/modalprompt-slurm
# The Slurm and browser tiers set MODALPROMPT_REQUIRE_TIERS: a missing cluster or browser fails them (no skip).
test-slurm: setup  ## Slurm tier: starts a real single-node cluster (.ci/slurm, needs root and apt), runs, stops it
	bash .ci/slurm/install.sh
	bash .ci/slurm/start.sh $(SLURM_STATE)
	. $(SLURM_STATE)/env.sh && MODALPROMPT_REQUIRE_TIERS=slurm $(BIN)/python -m pytest -m slurm; status=$$?; \
		bash .ci/slurm/stop.sh $(SLURM_STATE); exit $$status

test-browser: setup  ## browser tier: the MLflow UI in Debian's headless Chromium (installs it; screenshots in test-artifacts/)
	bash .ci/browser/install.sh
	MODALPROMPT_REQUIRE_TIERS=browser $(BIN)/python -m pytest -m browser

test-all: test test-slow

lint: setup
	$(BIN)/ruff check modalprompt tests benchmarks docs examples
	$(BIN)/ruff format --check modalprompt tests benchmarks docs examples
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff check --fix modalprompt tests benchmarks docs examples
	$(BIN)/ruff format modalprompt tests benchmarks docs examples
	$(BIN)/snakefmt workflow

schema: setup  ## regenerate workflow/schemas/config.schema.yaml from modalprompt/config.py
	$(BIN)/modalprompt schema > workflow/schemas/config.schema.yaml

docs: setup  ## the documentation site (mkdocs.yml, docs/) into site/; fails on any warning
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-reference: setup  ## regenerate docs/configuration.md and every generated table of README.md and docs/
	$(BIN)/python docs/gen_config_reference.py
	$(BIN)/python benchmarks/tables.py

rulegraph: setup  ## docs/images/rulegraph.svg: Snakemake's rule graph of config.yaml, drawn by graphviz's dot
	$(BIN)/snakemake --rulegraph > docs/images/rulegraph.dot
	dot -Tsvg docs/images/rulegraph.dot > docs/images/rulegraph.svg
	rm docs/images/rulegraph.dot

ui: setup  ## the MLflow UI on http://127.0.0.1:5000 over config.yaml's tracking store
	$(BIN)/modalprompt ui --config config.yaml

shipped-base: setup  ## pretrain the mini-CoIN base from config.yaml and ship it (modalprompt/bench/minicoin_base)
	$(BIN)/modalprompt ship-base --config config.yaml

bench: setup  ## time the core code paths on this machine (prints the table; --out FILE writes a results file)
	$(BIN)/python benchmarks/core.py

clean:
	rm -rf results models data .snakemake .pytest_cache test-artifacts
