#!/usr/bin/env bash
# Start TorchServe (batching on) on 127.0.0.1:${1:-8080} in the foreground; Ctrl-C stops it.
# Extra arguments go to `python -m benchmarks.peers.torchserve` (--workers, --batch-size, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
test -x benchmarks/.venv-peers/bin/torchserve || benchmarks/peers/setup_torchserve.sh
port="${1:-8080}"
shift || true
exec .venv/bin/python -m benchmarks.peers.torchserve --port "$port" "$@"
