# mlxtune — the targets a newcomer needs: `make demo` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-graph demo-structured demo-vision test test-fast lint format bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/install-system-deps.sh
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,$${MLXTUNE_BACKEND:-cpu}]"  # cpu, cuda12 or cuda13
	touch $(STAMP)

demo: install   ## the whole lifecycle on the shipped data and a freshly built tiny model
	bash scripts/demo.sh

demo-graph: install   ## training data from a code graph over Bolt: quality, augmentation, train, evaluate
	bash scripts/demo_graph.sh

demo-structured: install   ## JSON answers: format compliance of base, adapter, adapter + constrained decoding
	bash scripts/demo_structured.sh

demo-vision: install   ## a tiny vision-language model on synthetic shapes: train, evaluate, serve an image
	bash scripts/demo_vision.sh

test: install   ## unit, CLI and end-to-end tests (real mlx-lm on a tiny model)
	$(BIN)/pytest

test-fast: install   ## skip the end-to-end tests
	$(BIN)/pytest -m "not e2e and not slow"

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix src tests scripts
	$(BIN)/ruff format src tests scripts

bench: install   ## quick benchmark suite on the tiny and small presets, beside raw mlx-lm
	bash scripts/bench.sh

docs: install   ## regenerate docs/cli.md (Typer's docs command), docs/config.schema.json and src/mlxtune/cli_help.json
	$(BIN)/python scripts/gen_cli_docs.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
