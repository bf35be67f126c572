# Two commands matter: `make demo` and `make test`. Everything else is what they are made of.
# `make setup` installs from nothing: uv (into a per-user cache), the locked Python environment,
# the cluster binaries (control plane, kubelet, kube-proxy: built from Go modules, cached per version),
# the host packages of the real nodes (containerd, runc, CNI plugins, nftables; Debian's, needs root),
# the real nodes' pause and base images, the embedded models, and the real clients the tests drive that
# cannot share our environment (llama-stack-client 0.0.40, in a venv of its own).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
CACHE_HOME := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/nim-operator
UV := $(CACHE_HOME)/uv-$(UV_VERSION)/bin/uv
PY := .venv/bin/python
EXTRAS := --extra operator --extra runtime --extra cpu --extra embedded
KUBECONFIG_LOCAL := .cache/cluster/kubeconfig
PYTEST_ARGS ?=

.PHONY: help setup env cluster-bin models clients lint fmt crds test test-unit test-cluster test-runtime test-e2e \
        cluster-up cluster-down images demo bench-runtime bench-operator clean

help:
	@echo "make demo    run the operator on the local cluster and chat with the embedded model"
	@echo "make test    install everything, lint, run every test"
	@echo "other: setup lint fmt crds cluster-up cluster-down images test-unit test-cluster test-runtime test-e2e bench-runtime bench-operator"

$(UV):
	python3 -m venv "$(CACHE_HOME)/uv-$(UV_VERSION)"
	"$(CACHE_HOME)/uv-$(UV_VERSION)/bin/pip" install --quiet "uv==$(UV_VERSION)"

# The stamp depends on the lock, so an edited lock re-syncs and an unchanged one costs nothing.
.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked $(EXTRAS)
	touch $@

env: .venv/.synced

cluster-bin: env
	tests/cluster/build.sh

models: env
	$(PY) -m nim_runtime prepare

# Real clients that cannot share our environment (llama-stack-client 0.0.40 needs httpx<0.28), each in
# a venv of its own under the cache; the runtime tests would make them too, this only does it up front.
clients: env
	$(PY) -m tests.runtime.clients

setup: env cluster-bin models clients

lint: env
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

fmt: env
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

crds: env
	.venv/bin/nim-operator crd -o crds/apps.nimoperator.dev_nimservices.yaml
	.venv/bin/nim-operator crd --kind NIMCache -o crds/apps.nimoperator.dev_nimcaches.yaml
	cp crds/apps.nimoperator.dev_nimservices.yaml crds/apps.nimoperator.dev_nimcaches.yaml charts/nim-operator/crds/

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: env
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-cluster: env cluster-bin
	$(PY) -m pytest tests/cluster tests/operator $(PYTEST_ARGS)

test-e2e: env cluster-bin
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test-runtime: env models clients
	$(PY) -m pytest tests/runtime $(PYTEST_ARGS)

cluster-up: env cluster-bin
	tests/cluster/up.sh
	@echo "export KUBECONFIG=$(CURDIR)/$(KUBECONFIG_LOCAL)"

cluster-down:
	tests/cluster/down.sh

# localhost/nim-operator:dev and localhost/nim-runtime:dev (CPU), built with BuildKit from our own
# Dockerfiles into every real node's containerd; an unchanged tree rebuilds nothing.
images: cluster-up
	tests/cluster/images.sh

demo: setup
	examples/demo.sh

clean: cluster-down
	rm -rf .venv .cache

bench-operator: env cluster-bin
	$(PY) bench/operator_scale.py

bench-runtime: env models
	$(PY) bench/runtime_overhead.py
	$(PY) bench/standard_client.py
