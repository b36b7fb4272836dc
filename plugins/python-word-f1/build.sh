#!/usr/bin/env bash
# Builds the word-F1 reward plugin (Python) into a WebAssembly component with componentize-py:
#   pip install componentize-py==0.25.1   (in a venv; or set COMPONENTIZE_PY=/path/to/componentize-py)
#   ./build.sh [OUT.wasm]                 (default: word_f1.wasm next to this script)
set -euo pipefail
cd "$(dirname "$0")"
cpy="${COMPONENTIZE_PY:-componentize-py}"
out="${1:-word_f1.wasm}"
"$cpy" -d ../../sdk/wit -w reward componentize app -o "$out"
echo "$(pwd)/$out"
