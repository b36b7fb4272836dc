#!/usr/bin/env bash
# Reproduces the rows of docs/RESULTS.md: each part prepares its data, trains, evaluates on held-out data
# and prints what the table reports. The sizes default to what ran on the 2-core lavapipe machine the
# table was measured on; raise them on a GPU (the environment variables below).
#
#   scripts/results.sh rm          reward models on en and on zh pairs, each evaluated on en and zh pairs
#   scripts/results.sh best-of-n   best-of-N by the en reward model vs greedy on zh prompts, judged by the zh one
#   scripts/results.sh dpo         on-policy DPO on zh prompts ranked by the en reward model, vs the base
#   scripts/results.sh lrpo        LRPO vs fixed-language routing on MGSM (scripts/compare_lrpo.sh)
#   scripts/results.sh recipe      the semantic-reward recipe, SFT alone vs SFT + GRPO (scripts/semantic_recipe.sh)
#   scripts/results.sh all
#
# Environment: BABELRL (the binary; default target/release/babelrl, built if absent), PYTHON (with torch,
# transformers and gguf, for scripts/gguf_to_hf.py; default python3), OUT (default examples/results/runs),
# RM_STEPS (8), RM_BATCH (4 pairs), EVAL_PAIRS (40 a language), BON_N (4), BON_PROMPTS (16),
# MAX_TOKENS (64, best-of-n and DPO evaluation), DPO_STEPS (6); lrpo and recipe take the variables of their
# scripts (STEPS for lrpo, default 8 here).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
bin="${BABELRL:-$root/target/release/babelrl}"
python="${PYTHON:-python3}"
out="${OUT:-$root/examples/results/runs}"
data="$root/examples/data"
pref="$data/preference"
mkdir -p "$out"

need_binary() { [[ -x "$bin" ]] || cargo build --release -q -p babelrl --bin babelrl; }

prepare_preference() {
    # Cut so that both languages fit SmolLM2's tokenizer in ~250–450 tokens a side (Chinese takes ~2.5
    # tokens a character there): the last 300 / 60 characters of the prompt, the first 400 / 90 of each side.
    [[ -f "$pref/train.en.jsonl" ]] ||
        python3 scripts/prepare_data.py preference --languages en --prompt-chars 300 --side-chars 400 --max-chars 1200
    [[ -f "$pref/train.zh.jsonl" ]] ||
        python3 scripts/prepare_data.py preference --languages zh --prompt-chars 60 --side-chars 90 --max-chars 500
    [[ -f "$data/smollm2-135m-instruct-hf/config.json" ]] ||
        "$python" scripts/gguf_to_hf.py "" "$data/smollm2-135m-instruct-hf"
}

# A run file of examples/results with its sizes and output folder set.
configured() {
    local src=$1 name=$2
    shift 2
    sed -e "s|\"\\.\\./data/|\"$data/|" -e "s|^dir = .*|dir = \"$out/$name\"|" \
        -e "s|^path = \"runs/|path = \"$out/|" "$@" "examples/results/$src" > "$out/$name.toml"
    echo "$out/$name.toml"
}

part_rm() {
    prepare_preference
    need_binary
    for lang in en zh; do
        [[ -f "$out/rm-$lang/reward-model/adapter_config.json" ]] && continue
        run=$(configured "rm_$lang.toml" "rm-$lang" -e "s|^max_steps = .*|max_steps = ${RM_STEPS:-8}|" \
            -e "s|^per_device_train_batch_size = .*|per_device_train_batch_size = ${RM_BATCH:-4}|")
        rm -rf "${out:?}/rm-$lang"
        "$bin" train "$run"
    done
    for model in en zh; do
        for lang in en zh; do
            echo "== reward model trained on $model pairs, held-out $lang pairs"
            "$bin" eval --reward-model "$out/rm-$model/reward-model" --data "$pref/test.$lang.jsonl" \
                --limit "${EVAL_PAIRS:-40}" --json "$out/rm-$model-on-$lang.json"
        done
    done
}

# Greedy (best of 1) and best-of-N completions of the first BON_PROMPTS zh test prompts, each scored by
# the en reward model; then the zh reward model judges best-of-N against greedy on the prompts where they
# differ (pairwise accuracy with best-of-N as `chosen` = its win rate).
part_best_of_n() {
    need_binary
    local prompts="$out/bon-prompts.zh.jsonl" n="${BON_N:-4}"
    head -n "${BON_PROMPTS:-16}" "$pref/prompts.test.zh.jsonl" > "$prompts"
    local common=(generate --prompts "$prompts" --chat --max-tokens "${MAX_TOKENS:-64}" --jsonl
        --reward-model "$out/rm-en/reward-model")
    "$bin" "${common[@]}" --best-of 1 > "$out/bon-greedy.jsonl"
    "$bin" "${common[@]}" --best-of "$n" --temperature 0.8 --seed 0 > "$out/bon-best.jsonl"
    judge "$out/bon-greedy.jsonl" "$out/bon-best.jsonl" "$out/bon" "best-of-$n" "greedy"
}

# On-policy DPO from the base, then greedy completions of the zh test prompts by the base and by the DPO
# adapter, scored by the en reward model (the training judge) and compared by the zh one.
part_dpo() {
    need_binary
    if [[ ! -f "$out/dpo-zh/adapter/adapter_config.json" ]]; then
        run=$(configured dpo_zh.toml dpo-zh -e "s|^max_steps = .*|max_steps = ${DPO_STEPS:-6}|")
        rm -rf "${out:?}/dpo-zh"
        "$bin" train "$run"
    fi
    local prompts="$out/dpo-prompts.zh.jsonl"
    head -n "${BON_PROMPTS:-16}" "$pref/prompts.test.zh.jsonl" > "$prompts"
    local common=(generate --prompts "$prompts" --chat --max-tokens "${MAX_TOKENS:-64}" --jsonl --best-of 1
        --reward-model "$out/rm-en/reward-model")
    "$bin" "${common[@]}" > "$out/dpo-base.jsonl"
    "$bin" "${common[@]}" --adapter "$out/dpo-zh/adapter" > "$out/dpo-policy.jsonl"
    judge "$out/dpo-base.jsonl" "$out/dpo-policy.jsonl" "$out/dpo" "DPO" "base"
}

# judge A.jsonl B.jsonl PREFIX NAME_B NAME_A: mean en-RM score of each side, and the zh RM's win rate of B
# over A on the prompts where their texts differ.
judge() {
    local a=$1 b=$2 prefix=$3 name_b=$4 name_a=$5
    python3 - "$a" "$b" "$prefix.pairs.jsonl" "$name_a" "$name_b" <<'PY'
import json, sys
a_path, b_path, pairs_path, name_a, name_b = sys.argv[1:]
rows_a = [json.loads(l) for l in open(a_path) if l.strip()]
rows_b = [json.loads(l) for l in open(b_path) if l.strip()]
best = lambda r: r["completions"][r["best"]]
mean = lambda rows: sum(r["best_score"] for r in rows) / len(rows)
print(f"en reward model, mean score of the kept completion: {name_a} {mean(rows_a):.4f}, {name_b} {mean(rows_b):.4f}"
      f" ({len(rows_a)} prompts)")
with open(pairs_path, "w") as f:
    same = 0
    for ra, rb in zip(rows_a, rows_b):
        if best(ra)["text"].strip() == best(rb)["text"].strip():
            same += 1
            continue
        f.write(json.dumps({"prompt": [{"role": "user", "content": ra["prompt"]}],
                            "chosen": [{"role": "assistant", "content": best(rb)["text"]}],
                            "rejected": [{"role": "assistant", "content": best(ra)["text"]}],
                            "language": "zh"}, ensure_ascii=False) + "\n")
print(f"{same} prompts with the same text on both sides (ties, left out of the win rate)")
PY
    if [[ -s "$prefix.pairs.jsonl" ]]; then
        echo "== win rate of $name_b over $name_a judged by the zh reward model (accuracy = share of prompts won)"
        "$bin" eval --reward-model "$out/rm-zh/reward-model" --data "$prefix.pairs.jsonl" --json "$prefix.judge.json"
    fi
}

part_lrpo() {
    need_binary
    BABELRL="$bin" OUT="$out/lrpo" GENERATIONS="${GENERATIONS:-8}" PROMPTS="${PROMPTS:-1}" \
        COMPLETION_TOKENS="${COMPLETION_TOKENS:-96}" EVAL_LIMIT="${EVAL_LIMIT:-30}" \
        scripts/compare_lrpo.sh "${STEPS:-8}"
}

part_recipe() {
    EVAL_LIMIT="${EVAL_LIMIT:-50}" scripts/semantic_recipe.sh
}

case "${1:-}" in
    rm) part_rm ;;
    best-of-n) part_best_of_n ;;
    dpo) part_dpo ;;
    lrpo) part_lrpo ;;
    recipe) part_recipe ;;
    all) part_rm; part_best_of_n; part_dpo; part_lrpo; part_recipe ;;
    *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
