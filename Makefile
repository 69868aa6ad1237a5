# The two commands a newcomer needs: `make run` and `make test`. Both set up everything they need.
# Development only: SCR_CONFIG defaults to the sandbox's configuration here; the viewer itself (python -m app,
# gunicorn 'app:create_app()') has no default and refuses to start without one.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# sekmet-fhir: an independent FHIR server for interoperability tests, in its own venv (its deps are not ours).
SEKMET := .venv-sekmet/.installed-stamp
export SCR_CONFIG ?= sandbox/config.toml

.PHONY: run wheel test test-fast lint install clean migrate

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

$(SEKMET):
	test -x .venv-sekmet/bin/python || $(PYTHON) -m venv .venv-sekmet
	.venv-sekmet/bin/python -m pip install --quiet --disable-pip-version-check 'sekmet-fhir==0.1.1'
	touch $(SEKMET)

install: $(STAMP) $(SEKMET)

## Start the sandbox (simulated EHR, SMART authorisation server, FHIR servers) and the viewer on 127.0.0.1.
run: $(STAMP)
	$(BIN)/python -m sandbox.serve

## The product wheel (app, core, launch with their templates, static files and migrations; no sandbox) in dist/.
wheel: $(STAMP)
	$(BIN)/python -m pip wheel . --quiet --disable-pip-version-check --no-deps --no-build-isolation -w dist
	rm -rf build

## Lint and run the whole test suite (unit, loopback HTTP integration, browser journeys).
test: $(STAMP) $(SEKMET)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The fast lane: lint, then unit and in-process tests only (no servers, browsers, PostgreSQL or Redis;
## tests/conftest.py marks the others `integration`). Under 30 s.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

## Apply database migrations (SCR_DATABASE_URL for PostgreSQL; otherwise the SQLite file in the config).
migrate: $(STAMP)
	$(BIN)/alembic -c app/alembic.ini upgrade head

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .venv-sekmet var .pytest_cache test-artifacts build dist
