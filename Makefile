# Two commands set everything up on a fresh machine:
#   make demo   -> creates .venv, installs torch 2.13.0 (CPU) and everylabel, runs the demo
#   make test   -> same environment plus test extras (MONAI for parity tests), runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: env test-env demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

env: $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .

test-env: env
	$(BIN)/pip install --quiet -e ".[test]"

demo: env
	$(BIN)/everylabel demo

test: test-env
	$(BIN)/python -m pytest -q

lint: test-env
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
