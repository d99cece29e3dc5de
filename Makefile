# One command per job; CI (.ci/run) calls these same targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
CHECKOV_VERSION := 3.3.30

.PHONY: install install-test install-tools system-packages run prometheus test test-fast screenshots lint bench bench-failover bench-migrate dashboard-png clean

PIP := $(BIN)/pip install --quiet --disable-pip-version-check

install: $(BIN)/titanium

# The runtime set is requirements.lock, installed as the Dockerfile does, so a
# laptop runs the image's versions. --no-deps rather than -c (constraints):
# constraints only cap what pip resolves, so a dependency the lock misses would
# quietly come in at its newest version; with --no-deps nothing outside the
# lock is installed and `pip check` fails on the gap instead.
$(BIN)/titanium: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) --no-deps --requirement requirements.lock
	$(PIP) --no-deps --editable .
	$(BIN)/pip check
	touch $@

install-test: $(VENV)/.test-deps

# The test extra is pinned in pyproject.toml but its own dependencies are not
# locked, so pip resolves them here; the lock as constraints keeps every
# package it names (attrs, idna, anyio... shared with the test tools) at the
# version the image runs, or fails when a test tool needs another one.
$(VENV)/.test-deps: $(BIN)/titanium pyproject.toml requirements.lock
	$(PIP) --editable '.[test]' --constraint requirements.lock
	$(BIN)/pip check
	touch $@

# checkov has many dependencies of its own; its own virtualenv keeps them
# from colliding with the project's pins.
install-tools: $(TOOLS)/bin/checkov

$(TOOLS)/bin/checkov:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)

run: install
	$(BIN)/titanium run

# Debian's Prometheus on 127.0.0.1:9090 scraping `make run`'s ports, with the
# cluster's rules and labels (docs/monitoring.md); POSTGRES_EXPORTER=127.0.0.1:9187
# adds a postgres_exporter job.
prometheus: install
	@command -v prometheus >/dev/null || { echo "make prometheus: Debian's prometheus is missing (apt-get install prometheus)" >&2; exit 1; }
	$(BIN)/titanium monitoring prometheus var/prometheus \
		$(if $(POSTGRES_EXPORTER),--postgres-exporter $(POSTGRES_EXPORTER))
	prometheus --config.file=var/prometheus/prometheus.yml \
		--storage.tsdb.path=var/prometheus/data --web.listen-address=127.0.0.1:9090

# The Debian packages the tests drive, installed when missing (as root, as CI
# runs): Chromium for the UI tests (Playwright's own browser download cannot run
# here), age-keygen for the sealed secrets, Prometheus, promtool and
# postgres_exporter for the monitoring tests, Patroni and etcd for the HA
# PostgreSQL cluster of tests/support/patroni.py.
system-packages:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium fonts-nanum"; \
	[ -x /usr/bin/age-keygen ] || missing="$$missing age"; \
	[ -x /usr/bin/prometheus ] || missing="$$missing prometheus"; \
	[ -x /usr/bin/prometheus-postgres-exporter ] || missing="$$missing prometheus-postgres-exporter"; \
	[ -x /usr/bin/patroni ] || missing="$$missing patroni"; \
	[ -x /usr/bin/etcd ] || missing="$$missing etcd-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: install-test install-tools system-packages
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

# The tests that need no service processes, PostgreSQL, Chromium or infra
# tools (markers: pyproject.toml, applied in tests/conftest.py): seconds, not minutes.
FAST := not stack and not postgres and not ui and not infra
test-fast: install-test
	@$(BIN)/python -m pytest -m "$(FAST)"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

# The UI tests write their screenshots to build/screenshots/ (so a test run
# leaves the work tree clean); this takes a fresh set and puts it in the docs.
screenshots: install-test
	rm -rf build/screenshots
	$(BIN)/python -m pytest tests/test_ui.py -q
	cp build/screenshots/*.png docs/screenshots/

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Measurements, not tests: they print figures and append them to docs/benchmarks.md.
bench: install-test
	command -v wrk >/dev/null || apt-get install -y wrk
	$(BIN)/python bench/http_bench.py
	$(BIN)/python bench/ui_paint.py

# etcd + three PostgreSQL nodes under Patroni, the services on all three, 20
# writers through the gateway: a primary crash, a switchover, a replica crash.
bench-failover: install-test system-packages
	$(BIN)/python bench/failover.py

# Generates ~2.6 GB of SQLite under var/bench (kept for re-runs); needs pgloader.
bench-migrate: install-test
	command -v pgloader >/dev/null || apt-get install -y pgloader
	$(BIN)/python bench/migrate.py

# The services dashboard drawn from a real Prometheus after a minute of load
# (matplotlib, since Grafana is not installed): build/dashboard-services.png.
# The bench extra is resolved as the test extra is, the lock as constraints.
dashboard-png: $(VENV)/.bench-deps
	$(BIN)/python bench/dashboard_png.py

$(VENV)/.bench-deps: $(VENV)/.test-deps pyproject.toml requirements.lock
	$(PIP) --editable '.[bench]' --constraint requirements.lock
	$(BIN)/pip check
	touch $@

clean:
	rm -rf $(VENV) $(TOOLS) var build .pytest_cache .mypy_cache .ruff_cache
