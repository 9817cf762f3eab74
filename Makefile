# The two quick-start commands: `make demo` (set up, run the main job) and `make test`
# (set up, run lint, type checks and the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out

.PHONY: setup demo test clean constraints stack

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: embedded broker and Valkey, a history, a bundle, the worker, a live view.
demo: $(STAMP)
	$(BIN)/segstream demo --customers 1000 --duration 90

# A rehearsal of `docker compose up` without Docker (tests/test_stack.py): the compose
# services' own commands with an embedded broker and Valkey and a real Prometheus, then
# what Prometheus shows after STACK_SECONDS of streaming; the picture goes to $(OUT)/stack.
# The defaults are the compose file's own: 5,000 customers at 20 events/s (~15 min).
STACK_CUSTOMERS ?= 5000
STACK_RATE ?= 20
STACK_SECONDS ?= 330
stack: $(STAMP)
	mkdir -p $(OUT)
	SEGSTREAM_DEMO_CUSTOMERS=$(STACK_CUSTOMERS) SEGSTREAM_DEMO_RATE=$(STACK_RATE) \
	SEGSTREAM_STACK_SECONDS=$(STACK_SECONDS) SEGSTREAM_STACK_OUT=$(abspath $(OUT))/stack \
	$(BIN)/pytest tests/test_stack.py -s -p no:cacheprovider --timeout 3600 \
	  --basetemp=$(abspath $(OUT))/stack-run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadgroup

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
