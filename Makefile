# The two quick-start commands: `make demo` (set up, run the main job) and `make test`
# (set up, run lint, type checks and the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: a synthetic history, its features with the batch reference, a model bundle.
demo: $(STAMP)
	$(BIN)/segstream generate --customers 5000 --days 90 --seed 1 --out $(OUT)/history
	$(BIN)/segstream features --events $(OUT)/history/events.jsonl --as-of 2026-03-31T23:59:59Z --out $(OUT)/features.csv

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
