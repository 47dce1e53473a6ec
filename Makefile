# One command each: `make dev` runs it, `make test` tests it. Both work from a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Where `gemini-graphql dev` keeps its SQLite database (app/dev.py); `make clean` keeps it.
DEV_DATA := .gemini-graphql

.PHONY: dev test lint services install schema bench collection clean clean-dev-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,test]'
	touch $@

install: $(VENV)/.installed

# HOST and PORT reach it from the environment or the command line: `PORT=8001 make dev`.
dev: install
	$(BIN)/gemini-graphql dev

services:
	@.ci/services

test: install services
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# BASELINE=<rev>: the revision row 10 measures against (default: bench/baseline.py's);
# BASELINE=none skips it.
bench: install services
	$(BIN)/python -m bench.run $(if $(BASELINE),--baseline $(BASELINE))

schema: install
	$(BIN)/gemini-graphql export-schema --output schema.graphql

# The Postman collection for client teams, from examples/operations.graphql (commit the result).
collection: install
	$(BIN)/python -m examples.build_collection

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
	@if [ -e $(DEV_DATA) ]; then \
		echo "kept make dev's data in $(DEV_DATA)/; delete it with: make clean-dev-data (rm -rf $(DEV_DATA))"; \
	fi

clean-dev-data:
	rm -rf $(DEV_DATA)
