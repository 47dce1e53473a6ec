# One command each: `make dev` runs it, `make test` tests it. Both work from a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: dev test lint services install schema bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

dev: install
	$(BIN)/gemini-graphql dev

services:
	@.ci/services

test: install services
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

bench: install services
	$(BIN)/python -m bench.run

schema: install
	$(BIN)/gemini-graphql export-schema --output schema.graphql

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
