# The two commands a new machine needs: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 5006
# The demo database lives in the project folder so `make serve` is self-contained.
DEMO_DB ?= var/demo.db

.PHONY: serve test lint format bench atlas screenshots chromium install dev clean

$(BIN)/tpmap: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

install: $(BIN)/tpmap

$(VENV)/.dev: pyproject.toml $(BIN)/tpmap
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

dev: $(VENV)/.dev

# Prints the demo accounts and their password (created with the demo database) on start.
serve: install
	@mkdir -p $(dir $(DEMO_DB))
	@echo "Sign in at http://$(HOST):$(PORT)/login with one of the demo accounts listed below."
	$(BIN)/tpmap serve --db sqlite:///$(abspath $(DEMO_DB)) --demo --host $(HOST) --port $(PORT)

# Debian's Chromium drives the browser tests and PNG/SVG export (no browser downloads here).
chromium:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  echo "installing Debian's chromium and chromium-driver (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

lint: dev
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs
	$(BIN)/mypy

format: dev
	$(BIN)/ruff format src tests bench docs
	$(BIN)/ruff check --fix src tests bench docs

test: dev chromium lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench

# The README's pictures: a demo database and a tpmap serve in a temporary folder, Chromium.
screenshots: dev chromium
	$(BIN)/python docs/screenshots.py

atlas: install
	$(BIN)/tpmap atlas --build
	BOKEH_IN_DOCKER=1 $(BIN)/tpmap atlas --out docs/atlas.png

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
