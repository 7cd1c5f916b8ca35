# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# what it needs; with no database configured they use the embedded PostgreSQL.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-faults lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pgdurable migrate
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/pytest -m "not slow"

test-faults: $(STAMP)
	$(BIN)/pytest -m slow tests/faults

lint: $(STAMP)
	$(BIN)/ruff check pgdurable bench tests examples tools
	$(BIN)/mypy
	$(BIN)/mypy tools

clean:
	-$(BIN)/pgdurable dev --stop
	rm -rf $(VENV) .pgdurable .pytest_cache .mypy_cache .ruff_cache
