#!/usr/bin/env bash
# The main job (README): sets up a fresh machine (Vulkan driver, default models), builds babelrl in
# release mode and generates with the default model. Until the end-to-end GRPO issue lands, the main
# job is chat generation on SmolLM2-135M-Instruct. Extra arguments go to `babelrl generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "no Vulkan driver: install your GPU's Vulkan driver, or mesa-vulkan-drivers + libvulkan1" >&2
    exit 1
  fi
fi
scripts/fetch_models.sh
cargo build --release -q -p babelrl --bin babelrl
if [ $# -eq 0 ]; then
  set -- --chat --prompt "Write a haiku about the ocean." --max-tokens 96
fi
exec target/release/babelrl generate "$@"
