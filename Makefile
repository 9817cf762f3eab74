# The two quick-start commands: `make demo` (set up, run the main job) and `make test`
# (set up, run lint, type checks and the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out

.PHONY: setup demo test clean constraints

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: embedded broker and Valkey, a history, a bundle, the worker, a live view.
demo: $(STAMP)
	$(BIN)/segstream demo --customers 1000 --duration 90

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Pins for the image (constraints.txt): what a fresh venv resolves today, setuptools included.
constraints:
	rm -rf .venv-constraints && $(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --quiet --upgrade pip setuptools
	.venv-constraints/bin/python -m pip install --quiet .
	{ head -n 3 constraints.txt; .venv-constraints/bin/python -m pip freeze --all \
	  | grep -v -e '^segstream' -e '^pip=='; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-constraints build *.egg-info

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
