#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need on a fresh machine — Mesa's software
# Vulkan driver, the wasm32-wasip2 target, the default models — then builds the plugins and runs every
# test of the workspace and of the plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"   # silences Mesa's warning
export CARGO_TERM_COLOR=never
# A CI build is built once: incremental state would only take disk.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

need_vulkan() { ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; }
if need_vulkan; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Mesa's Vulkan drivers (lavapipe)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "no Vulkan driver: install mesa-vulkan-drivers and libvulkan1 (or a GPU driver)" >&2
    exit 1
  fi
fi

echo "== wasm targets"
rustup target add wasm32-wasip2 >/dev/null

echo "== models"
scripts/fetch_models.sh --with-qwen

# Every test must run: a missing model, plugin or wasm target fails instead of skipping.
export BABELRL_REQUIRE_ALL=1
# The tests run the shipped path, shader modules without naga's runtime checks (tests/inference/trusted.rs
# compares them with checked ones itself).
unset BABELRL_SHADER_CHECKS

echo "== plugins"
# componentize-py (PyPI) builds the Python example plugin; kept in a venv in the cache, outside git.
cpy_venv="${BABELRL_CACHE:-$HOME/.cache/babelrl}/venv-componentize"
if [ ! -x "$cpy_venv/bin/componentize-py" ]; then
  python3 -m venv "$cpy_venv" && "$cpy_venv/bin/pip" install -q componentize-py==0.25.1
fi
export COMPONENTIZE_PY="$cpy_venv/bin/componentize-py"
plugins/build.sh

echo "== tests"
(cd plugins/python-word-f1 && python3 -m unittest 2>&1)
(cd plugins && cargo test --no-fail-fast 2>&1)
cargo test --workspace --no-fail-fast 2>&1
# The kernels once more with every grid folded as if the adapter allowed one workgroup per dimension, so
# the folded indices of every kernel (inference, backward, LoRA, optimizer) are checked on lavapipe too.
BABELRL_MAX_WORKGROUPS=1 cargo test -p babelrl --test inference --no-fail-fast -- kernels train_optim 2>&1
