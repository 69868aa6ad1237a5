# The two commands a newcomer needs: `make run` and `make test`. Both set up everything they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export SCR_CONFIG ?= sandbox/config.toml

.PHONY: run test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the sandbox (simulated EHR, SMART authorisation server, FHIR servers) and the viewer on 127.0.0.1.
run: $(STAMP)
	$(BIN)/python -m sandbox.serve

## Lint and run the whole test suite (unit, loopback HTTP integration, browser journeys).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache
