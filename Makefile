# Two commands: `make demo` and `make test`. Each creates/refreshes .venv and installs what it needs.
# `make bench` runs the performance suite and rewrites its section of benchmarks/RESULTS.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned by range in pyproject; pip resolves them once per venv.
STAMP_DEV := $(VENV)/.stamp-dev
STAMP_DEMO := $(VENV)/.stamp-demo
STAMP_BENCH := $(VENV)/.stamp-bench
# `make test-min`: every dependency at its declared floor (tests/constraints-min.txt), except
# torch/torchvision, which stay at the local pair; its own venv so .venv is left as it is.
VENV_MIN := .venv-min
STAMP_MIN := $(VENV_MIN)/.stamp-min

.PHONY: demo test test-min lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,export,medical,agriculture,detection]"
	touch $@

$(STAMP_DEMO): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[demo,export]"
	touch $@

# torchgeo and MONAI (the tools compared against) come only with the bench extra.
$(STAMP_BENCH): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,export,medical,agriculture,bench]"
	touch $@

bench: $(STAMP_BENCH)
	$(BIN)/python benchmarks/run_all.py

test: $(STAMP_DEV)
	$(BIN)/python -m pytest -q

$(STAMP_MIN): pyproject.toml tests/constraints-min.txt
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/pip install --quiet --upgrade pip
	$(VENV_MIN)/bin/pip install --quiet -c tests/constraints-min.txt -e ".[dev,export,medical,agriculture,detection]"
	touch $@

test-min: $(STAMP_MIN)
	$(VENV_MIN)/bin/python -m pytest -q

lint: $(STAMP_DEV)
	$(BIN)/ruff check core domains tests benchmarks

demo: $(STAMP_DEMO)
	$(BIN)/python -m domains.manufacturing.demo

clean:
	rm -rf $(VENV) $(VENV_MIN) runs
