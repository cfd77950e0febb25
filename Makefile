# selfplay — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: demo test lint bench install install-dev clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.torch: | $(PY)
	scripts/install-torch.sh $(PY) $(TORCH_VERSION)
	touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[dev]'
	scripts/install-postgres.sh
	touch $@

install: $(VENV)/.base  ## create .venv and install selfplay (CPU torch where there is no GPU)

install-dev: $(VENV)/.dev  ## install with the dev extra (pytest, hypothesis, ruff, psycopg) and a PostgreSQL server for the ledger tests

demo: install  ## run the embedded CPU demo end to end
	$(VENV)/bin/selfplay demo

test: install-dev  ## lint, then run the whole test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: install-dev  ## ruff, undefined names included
	$(VENV)/bin/ruff check .

$(VENV)/.bench: pyproject.toml $(VENV)/.dev
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench  ## benchmarks: bus (vs raw pyzmq, memcpy), trainer (vs TRL), loop (vs one process), solver generation
	$(PY) bench/bus.py
	$(PY) bench/trainer.py
	$(PY) bench/loop.py
	$(PY) bench/solver.py

clean:  ## remove the environment
	rm -rf $(VENV)
