#!/usr/bin/env bash
# Compares LRPO (examples/lrpo/mgsm.toml, the lrpo-softmax router) with fixed routing
# (examples/lrpo/fixed.toml, every rollout in the question's language) at the same rollout budget: prepares
# MGSM, builds the plugins if needed, trains both runs for STEPS steps from the same seed and prints their
# rewards side by side from each run's metrics.jsonl: mean and final (last quarter of the steps) total
# reward, exact-match and language-consistency rates, the router's last shares and the wall time.
#
#   scripts/compare_lrpo.sh [STEPS]          (default 20)
#
# Environment: BABELRL (the binary; default target/release/babelrl, built if absent), OUT (the runs'
# folder; default examples/lrpo/runs/compare), and for a quick check of the script on a slow machine
# GENERATIONS, PROMPTS, COMPLETION_TOKENS (override num_generations, prompts_per_step and
# max_completion_length in both runs alike).
# Then both adapters (and the base model) are evaluated on held-out MGSM questions
# (examples/data/mgsm/test.LANG.jsonl, EVAL_LANGUAGE default en, EVAL_LIMIT default 50) with `babelrl eval`:
# exact-match accuracy and the language-consistency rate.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
steps="${1:-20}"
out="${OUT:-$root/examples/lrpo/runs/compare}"
bin="${BABELRL:-$root/target/release/babelrl}"

[[ -f examples/data/mgsm/train.en.jsonl ]] || python3 scripts/prepare_data.py mgsm
for p in exact_match language_consistency lrpo_softmax fixed; do
    [[ -f "plugins/target/wasm32-wasip2/release/$p.wasm" ]] || { plugins/build.sh >/dev/null; break; }
done
[[ -x "$bin" ]] || cargo build --release -p babelrl
mkdir -p "$out"

# The run files with absolute paths (they are written into OUT) and the overrides.
configure() {
    local name=$1 src=$2 dst="$out/$1.toml"
    sed -e "s|\"\\.\\./data/|\"$root/examples/data/|" \
        -e "s|\"\\.\\./\\.\\./plugins/|\"$root/plugins/|" \
        -e "s|^dir = .*|dir = \"$out/$name\"|" \
        -e "s|^max_steps = .*|max_steps = $steps|" \
        ${GENERATIONS:+-e "s|^num_generations = .*|num_generations = $GENERATIONS|"} \
        ${PROMPTS:+-e "s|^prompts_per_step = .*|prompts_per_step = $PROMPTS|"} \
        ${COMPLETION_TOKENS:+-e "s|^max_completion_length = .*|max_completion_length = $COMPLETION_TOKENS|"} \
        "$src" > "$dst"
    echo "$dst"
}

declare -A seconds
for name in lrpo fixed; do
    src=examples/lrpo/mgsm.toml
    [[ $name == fixed ]] && src=examples/lrpo/fixed.toml
    run=$(configure "$name" "$src")
    rm -rf "${out:?}/$name"
    echo "== $name: $steps steps ($run)" >&2
    start=$(date +%s)
    "$bin" train "$run" >&2
    seconds[$name]=$(( $(date +%s) - start ))
done

python3 - "$out" "${seconds[lrpo]}" "${seconds[fixed]}" <<'PY'
import json, sys
out, secs = sys.argv[1], {"lrpo": sys.argv[2], "fixed": sys.argv[3]}

def summary(name):
    lines = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if l.strip()]
    tail = lines[-max(1, len(lines) // 4):]
    mean = lambda rows, f: sum(f(r) for r in rows) / len(rows)
    plugin = lambda key: (lambda r: r["rewards"].get(key) or 0.0)
    shares = {}
    for r in tail:
        for lang, s in (r.get("router_shares") or {}).items():
            shares[lang] = shares.get(lang, 0.0) + s / len(tail)
    return {
        "steps": len(lines),
        "reward (mean)": mean(lines, lambda r: r["reward"]),
        "reward (final)": mean(tail, lambda r: r["reward"]),
        "exact match (mean)": mean(lines, plugin("exact")),
        "exact match (final)": mean(tail, plugin("exact")),
        "language consistency (mean)": mean(lines, plugin("language")),
        "router shares (final)": " ".join(f"{l} {s:.2f}" for l, s in sorted(shares.items(), key=lambda x: -x[1]) if s > 0),
        "wall seconds": secs[name],
    }

a, b = summary("lrpo"), summary("fixed")
print(f"{'':30} {'LRPO (lrpo-softmax)':>28} {'fixed routing':>28}")
for key in a:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    print(f"{key:30} {fmt(a[key]):>28} {fmt(b[key]):>28}")
print("(final = mean of the last quarter of the steps; training rewards, not held-out accuracy)")
PY

lang="${EVAL_LANGUAGE:-en}"
echo "== held-out: examples/data/mgsm/test.$lang.jsonl (base, lrpo, fixed)"
"$bin" eval "examples/data/mgsm/test.$lang.jsonl" --metrics exact,language --limit "${EVAL_LIMIT:-50}" \
    --max-new-tokens "${COMPLETION_TOKENS:-192}" --adapter "lrpo=$out/lrpo/adapter" \
    --adapter "fixed=$out/fixed/adapter" --json "$out/eval.json"
