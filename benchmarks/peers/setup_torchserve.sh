#!/usr/bin/env bash
# Make benchmarks/.venv-peers: TorchServe 0.12 and its archiver, with the CPU build of torch.
# torch==2.13.0 goes in first: a bare `torch` requirement would pull a ~5 GB CUDA build.
# TorchServe 0.12's worker imports yaml without declaring it, hence pyyaml. Java 17 runs
# the frontend (`java -version` must work).
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv-peers/bin/python || python3 -m venv .venv-peers
.venv-peers/bin/pip install -q torch==2.13.0
.venv-peers/bin/pip install -q torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml pillow numpy
