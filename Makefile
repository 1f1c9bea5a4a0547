# taskservice: `make run` starts the service, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.DEFAULT_GOAL := help
.PHONY: help run test bench lint format typecheck clean

help:  ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Reinstall only when a requirements file changed: a second `make run` starts at once.
$(BIN)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The Node tools (the OpenAPI linter) come from package-lock.json. Without npm
# their tests skip, and the stamp stays unset so that a later run installs them.
$(BIN)/.dev: requirements.txt requirements-dev.txt package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(BIN)/.runtime
	@if command -v npm >/dev/null; then \
		echo "npm ci --no-audit --no-fund" && npm ci --no-audit --no-fund && touch $@; \
	else \
		echo "npm not found: the OpenAPI lint test will skip; install Node.js 20.19+ and npm" >&2; \
	fi

run: $(BIN)/.runtime  ## Start the service (default http://127.0.0.1:8000/docs; set HOST, PORT)
	HOST=$(HOST) PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: lint typecheck  ## Lint, type-check and run the test suite
	$(BIN)/pytest

# Options go through BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick`.
bench: $(BIN)/.dev  ## Measure throughput, latency, dispatch and memory; rewrite docs/benchmarks.md
	@command -v wrk >/dev/null || { echo "wrk not found; install it with: apt-get install wrk" >&2; exit 1; }
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(BIN)/.dev  ## Check style and formatting with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.dev  ## Type-check with mypy
	$(BIN)/mypy

format: $(BIN)/.dev  ## Reformat and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:  ## Remove the virtual environment, node_modules and caches
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
