# mnist-service: the commands for people and CI. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
DOCKER_ENGINE ?= $(SHARED)/tools/docker-engine
MNIST_DATA_DIR ?= $(SHARED)/data/mnist
MODELS_DIR ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
TRAIN_ARGS ?=
COMPOSE ?= docker compose

# Each stamp remembers which extra is installed; editing pyproject.toml or the pinned versions
# (constraints.txt, `make lock`) reinstalls it.
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev
CONSTRAINTS := constraints.txt

.PHONY: help install lock serve train test test-setup lint bench bench-peers docker-build up down system-packages browser-deps

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: MNIST_DATA_DIR=$(MNIST_DATA_DIR) MODELS_DIR=$(MODELS_DIR) HOST=$(HOST) PORT=$(PORT)"
	@echo "             PYTEST_ARGS='...' (e.g. -m 'not docker'), TRAIN_ARGS='...' (mnist-train flags)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --constraint $(CONSTRAINTS) -e '.[serve]'
	@touch $@

$(DEV_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --constraint $(CONSTRAINTS) -e '.[dev]'
	@touch $@ $(SERVE_STAMP)

# A new virtual environment with the newest releases pyproject.toml allows, frozen into
# constraints.txt (its header kept). Then `make test`, and commit both files.
LOCK_VENV ?= $(VENV)-lock
lock: ## re-resolve the pinned versions (constraints.txt) to the newest releases pyproject.toml allows
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	{ grep '^#' $(CONSTRAINTS); $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf $(LOCK_VENV)

install: $(DEV_STAMP) ## create .venv and install everything (.[dev]: serve + train + test tools)

serve: $(SERVE_STAMP) ## serve the committed model with gunicorn on HOST:PORT (127.0.0.1:8000)
	$(BIN)/mnist-serve --host $(HOST) --port $(PORT) --models-dir $(MODELS_DIR)

train: $(DEV_STAMP) ## train and publish a new version into MODELS_DIR (flags in TRAIN_ARGS)
	MNIST_DATA_DIR=$(MNIST_DATA_DIR) $(BIN)/mnist-train --models-dir $(abspath $(MODELS_DIR)) $(TRAIN_ARGS)

system-packages: ## apt-get install chromium, wrk, npm, prometheus (promtool), postgresql if missing (root/sudo)
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && [ -f /usr/share/fonts/truetype/dejavu/DejaVuSerifCondensed-Italic.ttf ] || missing="$$missing fonts-dejavu-core fonts-dejavu-extra"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; \
	else echo "make: missing Debian packages:$$missing. Not root: run 'sudo apt-get install -y$$missing' once, then 'make test' again." >&2; exit 1; fi; \
	echo "apt-get install$$missing"; \
	$$sudo apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $$missing

# JavaScript the browser tests inject (axe-core), pinned by tests/browser/package-lock.json.
AXE := tests/browser/node_modules/axe-core/axe.min.js
$(AXE): tests/browser/package-lock.json | system-packages
	npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
	@touch $@

browser-deps: $(AXE) ## npm ci the browser tests' JavaScript (axe-core) into tests/browser

# The Docker tests need an engine. When none answers and the shared docker-engine tool exists,
# start it beside the tests (it takes a minute or two on a fresh machine: the deployment tests run
# last and wait for it, tests/deploy/conftest.py), and stop it again however pytest ends (trap),
# keeping pytest's exit code.
# The Python packages (pip) and the Debian ones (apt-get) install side by side (on a fresh
# machine both mostly wait for downloads), and the lint starts as soon as pip is done.
test-setup:
	@$(MAKE) --no-print-directory -j2 $(DEV_STAMP) system-packages $(AXE) lint

test: test-setup ## make lint, then the WHOLE test suite (starts/stops a Docker engine when needed)
	@started=""; pending=""; engine_pid=""; \
	stop_engine() { \
	  if [ -n "$$engine_pid" ] && kill -0 "$$engine_pid" 2>/dev/null; then \
	    echo "make test: waiting for the Docker engine's start to end before stopping it" >&2; fi; \
	  if [ -n "$$engine_pid" ]; then wait "$$engine_pid" 2>/dev/null || true; fi; \
	  if [ -n "$$pending" ]; then cat "$$pending/log" >&2 2>/dev/null || true; rm -rf "$$pending"; fi; \
	  if [ -n "$$started" ]; then $(DOCKER_ENGINE) down || echo "make: docker-engine down failed" >&2; fi; }; \
	trap stop_engine EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	if docker info >/dev/null 2>&1; then echo "make test: using the running Docker engine"; \
	elif [ -x "$(DOCKER_ENGINE)" ]; then \
	  if ! $(DOCKER_ENGINE) status >/dev/null 2>&1; then started=1; fi; \
	  pending="$$(mktemp -d)"; \
	  echo "make test: starting a Docker engine beside the tests; the deployment tests run last and wait for it"; \
	  ( lines="$$($(DOCKER_ENGINE) up 2>"$$pending/log")" && eval "$$lines" \
	    && printf 'DOCKER_HOST=%s\nDOCKER_CONFIG=%s\nPATH=%s\n' "$$DOCKER_HOST" "$$DOCKER_CONFIG" "$$PATH" > "$$pending/env"; \
	    echo $$? > "$$pending/rc.part" && mv "$$pending/rc.part" "$$pending/rc" ) & engine_pid=$$!; \
	  export DOCKER_ENGINE_PENDING="$$pending"; \
	else echo "make test: no Docker engine and no $(DOCKER_ENGINE); the docker tests will say why"; fi; \
	MNIST_DATA_DIR="$(MNIST_DATA_DIR)" $(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	exit $$status

lint: $(DEV_STAMP) ## ruff check, ruff format --check, mypy (strict), the import rules (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: $(DEV_STAMP) system-packages ## serving benchmarks with wrk (a few minutes; prints tables)
	MNIST_DATA_DIR=$(MNIST_DATA_DIR) $(BIN)/python bench/serve_bench.py --models-dir $(MODELS_DIR)
	MNIST_DATA_DIR=$(MNIST_DATA_DIR) $(BIN)/python bench/serve_images_bench.py --models-dir $(MODELS_DIR)

PEERS_CACHE ?= $(HOME)/.cache/mnist-service/peers
bench-peers: $(DEV_STAMP) system-packages ## mnist-service beside MLServer, KServe, BentoML (not in CI; installs them into PEERS_CACHE once)
	MNIST_DATA_DIR=$(MNIST_DATA_DIR) $(BIN)/python bench/peers_bench.py --models-dir $(MODELS_DIR) --cache-dir $(PEERS_CACHE)

# With no engine answering, the docker targets start the shared docker-engine tool's engine (it
# stays up for the stack; `../shared/tools/docker-engine down` stops it) and use its socket.
WITH_ENGINE = if ! docker info >/dev/null 2>&1 && [ -x "$(DOCKER_ENGINE)" ]; then \
	  engine_env="$$($(DOCKER_ENGINE) up)" || exit 1; eval "$$engine_env"; fi;

docker-build: ## build the serving and trainer images with compose
	@$(WITH_ENGINE) set -x; $(COMPOSE) --profile train build

up: ## start the service in Docker on 127.0.0.1:MNIST_PORT (8000) and wait until healthy
	@$(WITH_ENGINE) set -x; $(COMPOSE) up --detach --wait

down: ## stop the Docker stack (the engine keeps running)
	@$(WITH_ENGINE) set -x; $(COMPOSE) --profile train down
