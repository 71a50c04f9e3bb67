#!/usr/bin/env bash
# Start the plain FastAPI + eager PyTorch peer on 127.0.0.1:${1:-8001} (foreground; Ctrl-C stops it).
# Needs the checkpoint `python -m benchmarks.assets` writes (benchmarks/results/tmp/weights.pt).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CA_PEER_WEIGHTS="${CA_PEER_WEIGHTS:-benchmarks/results/tmp/weights.pt}"
exec .venv/bin/uvicorn benchmarks.peers.plain_fastapi:app --host 127.0.0.1 --port "${1:-8001}" \
    --no-access-log
