#!/usr/bin/env bash
# babelrl and its PyTorch peer on the same model and the same shapes, one after the other in the same run.
# Usage: scripts/bench.sh [--model PATH] [--prompt-tokens N] [--decode-tokens N] [--batch 1,8]
#                         [--no-gemm | --gemm-only] [--profile]
#                         [--train | --train-only] [--train-batch 8] [--train-tokens 256] [--train-steps 3]
#                         [--grpo | --grpo-only] [--grpo-prompt-tokens 64] [--grpo-completion-tokens 64]
#                         [--grpo-generations 8] [--grpo-steps 3] [--grpo-beta 0.0]
#                         [--reward | --reward-only] [--reward-base DIR] [--reward-pairs 8] [--reward-tokens 256]
#                         [--reward-steps 2] [--dpo | --dpo-only] [--dpo-pairs 8] [--dpo-prompt-tokens 64]
#                         [--dpo-completion-tokens 192] [--dpo-steps 2] [--dpo-beta 0.1]
#                         [--best-of-n | --best-of-n-only] [--best-of-n-prompts 2] [--best-of-n-samples 4]
#                         [--best-of-n-tokens 32]
# Every option goes to both sides (scripts/bench_pytorch.py accepts babelrl bench's options and ignores
# --profile), so the peer measures exactly the shapes babelrl does. --train adds the SFT row (LoRA r 16 on
# all seven projections, with and without gradient checkpointing); --train-only runs nothing else. --grpo adds
# the GRPO-step row after everything else (the peer: TRL's GRPOTrainer, same LoRA, one prompt × N completions
# of a fixed length; s/step split into rollout / reward / reference / update, new tokens/s, peak memory);
# --grpo-only runs nothing else. --reward / --dpo / --best-of-n add, last, a reward-model step (TRL RewardTrainer),
# a DPO step (TRL DPOTrainer, reference = adapter off) and best-of-n with a reward-model judge (completions
# scored/s); their --*-only flags combine with each other and skip everything else; the reward model's base is
# --reward-base (default: --model when it is a Hugging Face folder).
# The peer needs torch + transformers (+ peft for --train, peft + trl for --grpo, --reward, --dpo):
# BABELRL_PEER_PYTHON names the interpreter (default: the fixtures venv).
# Each side's tables print as it runs; at the end one table puts every figure of babelrl beside the
# peer's figure of the same name with their ratio (scripts/bench_table.py on the two sides' JSON, kept
# in BENCH_OUT when set, else in a temporary folder; do not pass --json yourself).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
out="${BENCH_OUT:-$(mktemp -d)}"
mkdir -p "$out"
cargo run --release -q -p babelrl --bin babelrl -- bench "$@" --json "$out/babelrl.json"
echo
PY="${BABELRL_PEER_PYTHON:-/root/.venvs/fixtures/bin/python}"
if "$PY" -c "import torch, transformers" 2>/dev/null; then
  "$PY" scripts/bench_pytorch.py "$@" --json "$out/peer.json"
  echo
  echo "Side by side (babelrl ÷ peer: above 1 is faster for rates, slower for seconds):"
  python3 scripts/bench_table.py "$out/babelrl.json" "$out/peer.json"
else
  echo "peer skipped: no python with torch + transformers at $PY (set BABELRL_PEER_PYTHON)"
fi
