# artistid: `make demo` and `make test` are the two commands a new user needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: setup test-deps demo test lint bench bench-train bench-results bench-refusals bench-photos bench-recipes bench-int8 bench-serve bench-storage bench-spark clean

setup: $(STAMP)

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# What the tests need beyond Python: Java for Spark, Chromium for the page, Azurite for Azure Blob.
test-deps: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) scripts/install-test-deps.sh
	bash scripts/install-test-deps.sh
	touch $@

demo: setup
	$(BIN)/artistid demo

# The layering contracts (pyproject.toml [tool.importlinter]) and the type checker fail the run like a test.
test: setup test-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: setup
	$(BIN)/python bench/featurize.py

bench-train: setup
	$(BIN)/python bench/train.py

bench-results: setup
	$(BIN)/python bench/results.py

bench-refusals: setup
	$(BIN)/python bench/refusals.py

bench-photos: setup
	$(BIN)/python bench/photos.py

bench-recipes: setup
	$(BIN)/python bench/recipes.py

bench-int8: setup
	$(BIN)/python bench/int8.py

bench-serve: setup
	$(BIN)/python bench/serve.py

bench-storage: setup test-deps
	$(BIN)/python bench/storage.py

bench-spark: setup test-deps
	$(BIN)/python bench/spark.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
