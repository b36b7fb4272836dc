#!/usr/bin/env bash
# The main job (README): sets up a fresh machine (Vulkan driver, wasm32-wasip2 target, default models),
# builds babelrl and the reward plugins in release mode, then runs a short GRPO job with a plugin reward on
# SmolLM2-135M-Instruct (examples/grpo/short_answers.toml: length-guard and semantic-similarity reward short
# answers that mean what the reference answer means; about 7 minutes on a CPU through lavapipe, continued if
# a run is already there), prints the reward of every step, and asks the base model and the trained
# adapter the same question.
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
rustup target add wasm32-wasip2 >/dev/null
scripts/fetch_models.sh
cargo build --release -q -p babelrl --bin babelrl
plugins/build.sh >/dev/null
run=examples/grpo/short_answers.toml
out=examples/grpo/runs/short_answers
resume=()
if ls -d "$out"/checkpoint-* >/dev/null 2>&1; then resume=(--resume); fi
target/release/babelrl train "$run" "${resume[@]}"
echo; echo "== reward per step ($out/metrics.jsonl; babelrl plot draws it)"
python3 - "$out/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    print(f"step {r['step']:3d}  reward {r['reward']:.3f}  {'#' * round(40 * max(r['reward'], 0))}")
k = min(3, len(rows) // 2)
if k:
    first = sum(r["reward"] for r in rows[:k]) / k
    last = sum(r["reward"] for r in rows[-k:]) / k
    print(f"mean reward: first {k} steps {first:.3f}, last {k} steps {last:.3f}")
PY
question="What colour is the sea?"
echo; echo "== the base model: $question"
target/release/babelrl generate --chat --prompt "$question" --max-tokens 32
echo; echo "== with the trained adapter ($out/adapter): $question"
target/release/babelrl generate --chat --prompt "$question" --max-tokens 32 --adapter "$out/adapter"
