# Every target bootstraps what it needs: a fresh clone runs `make demo` or
# `make test` and nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov vendors its own `hcl2` module, which clashes with python-hcl2's: it
# lives in its own venv and the scanner runs it as a subprocess (--checkov).
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_VERSION := 3.3.30

.PHONY: setup demo test lint bench bench-tools bench-scan conformance clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/portcullis demo

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(CHECKOV_STAMP)

.venv-checkov: $(CHECKOV_STAMP)

test: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) bench-tools
	$(BIN)/python bench/decision.py
	$(BIN)/python bench/gateway.py

# wrk and nginx from Debian, for bench/gateway.py (not needed by make test).
bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light)

conformance: $(STAMP)
	$(BIN)/python scripts/conformance.py

# The scanner against checkov on ../shared/corpus/terraform (minutes: checkov is slow).
bench-scan: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/python bench/scan.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .portcullis-cache .pytest_cache .mypy_cache .ruff_cache build *.egg-info
