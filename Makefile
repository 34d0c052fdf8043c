# mcp-worker developer targets. `make` (or `make help`) lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help
.PHONY: help venv dev demo test faults lint format bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# -qq: pip says nothing unless it fails (a machine's own pip configuration can make it warn about
# index locations on every install, before the demo's first line).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	scripts/install-test-servers.sh
	touch $(STAMP)

venv: $(BIN)/python ## create the virtual environment (.venv)

dev: $(STAMP) ## install the project with its dev extra and the test MCP servers

demo: $(BIN)/python ## install the project and run the whole flow on the embedded default
	$(BIN)/pip install -qq -e .
	$(BIN)/mcp-worker demo

# The suite runs in TEST_PROCESSES parallel processes (each with its own database and Redis
# database), then the tests whose wall-time bound is the feature (marker `timed`) run alone.
TEST_PROCESSES ?= 3

test: $(STAMP) ## run the test suite (needs PostgreSQL, Redis and docker-compose; DATABASE_URL / REDIS_URL)
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) -m "not timed"
	$(BIN)/python -m pytest -m timed

faults: $(STAMP) ## run only the fault-injection tests
	$(BIN)/python -m pytest -m faults

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BIN)/python ## run the benchmarks in bench/ and print the table (needs Postgres and redis-server)
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m bench

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache
