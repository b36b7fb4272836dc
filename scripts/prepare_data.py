#!/usr/bin/env python3
"""prepare_data.py - turn ../shared/data sets into the JSONL files babelrl's run files and `babelrl eval` read.

The data stay where they are; this writes derived JSONL (gitignored) under --out (default examples/data):

  mgsm     mgsm/train.LANG.jsonl, mgsm/test.LANG.jsonl for every MGSM language: one chat prompt per question,
           `reference` = the answer (thousands commas stripped), `language` = LANG, `id` = "mgsm-N" (the same
           id in every language, so a question can be matched across languages). The first --mgsm-train
           questions (default 200 of 250) go to train, the rest to test.
  flores   flores/SRC-TGT/{sft,grpo,devtest}.jsonl for one language pair: FLORES dev lines split into a
           cold-start SFT part (the first --sft-lines, conversational prompt-completion) and GRPO prompts
           (the rest), and devtest prompts for evaluation; every prompt asks for a translation into TGT,
           `reference` = the TGT line, `language` = TGT, `source` = the SRC line.
  preference
           preference/{train,test}.{en,zh}.jsonl from LLaMA-Factory's DPO demo pairs (LLaMA-Factory's pairwise
           format, which `babelrl train` and `babelrl eval --reward-model` read as it is, plus `language`),
           keeping the pairs whose prompt plus longer side has at most --max-chars characters (a stand-in
           for a token limit: TRL's RewardTrainer drops pairs over max_length tokens) after optional cuts
           (--prompt-chars keeps the end of the last prompt turn, --side-chars the start of each side; pairs
           whose cut sides become equal are dropped), per --languages (default en,zh), the first
           --test-share of them (default 0.25) as test, the rest as train; also the single-turn pairs' prompts
           alone, with the chosen answer as `reference`: prompts.SPLIT.LANG.jsonl (text, for `babelrl generate
           --prompts … --chat`) and chat_prompts.SPLIT.LANG.jsonl (chat messages, for [dpo] / [grpo] runs).

Reads $BABELRL_DATA (default ../shared/data next to the repository). Python 3 standard library only.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("BABELRL_DATA", os.path.join(ROOT, "..", "shared", "data"))

# FLORES codes -> the language's English name, for the translation instruction.
LANGUAGE_NAMES = {
    "bod_Tibt": "Tibetan", "dzo_Tibt": "Dzongkha", "zho_Hans": "Simplified Chinese",
    "zho_Hant": "Traditional Chinese", "yue_Hant": "Cantonese", "eng_Latn": "English", "uig_Arab": "Uyghur",
    "khm_Khmr": "Khmer", "amh_Ethi": "Amharic", "tir_Ethi": "Tigrinya", "hin_Deva": "Hindi",
    "npi_Deva": "Nepali", "swh_Latn": "Swahili", "fra_Latn": "French", "deu_Latn": "German",
    "spa_Latn": "Spanish", "por_Latn": "Portuguese", "jpn_Jpan": "Japanese", "kor_Hang": "Korean",
    "rus_Cyrl": "Russian", "khk_Cyrl": "Mongolian", "kaz_Cyrl": "Kazakh", "tha_Thai": "Thai", "lao_Laoo": "Lao",
    "mya_Mymr": "Burmese", "arb_Arab": "Arabic", "urd_Arab": "Urdu", "pbt_Arab": "Pashto", "heb_Hebr": "Hebrew",
    "ell_Grek": "Greek", "kat_Geor": "Georgian", "ben_Beng": "Bengali", "tel_Telu": "Telugu", "tam_Taml": "Tamil",
    "sin_Sinh": "Sinhala", "vie_Latn": "Vietnamese", "ind_Latn": "Indonesian", "tur_Latn": "Turkish",
    "yor_Latn": "Yoruba",
}


def fail(message):
    print(f"prepare_data.py: {message}", file=sys.stderr)
    sys.exit(1)


def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except OSError as e:
        fail(f"{path}: {e.strerror} (set BABELRL_DATA to the folder holding mgsm/ and flores200/)")


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"wrote {len(rows):5d} rows to {os.path.relpath(path)}")


def user(content):
    return [{"role": "user", "content": content}]


def mgsm(args):
    folder = os.path.join(DATA, "mgsm")
    files = sorted(f for f in os.listdir(folder) if f.startswith("mgsm_") and f.endswith(".tsv")) \
        if os.path.isdir(folder) else []
    if not files:
        fail(f"{folder}: no mgsm_LANG.tsv files (set BABELRL_DATA)")
    for name in files:
        lang = name[len("mgsm_"):-len(".tsv")]
        rows = []
        for n, line in enumerate(read_lines(os.path.join(folder, name)), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                fail(f"{folder}/{name}: line {n} has no tab between question and answer")
            question, answer = line.rsplit("\t", 1)
            rows.append({"prompt": user(question.strip()), "reference": answer.strip().replace(",", ""),
                         "language": lang, "id": f"mgsm-{len(rows)}"})
        cut = min(args.mgsm_train, len(rows))
        write_jsonl(os.path.join(args.out, "mgsm", f"train.{lang}.jsonl"), rows[:cut])
        write_jsonl(os.path.join(args.out, "mgsm", f"test.{lang}.jsonl"), rows[cut:])


def flores(args):
    for code in (args.src, args.tgt):
        if code not in LANGUAGE_NAMES:
            fail(f"unknown FLORES code `{code}`; one of: {', '.join(sorted(LANGUAGE_NAMES))}")
    target_name = LANGUAGE_NAMES[args.tgt]

    def pairs(split):
        src = read_lines(os.path.join(DATA, "flores200", split, f"{args.src}.{split}"))
        tgt = read_lines(os.path.join(DATA, "flores200", split, f"{args.tgt}.{split}"))
        if len(src) != len(tgt):
            fail(f"flores200/{split}: {args.src} has {len(src)} lines, {args.tgt} {len(tgt)}: not aligned")
        return list(zip(src, tgt))

    def prompt(source):
        return user(f"Translate into {target_name}:\n{source}")

    def grpo_row(n, source, target):
        return {"prompt": prompt(source), "reference": target, "language": args.tgt, "source": source,
                "id": f"flores-{n}"}

    dev = pairs("dev")
    if not 0 <= args.sft_lines < len(dev):
        fail(f"--sft-lines {args.sft_lines}: FLORES dev has {len(dev)} lines; leave some for GRPO")
    out = os.path.join(args.out, "flores", f"{args.src}-{args.tgt}")
    sft = [{"prompt": prompt(s), "completion": [{"role": "assistant", "content": t}]}
           for s, t in dev[:args.sft_lines]]
    write_jsonl(os.path.join(out, "sft.jsonl"), sft)
    write_jsonl(os.path.join(out, "grpo.jsonl"),
                [grpo_row(n, s, t) for n, (s, t) in enumerate(dev[args.sft_lines:], args.sft_lines)])
    write_jsonl(os.path.join(out, "devtest.jsonl"), [grpo_row(n, s, t) for n, (s, t) in enumerate(pairs("devtest"))])


def preference(args):
    for lang in args.languages.split(","):
        path = os.path.join(DATA, "preference", f"llamafactory_dpo_{lang}_demo.json")
        try:
            with open(path, encoding="utf-8") as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            fail(f"{path}: {e} (set BABELRL_DATA to the folder holding preference/)")

        def chars(row):
            prompt = sum(len(turn["value"]) for turn in row["conversations"])
            return prompt + max(len(row["chosen"]["value"]), len(row["rejected"]["value"]))

        def cut(row):
            row = json.loads(json.dumps(row))
            if args.prompt_chars:
                last = row["conversations"][-1]
                last["value"] = last["value"][-args.prompt_chars:]
            if args.side_chars:
                for side in ("chosen", "rejected"):
                    row[side]["value"] = row[side]["value"][:args.side_chars]
            return row

        rows = [cut(row) for row in rows]
        kept = [dict(row, language=lang, id=f"pref-{lang}-{n}") for n, row in enumerate(rows)
                if chars(row) <= args.max_chars and row["chosen"]["value"].strip() != row["rejected"]["value"].strip()]
        cut = int(round(len(kept) * args.test_share))
        test, train = kept[:cut], kept[cut:]
        out = os.path.join(args.out, "preference")
        write_jsonl(os.path.join(out, f"train.{lang}.jsonl"), train)
        write_jsonl(os.path.join(out, f"test.{lang}.jsonl"), test)
        for split, part in (("train", train), ("test", test)):
            single = [row for row in part if len(row["conversations"]) == 1]
            # Text prompts for `babelrl generate --prompts … --chat`; chat prompts for [dpo] / [grpo] runs.
            write_jsonl(os.path.join(out, f"prompts.{split}.{lang}.jsonl"),
                        [{"prompt": row["conversations"][0]["value"], "reference": row["chosen"]["value"],
                          "language": lang, "id": row["id"]} for row in single])
            write_jsonl(os.path.join(out, f"chat_prompts.{split}.{lang}.jsonl"),
                        [{"prompt": user(row["conversations"][0]["value"]), "reference": row["chosen"]["value"],
                          "language": lang, "id": row["id"]} for row in single])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "examples", "data"), help="output folder")
    sub = parser.add_subparsers(dest="set", required=True)
    m = sub.add_parser("mgsm", help="MGSM questions per language, train/test split")
    m.add_argument("--mgsm-train", type=int, default=200, help="questions in the train split (rest: test)")
    f = sub.add_parser("flores", help="one FLORES language pair: SFT, GRPO and devtest JSONL")
    f.add_argument("--src", default="eng_Latn", help="source language (FLORES code)")
    f.add_argument("--tgt", default="zho_Hans", help="target language (FLORES code)")
    f.add_argument("--sft-lines", type=int, default=200, help="dev lines for the cold-start SFT")
    p = sub.add_parser("preference", help="LLaMA-Factory DPO pairs, en and zh: train/test JSONL with `language`")
    p.add_argument("--max-chars", type=int, default=100000, help="longest prompt + longer side kept, in characters")
    p.add_argument("--prompt-chars", type=int, default=0, help="keep the last N characters of the last prompt turn")
    p.add_argument("--side-chars", type=int, default=0, help="keep the first N characters of each side")
    p.add_argument("--languages", default="en,zh", help="comma-separated: en, zh")
    p.add_argument("--test-share", type=float, default=0.25, help="share of the kept pairs held out as test")
    args = parser.parse_args()
    {"mgsm": mgsm, "flores": flores, "preference": preference}[args.set](args)


if __name__ == "__main__":
    main()
