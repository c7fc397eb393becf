# anxiao — the two commands that matter are `make run` and `make test`.
# Everything they need is set up from scratch: Debian packages, TimescaleDB
# (built once per machine), a private PostgreSQL cluster and Mosquitto under
# .stack/, and the Python virtualenv in .venv/.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=
PACKAGES := anxiao core ingest geofence alerts api simulators
# Only the packages that exist in this checkout (a package lands with its __init__.py).
PRESENT := $(patsubst %/__init__.py,%,$(foreach p,$(PACKAGES),$(wildcard $(p)/__init__.py)))

.PHONY: help venv stack-up stack-down stack-reset migrate web run test check format bench clean

help:
	@echo "make run          the whole service on the local stack, fed by the simulator; prints the dashboard URL"
	@echo "make test         every test against real PostgreSQL+TimescaleDB and Mosquitto"
	@echo "make check        ruff (format + lint) and mypy --strict"
	@echo "make bench        benchmarks, JSON into bench/results/"
	@echo "make stack-up     start the local stack (idempotent); stack-down stops it; stack-reset wipes it"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

stack-up:
	@bash scripts/stack.sh up

stack-down:
	@bash scripts/stack.sh down

stack-reset:
	@bash scripts/stack.sh reset

migrate: venv stack-up
	@$(BIN)/anxiao migrate

web:
	@bash scripts/web.sh

run: migrate web
	@$(BIN)/anxiao status
	@bash scripts/run.sh

test: venv stack-up web
	@# Compile the Numba kernels into their cache once, not in every test's first call.
	$(BIN)/python -c 'from alerts.warm import warm_up; warm_up()'
	$(BIN)/pytest $(PYTEST_ARGS)

check: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy $(PRESENT) tests

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv stack-up
	@set -e; for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
