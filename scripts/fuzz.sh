#!/usr/bin/env bash
# Long fuzzing runs of everything the engine reads from files (GGUF, safetensors + config.json, encoder
# folders, tokenizer.json + chat templates, JSONL data sets, TOML run files; what `babelrl train` reads:
# run files, SFT data, checkpoints) and of the example routers' load_state. The same harness runs
# briefly, with a fixed seed, in the test suite (engine/tests/inference/fuzz_loaders.rs and
# fuzz_loaders/train.rs, plugins' corrupt_states_are_refused_or_harmless).
#
#   scripts/fuzz.sh                 # every target × 100 cases of the CI run, a random seed
#   scripts/fuzz.sh 1000 gguf       # × 1000, only the targets whose test name contains "gguf"
#   scripts/fuzz.sh 100 train::     # × 100, only run files, SFT data and checkpoints (fuzz_loaders::train::)
#   BABELRL_FUZZ_SEED=123 scripts/fuzz.sh 10 toml   # replay a failure printed with its seed
#
# A failure prints the smallest input proptest found (shrunk edits of the seed file), what broke (a
# panic, an error that does not name the file, one allocation out of proportion to the file) and the
# seed. Debug build on purpose: integer overflow checks are on.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
scale="${1:-100}"
filter="${2:-}"
seed="${BABELRL_FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
echo "fuzz: case counts × $scale, seed $seed (replay: BABELRL_FUZZ_SEED=$seed scripts/fuzz.sh $scale $filter)"
BABELRL_FUZZ_SCALE="$scale" BABELRL_FUZZ_SEED="$seed" \
  cargo test -p babelrl --test inference "fuzz_loaders::${filter}" -- --nocapture --test-threads=1
if [ -z "$filter" ] || [[ "router" == *"$filter"* ]]; then
  (cd plugins && cargo test corrupt_states -- --nocapture)
fi
