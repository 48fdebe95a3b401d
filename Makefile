# The two commands of the README's quick start are `make serve` and `make test`.
# Everything installs into ./.venv from uv.lock (uv itself lives in ./.tools), using the machine's python3.

PY ?= python3
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never

.PHONY: serve test test-postgres check lint typecheck fmt bench bench-quick clean

$(UV):
	$(PY) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PY)
	@touch $@

serve: $(VENV)/.synced  ## Start the server on its embedded defaults (SQLite in ./.chambers, 127.0.0.1:8000).
	$(VENV)/bin/chambers serve

test: $(VENV)/.synced  ## Run the whole test suite.
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-postgres: $(VENV)/.synced  ## The test suite with PostgreSQL and Redis (docs/operations.md).
	CHAMBERS_TEST_DATABASE=postgres CHAMBERS_TEST_BUS=redis $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(VENV)/.synced
	$(VENV)/bin/mypy

check: lint typecheck  ## ruff and mypy, as CI runs them.

fmt: $(VENV)/.synced
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache

bench: $(VENV)/.synced  ## Full benchmarks (about 25 min): bench/results/, docs/benchmarks.md.
	$(VENV)/bin/python -m bench.run full

bench-quick: $(VENV)/.synced  ## Short benchmarks (about a minute, CI-like): bench/results/, docs/benchmarks/quick.md.
	$(VENV)/bin/python -m bench.run quick
