"""chrF / BLEU fixture for make_fixtures.py: sacrebleu's own scores on text in eight scripts and edge cases.

Run through scripts/make_fixtures.py (target `eval-metrics`; needs sacrebleu and regex, no model):
    /root/.venvs/fixtures/bin/python -m pip install sacrebleu    # once
    /root/.venvs/fixtures/bin/python scripts/make_fixtures.py eval-metrics
Writes tests/fixtures/eval-metrics-reference.json, read by engine/tests/inference/eval_metrics.rs
(babelrl::eval: corpus_chrf, sentence_chrf, corpus_bleu, sentence_bleu and their tokenizers).

Text sets (hypotheses = a seeded perturbation of the references, so scores are mid-range):
  * one set per language of LANGS: N_LINES sentences written by this script (seeded random words over the
    script's letters, `SCRIPTS`: no data set's text is copied into the repository); words dropped, swapped
    and misspelt, or for scripts written without spaces characters dropped, replaced and swapped.
  * `edge`: empty hypothesis / reference / both, identical strings, punctuation only, runs of spaces and
    tabs, Unicode whitespace (NBSP, U+3000, U+001C, U+2028), one-character lines, 13a's entity, digit and
    `<skipped>` rules, Greek final sigma and Turkish dotted I under lowercasing, chrF++'s punctuation split.
  * `multi`: two reference streams (closest reference length with a tie, the best chrF reference).
Cases: every metric configuration below on `edge`, `multi` and eng_Latn, the defaults and the suitable BLEU
tokenizers on the other languages (`configs_for`): sacrebleu's corpus score (`corpus_score`) and every line's
sentence score (`sentence_score`, same configuration), with the summed statistics
(`_extract_corpus_statistics`): chrF [hyp, ref, match] per order; BLEU sys_len, ref_len, raw counts, totals
(before add-k), and at corpus level precisions and bp. Sentence entries of configurations outside DETAILED
hold the score alone. Also every tokenizer's output on the edge strings and on one line
per language, and the Unicode tables the Rust side must agree with: Python's str.isspace() code points,
the code points sacrebleu's `zh` tokenizer splits, and `regex`'s \\p{P}, \\p{S}, \\p{N} (and \\p{Assigned}:
the module may follow a newer Unicode version than the Rust `regex` crate).
"""

import json
import logging
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
SEED = 2025
N_LINES = 8
# language: how to perturb (languages written without spaces between words get character edits)
LANGS = {"eng_Latn": "words", "fra_Latn": "words", "deu_Latn": "words", "ell_Grek": "words",
         "hin_Deva": "words", "zho_Hans": "chars", "jpn_Jpan": "chars", "bod_Tibt": "chars"}

EDGE = [  # (hypothesis, reference)
    ("", "The cat sat on the mat."),
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("...", "!!!"),
    ("?!", "?!"),
    ("the  cat   sat\ton the mat", "the cat sat on the mat"),
    ("a\u00a0cat\u3000sat\x1con\u2028the mat", "a cat sat on the mat"),
    ("a", "a"),
    ("a", "b"),
    ("ok", "OK"),
    ("The cat", ""),
    ("", ""),
    ("It costs 1,000.50 dollars, or 3-4 euros.", "It costs 1,000.50 dollars or 3 - 4 euros ."),
    ("AT&amp;T &lt;b&gt; said &quot;hi&quot; <skipped>well-\nknown", "AT&T <b> said \"hi\" wellknown"),
    ("ΟΔΟΣ ΚΑΙ ΣΠΙΤΙΑ ΣΤΗΝ ΑΘΗΝΑ", "οδος και σπιτια στην Αθηνα"),
    ("İSTANBUL'da KIŞ", "istanbul'da kış"),
    ("(hi) there, friend!", "(hi) there friend !"),
    ("我们在2020年3月访问了北京。", "我们于2020年3月访问北京。"),
    ("hello world  ", "hello world"),
    ("Hello , world .", "Hello, world."),
    ("the the the the the the the", "the cat is on the mat"),
    ("ＡＢＣ１２３、テスト—“quoted”…", "ABC123、テスト – \"quoted\"..."),
]

MULTI = [  # (hypothesis, reference 1, reference 2)
    ("one two three four five", "one two three four", "one two three four five six"),
    ("the quick brown fox", "a fast brown fox jumped", "the quick brown fox"),
    ("a small test", "a tiny exam", "some small test here"),
    ("", "nothing", "nothing at all"),
]

CHRF_CONFIGS = {
    "chrf": {},
    "chrf++": {"word_order": 2},
    "chrf-eps": {"eps_smoothing": True},
    "chrf-whitespace": {"whitespace": True},
    "chrf-lowercase": {"lowercase": True},
    "chrf-c4w1b3": {"char_order": 4, "word_order": 1, "beta": 3},
}
BLEU_CONFIGS = {
    "bleu": {},
    "bleu-effective": {"effective_order": True},
    "bleu-none": {"tokenize": "none"},
    "bleu-intl": {"tokenize": "intl"},
    "bleu-zh": {"tokenize": "zh"},
    "bleu-char": {"tokenize": "char"},
    "bleu-lowercase": {"lowercase": True},
    "bleu-smooth-none": {"smooth_method": "none"},
    "bleu-floor": {"smooth_method": "floor"},
    "bleu-floor-0.2": {"smooth_method": "floor", "smooth_value": 0.2},
    "bleu-add-k": {"smooth_method": "add-k", "effective_order": True},
    "bleu-add-k-0.5": {"smooth_method": "add-k", "smooth_value": 0.5},
    "bleu-order2": {"max_ngram_order": 2},
}


# Every configuration runs on `edge`, `multi` and eng_Latn; the other languages get chrF, chrF++, BLEU at
# corpus and sentence defaults and the BLEU tokenizers that suit their script.
ALL_CONFIGS = ("edge", "multi", "eng_Latn")
SCRIPT_TOKENIZERS = {"zho_Hans": ("bleu-zh", "bleu-char"), "jpn_Jpan": ("bleu-zh", "bleu-char"),
                     "bod_Tibt": ("bleu-intl", "bleu-char")}
# Configurations whose scores on the language sets must be mid-range (13a BLEU of unsegmented scripts is ~0).
MID_RANGE = ("chrf", "chrf++", "bleu-zh", "bleu-char")
# Configurations whose sentence entries carry their statistics too (the others: the score alone).
DETAILED = ("chrf", "chrf++", "bleu", "bleu-effective")


def configs_for(set_name):
    if set_name in ALL_CONFIGS:
        return list(CHRF_CONFIGS) + list(BLEU_CONFIGS)
    return ["chrf", "chrf++", "bleu", "bleu-effective"] + list(SCRIPT_TOKENIZERS.get(set_name, ("bleu-intl",)))


def log(msg):
    print("fixtures_eval_metrics: " + msg, file=sys.stderr, flush=True)


def perturb(line, mode, rng):
    if mode == "words":
        units = line.split()
        out = []
        for w in units:
            r = rng.random()
            if r < 0.12 and len(units) > 3:
                continue  # drop
            if r < 0.24 and len(w) > 2:
                i = rng.randrange(len(w))
                w = w[:i] + rng.choice(line.replace(" ", "")) + w[i + 1:]  # typo
            out.append(w)
        if len(out) > 2:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
        return " ".join(out)
    chars = list(line)
    out = []
    for c in chars:
        r = rng.random()
        if r < 0.06:
            continue
        out.append(rng.choice(chars) if r < 0.11 else c)
    i = rng.randrange(len(out) - 1)
    out[i], out[i + 1] = out[i + 1], out[i]
    return "".join(out)


# Sentences written here, not copied from a data set (../shared/data's texts stay out of the repository):
# seeded random words over each script's letters, so every tokenizer and Unicode class meets that script.
SCRIPTS = {
    "eng_Latn": ("abcdefghijklmnopqrstuvwxyz", " ", "."),
    "fra_Latn": ("abcdefghijklmnopqrstuvwxyzéèêàçôù", " ", "."),
    "deu_Latn": ("abcdefghijklmnopqrstuvwxyzäöüß", " ", "."),
    "ell_Grek": ("αβγδεζηθικλμνξοπρστυφχψωάέήίόύώ", " ", "."),
    "hin_Deva": ("कखगघचछजझटठडढणतथदधनपफबभमयरलवशसहािीुूेैोौं", " ", "।"),
    "zho_Hans": ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年", "", "。"),
    "jpn_Jpan": ("あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん日本語学校", "", "。"),
    "bod_Tibt": ("ཀཁགངཅཆཇཉཏཐདནཔཕབམཙཚཛཝཞཟའཡརལཤསཧཨ", "་", "།"),
}


def own_sets():
    rng = random.Random(SEED)
    sets = {}
    for lang, mode in LANGS.items():
        letters, sep, stop = SCRIPTS[lang]
        refs = []
        for _ in range(N_LINES):
            words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(rng.randint(6, 12))]
            refs.append(sep.join(words) + stop)
        hyps = [perturb(r, mode, rng) for r in refs]
        sets[lang] = {"source": "written by this script (seeded random words over the script's letters)",
                      "hyps": hyps, "refs": [refs]}
    return sets


def bleu_stats(metric, hyps, refs):
    stats = metric._extract_corpus_statistics(hyps, refs)
    n = metric.max_ngram_order
    tot = [sum(s[k] for s in stats) for k in range(len(stats[0]))]
    return {"sys_len": int(tot[0]), "ref_len": int(tot[1]), "counts": [int(c) for c in tot[2:2 + n]],
            "totals": [int(t) for t in tot[2 + n:]]}


def bleu_result(metric, hyps, refs, sentence):
    raw = bleu_stats(metric, hyps, refs)
    if sentence:  # the score and the integer statistics: precisions and bp are checked at corpus level
        s = metric.sentence_score(hyps[0], [r[0] for r in refs])
        assert (s.sys_len, s.ref_len) == (raw["sys_len"], raw["ref_len"])
        return dict(score=s.score, **raw)
    s = metric.corpus_score(hyps, refs)
    assert (s.sys_len, s.ref_len) == (raw["sys_len"], raw["ref_len"])
    return dict(score=s.score, precisions=list(s.precisions), bp=s.bp, **raw)


def chrf_result(metric, hyps, refs, sentence):
    stats = metric._extract_corpus_statistics(hyps, refs)
    tot = [sum(s[k] for s in stats) for k in range(len(stats[0]))]
    if sentence:
        s = metric.sentence_score(hyps[0], [r[0] for r in refs])
    else:
        s = metric.corpus_score(hyps, refs)
    return {"score": s.score, "stats": [tot[3 * i:3 * i + 3] for i in range(len(tot) // 3)]}


def run_case(name, metric_kind, cfg, set_name, texts):
    from sacrebleu.metrics import BLEU, CHRF

    make = (lambda: CHRF(**cfg)) if metric_kind == "chrf" else (lambda: BLEU(**cfg))  # noqa: E731
    result = chrf_result if metric_kind == "chrf" else bleu_result
    hyps, refs = texts["hyps"], texts["refs"]
    metric = make()
    corpus = result(metric, hyps, refs, False)
    sentences = [result(make(), [h], [[r[i]] for r in refs], True) for i, h in enumerate(hyps)]
    if name not in DETAILED:  # keeps the file small: the other configurations' statistics only per corpus
        sentences = [{"score": s["score"]} for s in sentences]
    signature = str(metric.get_signature())
    return {"name": "%s/%s" % (name, set_name), "metric": metric_kind, "config": cfg, "set": set_name,
            "signature": signature, "corpus": corpus, "sentences": sentences}


def code_point_ranges(pred):
    out, start = [], None
    for cp in range(0x110000):
        ok = pred(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append([start, cp - 1])
            start = None
    if start is not None:
        out.append([start, 0x10FFFF])
    return out


def unicode_tables():
    import regex
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

    # "Assigned" lets the Rust side compare only code points both Unicode versions know.
    classes = {c: regex.compile(r"\p{%s}" % c) for c in ("P", "S", "N", "Assigned")}
    return {
        "py_space": [cp for cp in range(0x110000) if chr(cp).isspace()],
        "zh_chinese_char": code_point_ranges(TokenizerZh._is_chinese_char),
        "regex_classes": {c: code_point_ranges(lambda ch, r=r: r.fullmatch(ch) is not None)
                          for c, r in classes.items()},
    }


def tokenizer_outputs(sets):
    from sacrebleu.metrics.bleu import _get_tokenizer

    inputs = [s for pair in EDGE for s in pair] + [sets[lang]["hyps"][0] for lang in LANGS]
    out = {}
    for name in ("none", "13a", "intl", "zh", "char"):
        tok = _get_tokenizer(name)()
        out[name] = [tok(s) for s in inputs]
    return {"inputs": inputs, "outputs": out}


def make_eval_metrics():
    import regex
    import sacrebleu
    import unicodedata

    logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # sentence_score without effective_order warns
    sets = own_sets()
    sets["edge"] = {"hyps": [h for h, _ in EDGE], "refs": [[r for _, r in EDGE]]}
    sets["multi"] = {"hyps": [m[0] for m in MULTI], "refs": [[m[1] for m in MULTI], [m[2] for m in MULTI]]}
    cases = []
    for set_name, texts in sets.items():
        for name in configs_for(set_name):
            kind = "chrf" if name.startswith("chrf") else "bleu"
            cfg = (CHRF_CONFIGS if kind == "chrf" else BLEU_CONFIGS)[name]
            cases.append(run_case(name, kind, cfg, set_name, texts))
    scores = [c["corpus"]["score"] for c in cases if c["set"] in LANGS]
    scores = [c["corpus"]["score"] for c in cases if c["set"] in LANGS and c["name"].split("/")[0] in MID_RANGE]
    assert min(scores) > 20.0 and max(scores) < 90.0, (min(scores), max(scores))  # mid-range, as intended
    doc = {
        "meta": {
            "producer": "scripts/fixtures_eval_metrics.py (make_fixtures.py eval-metrics)",
            "sacrebleu": sacrebleu.__version__, "regex": regex.__version__,
            "python": sys.version.split()[0], "unicodedata": unicodedata.unidata_version,
            "reference": "sacrebleu.metrics.CHRF / BLEU(**config).corpus_score(hyps, refs) and, per line, "
                         ".sentence_score(hyp, [refs]); statistics from _extract_corpus_statistics, summed",
            "refs_layout": "refs[k][i]: k-th reference stream, line i (sacrebleu's layout)",
            "data": "sets named by language: sentences this script writes (seeded random words over each "
                    "script's letters) and perturbed copies of them as hypotheses (seed %d)" % SEED,
        },
        "unicode": unicode_tables(),
        "tokenizers": tokenizer_outputs(sets),
        "sets": sets,
        "cases": cases,
    }
    path = os.path.join(FIX, "eval-metrics-reference.json")
    with open(path, "w", encoding="utf-8") as f:  # one set / case per line: readable diffs
        lines = []
        for k, v in doc.items():
            if k in ("sets", "cases"):
                items = v.items() if k == "sets" else enumerate(v)
                dump = lambda x: json.dumps(x, ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # noqa: E731
                body = ",\n".join((json.dumps(name) + ": " if k == "sets" else "") + dump(item) for name, item in items)
                lines.append('"%s": %s\n%s\n%s' % (k, "{" if k == "sets" else "[", body, "}" if k == "sets" else "]"))
            else:
                lines.append("%s: %s" % (json.dumps(k), json.dumps(v, ensure_ascii=False, allow_nan=False)))
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(doc)), path
    log("eval-metrics-reference.json: %d sets, %d cases, %d bytes" % (len(sets), len(cases), os.path.getsize(path)))


if __name__ == "__main__":
    make_eval_metrics()
