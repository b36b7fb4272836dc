#!/usr/bin/env bash
# babelrl and its PyTorch peer on the same model, one after the other in the same run.
# Usage: scripts/bench.sh [babelrl bench options]     (the peer needs torch: see scripts/bench_pytorch.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo run --release -q -p babelrl --bin babelrl -- bench "$@"
echo
PY="${BABELRL_PEER_PYTHON:-/root/.venvs/fixtures/bin/python}"
if "$PY" -c "import torch, transformers" 2>/dev/null; then
  "$PY" scripts/bench_pytorch.py
else
  echo "peer skipped: no python with torch + transformers at $PY (set BABELRL_PEER_PYTHON)"
fi
