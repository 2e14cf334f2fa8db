# Derrick developer entry points. `make` alone lists them.
#
# Every target that needs the toolchain depends on `setup`, which is idempotent and
# quick when nothing changed (scripts/setup.sh).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PYTHON := $(VENV)/bin/python

.PHONY: help setup run test bench lint wheels clean

help: ## list the targets
	@echo "Derrick -- make targets:"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{ printf "  make %-8s %s\n", $$1, $$2 }'
	@echo "  (make run RUN_SECONDS=30 stops by itself after 30 s)"

setup: ## install Debian packages if missing, create .venv, install the three distributions editable
	@bash scripts/setup.sh

run: setup ## the whole pipeline on free loopback ports (Ctrl-C or RUN_SECONDS=N stops)
	$(PYTHON) -m devstack.run $(if $(RUN_SECONDS),--seconds $(RUN_SECONDS))

test: setup ## ruff check and format check, then every test (real mosquitto/InfluxDB/VictoriaMetrics)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

bench: setup ## run every bench/*.py (each prints `name: value unit` lines)
	@shopt -s nullglob; files=(bench/*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "bench: no bench/*.py, nothing to run"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(PYTHON) "$$f"; done

lint: setup ## ruff check and format check only
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

wheels: setup ## build the three wheels (derrick, derrick-collector, derrick-sim) into dist/
	rm -rf dist && mkdir -p dist
	for project in . collector simulators; do \
		$(VENV)/bin/pip wheel -q --no-deps --no-build-isolation -w dist "./$$project"; \
	done
	rm -rf build collector/build simulators/build
	@ls -1 dist

clean: ## remove .venv and caches (not the run/ dir)
	rm -rf $(VENV) .pytest_cache .ruff_cache dist build *.egg-info */*.egg-info
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
