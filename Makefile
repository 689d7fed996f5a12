# Two commands on a fresh machine (Python 3.11 and make): `make demo`, `make test`.
# Both create the virtual environment first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint

setup: $(VENV)/.installed

# torch/torchvision first: the tested pair (pyproject.toml only caps them).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/python train.py experiment=synthetic

test: setup
	$(BIN)/pytest

# The in-process core without the subprocess end-to-end runs (e2e); a -m given here replaces
# pyproject's addopts one (the last -m wins), so it repeats "not slow and not gpu".
test-fast: setup
	$(BIN)/pytest -m "not slow and not gpu and not e2e"

# The ruff of the dev extra, with pyproject.toml's [tool.ruff] settings (the whole repository).
lint: setup
	$(BIN)/ruff check .
