# Two commands for a newcomer: `make run` and `make test`. Both create .venv and install the
# project on first use; later runs reinstall only when pyproject.toml changes. `make bench` runs the
# benchmarks (7 to 13 minutes); `make bench-smoke` (or BENCH_QUICK=1 make bench) a few seconds of them.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test bench bench-smoke soak lint format clean

help:
	@echo "make run      run the bot (reads .env; starts a local redis-server when REDIS_URL is unset)"
	@echo "make test     run the tests (PYTEST_ARGS='-k manifest' to pick some)"
	@echo "make bench    run the benchmarks: table on screen, JSON in bench/results/ (7-12 min)"
	@echo "make bench-smoke  the same in a few seconds with small C (BENCH_ARGS='--only replicas')"
	@echo "make soak     one process under a steady load for 10 minutes: RSS, CPU and done over time (SOAK_ARGS)"
	@echo "make lint     ruff check and ruff format --check"
	@echo "make format   sort imports and format the code with ruff"
	@echo "make clean    remove .venv and caches (keeps ./var, the local Redis data)"

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "error: '$(PYTHON) -m venv' failed: install Python 3.11+ with venv (apt-get install python3-venv)" >&2; \
		exit 1; }

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $@

run: $(INSTALLED)
	$(BIN)/python app.py

test: $(INSTALLED)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(INSTALLED)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-smoke: $(INSTALLED)
	BENCH_QUICK=1 $(BIN)/python -m bench $(BENCH_ARGS)

soak: $(INSTALLED)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -not -path './var/*' -prune -exec rm -rf {} +
