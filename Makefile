# kubeloop: the one way to install, test, run, compile and benchmark.
# Every target installs what it needs, idempotently; a second run is fast.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# The main environment is rebuilt only when its declared inputs change.
INSTALL_STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install demo test test-unit lint format compile check-generated bench clean

# Each concern adds its set-up targets in mk/<concern>.mk and appends them to
# TEST_DEPS / DEMO_DEPS (e.g. the drift service's venv, Prometheus, helm).
TEST_DEPS :=
DEMO_DEPS :=
include $(wildcard mk/*.mk)

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

$(INSTALL_STAMP): pyproject.toml setup.py requirements/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (kubeloop needs Python 3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	@# CPU torch first and pinned: any other spec pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e ".[dev,containers]"
	@touch $@

install: $(INSTALL_STAMP) ## create .venv with kubeloop and its pinned dependencies

demo: install $(DEMO_DEPS) ## run the main job on the local runtime
	$(BIN)/kubeloop demo

test: install $(TEST_DEPS) ## run the test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install ## run only the unit tests (no services)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: install ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compile: install ## compile pipelines to IR YAML under pipelines/compiled/
	$(BIN)/kubeloop pipeline compile

check-generated: install ## fail when a generated file differs from its source
	$(BIN)/kubeloop generate --check

bench: install ## run the benchmarks and write docs/benchmarks.md
	$(BIN)/python -m kubeloop.bench

clean: ## remove local state (var/, reports); keeps the environments
	rm -rf var demo-report .pytest_cache
