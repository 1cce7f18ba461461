# The two newcomer commands (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: setup demo test test-all
setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/ifp demo --workdir $(WORKDIR)

# Fast suite (what CI runs); `make test-all` adds the tests marked slow.
test: setup
	$(PY) -m pytest -q -m "not slow" --durations=25

test-all: setup
	$(PY) -m pytest -q
