# The two newcomer commands (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo

# The package alone: what `make demo` needs.
$(VENV)/.base: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# The test extras. llama-cpp-python (one of them) first, from a wheel built once per machine and
# cached (.ci/llama_cpp_wheel.py: the first build takes ~10-18 min and prints its progress).
$(VENV)/.installed: $(VENV)/.base .ci/llama_cpp_wheel.py
	$(PY) .ci/llama_cpp_wheel.py
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: setup demo test test-all
setup: $(VENV)/.installed

demo: $(VENV)/.base
	$(VENV)/bin/ifp demo --workdir $(WORKDIR)

# Fast suite (what CI runs); `make test-all` adds the tests marked slow.
test: setup
	$(PY) -m pytest -q -m "not slow" --durations=25

test-all: setup
	$(PY) -m pytest -q
