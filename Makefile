# gradsweep: `make demo` runs a real local search; `make test` runs the whole suite.
# Both create .venv when it is missing and are safe to run twice.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gradsweep-installed
# The CPU wheel lies on disk; an open range would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install browser demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for tests/search/test_mlflow_ui.py, driven by Playwright (a dev extra) through
# executable_path: never `playwright install`, which downloads its own browser. apt-get runs only
# when the browser is missing, so `make test` stays quick and offline once it is there.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q chromium chromium-driver; }

demo: install
	$(BIN)/gradsweep run quick

test: install browser
	GRADSWEEP_EXPECT_BROWSER=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf gradsweep-runs .pytest_cache
