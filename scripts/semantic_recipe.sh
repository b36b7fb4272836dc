#!/usr/bin/env bash
# The semantic-reward recipe end to end (docs/training.md, "The semantic-reward recipe"): prepares the
# FLORES pair, trains examples/semantic/recipe.toml (cold-start SFT, then GRPO from the SFT adapter;
# continued with --resume if a run is already there), and evaluates base, SFT and SFT+GRPO on devtest.
# Usage: scripts/semantic_recipe.sh [SRC TGT]   (FLORES codes; default eng_Latn zho_Hans. Another pair
# also needs the data paths in the run file changed, and for Tibetan an [encoder] that knows it.)
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
src="${1:-eng_Latn}"
tgt="${2:-zho_Hans}"
run=examples/semantic/recipe.toml
out=examples/semantic/runs/recipe
data="examples/data/flores/$src-$tgt"

if ! grep -q "flores/$src-$tgt/" "$run"; then
  echo "$run reads another language pair: point its [sft] and [grpo] data at $data/" >&2
  exit 1
fi
python3 scripts/prepare_data.py flores --src "$src" --tgt "$tgt" --sft-lines 200
for p in semantic_similarity language_consistency length_guard; do
  [ -f "plugins/target/wasm32-wasip2/release/$p.wasm" ] || { plugins/build.sh; break; }
done
cargo build --release -q -p babelrl --bin babelrl
babelrl=target/release/babelrl

resume=()
if ls -d "$out"/sft/checkpoint-* "$out"/grpo/checkpoint-* >/dev/null 2>&1; then resume=(--resume); fi
"$babelrl" train "$run" "${resume[@]}"

# Base vs SFT vs SFT+GRPO on FLORES devtest (never trained on).
"$babelrl" eval "$data/devtest.jsonl" --limit "${EVAL_LIMIT:-200}" --bleu-tokenize zh \
    --adapter "sft=$out/sft-adapter" --adapter "grpo=$out/adapter" --json "$out/eval.json"
