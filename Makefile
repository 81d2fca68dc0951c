# README's two commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The environment is uv.lock's: every package at its locked version and hash. After editing the
# dependencies in pyproject.toml, run `.venv/bin/uv lock` and commit uv.lock with them (install
# refuses a lock that no longer matches pyproject.toml).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock Makefile | sha1sum | cut -c1-12)
LOCKED_REQUIREMENTS := $(VENV)/requirements.lock.txt

.PHONY: demo up test lint bench clean install lock screenshots bytecode system-tools

$(STAMP): pyproject.toml uv.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q 'uv>=0.5'
	@$(BIN)/uv export -q --locked --extra test --no-emit-project -o $(LOCKED_REQUIREMENTS)
	@VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q -r $(LOCKED_REQUIREMENTS)
	@VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install -q --no-deps -e .
	@# Byte-compiled once here: where PYTHONDONTWRITEBYTECODE is set (this machine sets it), every
	@# Python process would otherwise compile Airflow, SQLAlchemy and the rest again (a CLI call: 2.8 s, 0.85 s with this).
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: $(STAMP) bytecode
	$(BIN)/python -m cgthub.demo

# The hub on this machine: airflow standalone (UI on :8080), MLLP listener, sandboxes or demo traffic.
up: $(STAMP) bytecode
	$(BIN)/python -m cgthub.up

# The hub's own modules byte-compiled too (tests start hundreds of CLI, listener and Airflow processes).
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 cgthub connectors dags plugins bench > /dev/null

# Three pytest workers on two cores: many tests wait on subprocesses and sockets (fresh clone,
# 4 December: pytest 12:34 with three, 13:12 with two). The 25 slowest tests are listed at the end:
# CI has 15 minutes, and they say where a minute can come from.
# Debian's packages the tests drive (chromium for the console's browser tests, docker-compose to
# validate the compose file), installed before pytest where missing and this runs as root, one apt
# at a time: two test workers installing them at once met on dpkg's lock, and a fresh clone's run
# failed with docker-compose not installed (5 December). Elsewhere those tests say what to install.
system-tools:
	@missing=""; \
	test -x /usr/bin/chromium || missing="chromium"; \
	command -v docker-compose > /dev/null || docker compose version > /dev/null 2>&1 || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		echo "installing$$missing with apt-get"; \
		apt-get -o DPkg::Lock::Timeout=300 update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq $$missing > /dev/null || true; \
	fi

test: $(STAMP) bytecode system-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m cgthub.devtools.layers
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=25 $(PYTEST_ARGS)

# Re-resolve uv.lock after a change to the dependencies in pyproject.toml.
lock:
	@test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); $(BIN)/python -m pip install -q 'uv>=0.5'; }
	$(BIN)/uv lock

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var/*.db var/*.key var/airflow

# Each console page as a PNG under var/screenshots/, from the browser test's story (Debian's chromium;
# installed with apt-get where missing and this runs as root).
screenshots: $(STAMP)
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || { echo "install chromium: sudo apt-get install -y chromium"; exit 1; }
	@mkdir -p var/screenshots
	CGTHUB_SCREENSHOTS=$(CURDIR)/var/screenshots $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_console_browser.py -k sqlite
	@ls var/screenshots
