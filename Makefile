PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PUSHBASE_DATA_DIR ?= ./pushbase-data
export PUSHBASE_DATA_DIR

.PHONY: run test bench bench-large lint clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/pushbase serve --host $(HOST) --port $(PORT)

# Two processes, a test file each at a time (module-scoped servers stay with their file):
# the suite waits on servers, PostgreSQL and subprocesses more than it computes.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: $(VENV)/.installed-dev chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The console tests drive Debian's headless Chromium (never a browser download).
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "installing Debian's chromium for the console tests (apt-get)"; \
		apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)

# The same phases, spread ones included, against a dataset of 10M rows (9M preloaded + the
# 1M insert phase), at the defaults a user gets from `make run`: no server setting is
# overridden (the bench's servers see no PUSHBASE_* variable of this shell). If the
# embedded store cannot hold it, the report says so (FAIL), it does not crash.
bench-large: $(VENV)/.installed-dev
	$(BIN)/python bench/ingest.py --preload 9000000 --no-baseline $(BENCH_ARGS)

clean:
	rm -rf $(VENV) pushbase-data
