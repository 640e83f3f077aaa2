# kaiser: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-test

.PHONY: demo test test-slow lint bench clean

# System tools (Debian packages) each job needs: src/kaiser/systools.py installs what is absent
# when run as root, else names the one command to run (exit 2). Standard library only.
SYSTOOLS := $(PYTHON) src/kaiser/systools.py
# The suite on every core (pytest-xdist), a test file per worker so that module fixtures are built
# once: on 2 cores about half the wall time of one process. `make test PARALLEL=` runs it in one.
# tests/conftest.py compiles the numba engine once for all workers, while they run the files
# that do not need it.
PARALLEL ?= -n auto --dist loadfile

$(VENV)/bin/python:
	$(SYSTOOLS) venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(SYSTOOLS) demo
	$(VENV)/bin/kaiser demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: $(STAMP) lint
	$(SYSTOOLS) test
	$(PY) -m pytest $(PARALLEL)

test-slow: $(STAMP)
	$(SYSTOOLS) test
	$(PY) -m pytest $(PARALLEL) -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
