# The two commands users need: `make run` (the demo on the local stack) and `make test` (the whole suite).
# Everything sets itself up on first use: a virtualenv in .venv with the project and its extras.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

export PYTHONPATH := $(CURDIR)

.PHONY: setup browser test unit integration lint ruff tools checkov tf-lint tf-schema run up down status env gemini-emulator bench package deploy smoke clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,emulator,cli]'
	touch $(STAMP)

# `make test` on a fresh machine does its own set-up: the virtualenvs, and Debian's chromium for the
# dashboard test (tools/ensure_chromium.sh: installed with apt-get when running as root, else it stops and
# names the command to run).
# Two workers: the integration and hostile suites each whole on one (one stack each), the other tests
# spread over both (tests/conftest.py schedules them).
test: setup browser lint
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

browser:
	@bash tools/ensure_chromium.sh

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

lint: ruff tf-lint

# cloudbuild.yaml's lint steps run `make ruff` and `make checkov`: the same checks as here.
ruff: setup
	$(VENV)/bin/ruff check shared functions infra tests benchmarks tools embedpipe

# -- infrastructure ------------------------------------------------------------------------------------
# checkov lives in a virtualenv of its own (.venv-tools): its pinned dependencies never meet the project's.
TOOLS_VENV ?= .venv-tools
CHECKOV_VERSION ?= 3.3.30
TOOLS_STAMP := $(TOOLS_VENV)/.installed

tools: $(TOOLS_STAMP)

$(TOOLS_STAMP):
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(TOOLS_STAMP)

# terraform fmt + checkov (--skip-download: no call to the checkov vendor's API) + the offline schema check.
tf-lint: checkov tf-schema
	terraform fmt -check -recursive infra

# The providers' schemas as published in npm packages (tools/check_tf_schema.py says why), packed once.
SCHEMA_DIR := $(TOOLS_VENV)/schemas
SCHEMA_PACKAGES := @cdktf/provider-google@16.12.1 @cdktf/provider-google-beta@16.12.1 @cdktf/provider-time@11.0.1
SCHEMA_STAMP := $(SCHEMA_DIR)/.packed

$(SCHEMA_STAMP):
	@command -v npm >/dev/null || { echo "make tf-schema needs npm (Debian: apt-get install npm) to fetch the providers' schemas" >&2; exit 1; }
	mkdir -p $(SCHEMA_DIR)
	cd $(SCHEMA_DIR) && npm pack --silent $(SCHEMA_PACKAGES) >/dev/null
	touch $(SCHEMA_STAMP)

tf-schema: tools $(SCHEMA_STAMP)
	$(TOOLS_VENV)/bin/python tools/check_tf_schema.py infra/terraform \
	  --schema google=$(SCHEMA_DIR)/cdktf-provider-google-16.12.1.tgz \
	  --schema google-beta=$(SCHEMA_DIR)/cdktf-provider-google-beta-16.12.1.tgz \
	  --schema time=$(SCHEMA_DIR)/cdktf-provider-time-11.0.1.tgz

checkov: tools
	$(TOOLS_VENV)/bin/checkov -d infra/terraform --framework terraform --quiet --compact --skip-download

package: setup
	$(PY) -m infra.package

# PROJECT_ID=... [REGION=...] [GEMINI_API_KEY=... the first time]
deploy: setup
	PYTHON=$(CURDIR)/$(PY) infra/deploy.sh

smoke:
	infra/deploy.sh smoke

run: setup
	$(PY) -m infra.local.demo

UP_ARGS ?=
up: setup
	$(PY) -m infra.local.stack up $(UP_ARGS)

down:
	$(PY) -m infra.local.stack down

status:
	$(PY) -m infra.local.stack status

env:
	@$(PY) -m infra.local.stack env

GEMINI_EMULATOR_PORT ?= 8203
gemini-emulator: setup
	$(PY) -m infra.local.gemini_emulator --host 127.0.0.1 --port $(GEMINI_EMULATOR_PORT)

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache
