#!/usr/bin/env bash
# Builds every example plugin into a WebAssembly component and prints the paths of the .wasm files.
#   Rust:   cargo build --target wasm32-wasip2 --release     (needs `rustup target add wasm32-wasip2`)
#   Python: python-word-f1/build.sh, when componentize-py is found ($COMPONENTIZE_PY or on PATH);
#           install it with `pip install componentize-py==0.25.1` (a venv outside the repo is fine).
set -euo pipefail
cd "$(dirname "$0")"

cargo build --target wasm32-wasip2 --release
for wasm in target/wasm32-wasip2/release/*.wasm; do
    printf '%s\t%s bytes\n' "$(pwd)/$wasm" "$(wc -c < "$wasm")"
done

cpy="${COMPONENTIZE_PY:-$(command -v componentize-py || true)}"
if [[ -n "$cpy" && -x "$cpy" ]]; then
    out=$(COMPONENTIZE_PY="$cpy" python-word-f1/build.sh | tail -n 1)
    printf '%s\t%s bytes\n' "$out" "$(wc -c < "$out")"
else
    echo "componentize-py not found: skipped the Python plugin (python-word-f1)" >&2
fi
