# One command per job; CI (.ci/run) calls these same targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
CHECKOV_VERSION := 3.3.30

.PHONY: install install-test install-tools run test lint bench bench-migrate clean

install: $(BIN)/titanium

$(BIN)/titanium: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

install-test: $(VENV)/.test-deps

$(VENV)/.test-deps: $(BIN)/titanium
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# checkov has many dependencies of its own; its own virtualenv keeps them
# from colliding with the project's pins.
install-tools: $(TOOLS)/bin/checkov

$(TOOLS)/bin/checkov:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)

run: install
	$(BIN)/titanium run

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: install-test install-tools
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Measurements, not tests: they print figures and append them to docs/benchmarks.md.
bench: install-test
	command -v wrk >/dev/null || apt-get install -y wrk
	$(BIN)/python bench/http_bench.py
	$(BIN)/python bench/ui_paint.py

# Generates ~2.6 GB of SQLite under var/bench (kept for re-runs); needs pgloader.
bench-migrate: install-test
	command -v pgloader >/dev/null || apt-get install -y pgloader
	$(BIN)/python bench/migrate.py

clean:
	rm -rf $(VENV) $(TOOLS) var .pytest_cache .mypy_cache .ruff_cache
