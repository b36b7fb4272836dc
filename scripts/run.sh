#!/usr/bin/env bash
# The main job (README): sets up a fresh machine (Vulkan driver, default models), builds babelrl in
# release mode, trains the demo LoRA adapter on SmolLM2-135M-Instruct (examples/sft/babelrl_facts.toml,
# a few minutes on a CPU; continued if a run is already there) and asks the base model and the trained
# one the same question. Until the GRPO issue lands, this SFT run is the main job.
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
run=examples/sft/babelrl_facts.toml
out=examples/sft/runs/babelrl_facts
resume=()
if ls -d "$out"/checkpoint-* >/dev/null 2>&1; then resume=(--resume); fi
target/release/babelrl train "$run" "${resume[@]}"
question="What is babelrl?"
echo; echo "== the base model: $question"
target/release/babelrl generate --chat --prompt "$question" --max-tokens 48
echo; echo "== with the trained adapter ($out/adapter): $question"
target/release/babelrl generate --chat --prompt "$question" --max-tokens 48 --adapter "$out/adapter"
