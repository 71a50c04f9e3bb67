# The two commands a fresh machine needs: `make run` and `make test`. Both create or update
# .venv first. torch is pinned before the project is installed, because on CPU-only machines
# a bare `torch` requirement resolves to a multi-GB CUDA build.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPO ?= model_repository
ONNX := $(REPO)/ca_mobilenetv2_onnx/1/model.onnx
WEIGHTS ?= default

.PHONY: install run test lint system-deps repo clean mutation

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[model,test,bench]'
	touch $@

# The model repository is built once from the checkpoint (default: the authors' release,
# falling back to seeded random weights with a loud warning when it cannot be fetched).
$(ONNX): | $(STAMP)
	$(VENV)/bin/ca-serve build-repo --weights $(WEIGHTS) --output $(REPO)

repo: $(ONNX)

run: $(ONNX)
	$(VENV)/bin/ca-serve serve --host 127.0.0.1 --port 8000

# Real servers the suite starts: Prometheus (promtool too) and a headless Chromium.
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus chromium; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

# Mutation testing of the code that decides answers: preprocessing, top-k and batch routing,
# admission, the export gate, label loading (docs/testing.md). Slow (~1 h on 2 cores); not
# part of `make test`. The mutants of other functions in these files are generated, not run.
MUTATION_SCOPE := 'service.gateway.preprocess.*' 'service.gateway.backends.base.*' \
	'service.gateway.batching.*' 'service.gateway.runtime.x_batch_function*' \
	'service.gateway.runtime.*_would_shed*' 'service.model.export.x_verify*' \
	'service.model.export.x_same_ranking*' 'service.model.export.x_top_k_indices*' \
	'service.spec.x_load_labels*' 'service.spec.x_default_labels_path*'

mutation: $(STAMP)
	$(PY) -m pip install -q -e '.[mutation]'
	rm -rf mutants
	HYPOTHESIS_EXAMPLES_SCALE=0.2 $(VENV)/bin/mutmut run $(MUTATION_SCOPE)
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) build mutants $(REPO)/*/[0-9]*/
