//! chrF, chrF++ and BLEU (`babelrl::eval`) against sacrebleu 2.6: tests/fixtures/eval-metrics-reference.json,
//! made by scripts/fixtures_eval_metrics.py from sacrebleu's own `corpus_score` / `sentence_score` on
//! text in 8 scripts written by the fixture script (perturbed hypotheses), edge cases and a two-reference set. Every corpus
//! and sentence score within 1e-9 (and every count exact), every tokenizer's output exact, the Unicode
//! tables the tokenizers rely on (Python's whitespace, sacrebleu's `zh` table, `\p{P}`, `\p{S}`, `\p{N}`),
//! the errors for bad input, and two deliberately wrong metrics (chrF with β = 1, BLEU without its
//! brevity penalty) shown to fail the same check.

use std::collections::BTreeMap;

use babelrl::eval::tokenize::is_chinese_char;
use babelrl::eval::{
    BleuConfig, BleuScore, ChrfConfig, ChrfScore, Smooth, Tokenize, corpus_bleu, corpus_bleu_multi,
    corpus_chrf, corpus_chrf_multi, is_py_space, sentence_bleu, sentence_chrf,
};
use serde::Deserialize;
use serde_json::Value;

use crate::common::repo_root;

/// Scores are a handful of float operations on exact integer counts, done in sacrebleu's order. Observed
/// differences are at most one ulp (1.4e-14 at 100), and come from reading the fixture: serde_json's float
/// parsing (without `float_roundtrip`) can land one ulp off Python's shortest repr.
const TOL: f64 = 1e-9;

#[derive(Deserialize)]
struct Fixture {
    unicode: UnicodeTables,
    tokenizers: TokenizerOutputs,
    sets: BTreeMap<String, TextSet>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct UnicodeTables {
    py_space: Vec<u32>,
    zh_chinese_char: Vec<[u32; 2]>,
    regex_classes: BTreeMap<String, Vec<[u32; 2]>>,
}

#[derive(Deserialize)]
struct TokenizerOutputs {
    inputs: Vec<String>,
    outputs: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct TextSet {
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    metric: String,
    config: serde_json::Map<String, Value>,
    set: String,
    corpus: Expected,
    sentences: Vec<Expected>,
}

/// sacrebleu's result; the statistics are absent where the fixture keeps the score alone.
#[derive(Deserialize)]
struct Expected {
    score: f64,
    stats: Option<Vec<[u64; 3]>>,
    precisions: Option<Vec<f64>>,
    bp: Option<f64>,
    sys_len: Option<u64>,
    ref_len: Option<u64>,
    counts: Option<Vec<u64>>,
    totals: Option<Vec<u64>>,
}

fn fixture() -> Fixture {
    let path = repo_root().join("tests/fixtures/eval-metrics-reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn chrf_config(case: &Case) -> ChrfConfig {
    let mut cfg = ChrfConfig::default();
    for (key, v) in &case.config {
        let int = || v.as_u64().unwrap_or_else(|| panic!("{}: config {key} = {v}", case.name));
        let flag = || v.as_bool().unwrap_or_else(|| panic!("{}: config {key} = {v}", case.name));
        match key.as_str() {
            "char_order" => cfg.char_order = int() as usize,
            "word_order" => cfg.word_order = int() as usize,
            "beta" => cfg.beta = int() as u32,
            "lowercase" => cfg.lowercase = flag(),
            "whitespace" => cfg.whitespace = flag(),
            "eps_smoothing" => cfg.eps_smoothing = flag(),
            _ => panic!("{}: chrF config key `{key}` unknown to this test", case.name),
        }
    }
    cfg
}

fn bleu_config(case: &Case) -> BleuConfig {
    let mut cfg = BleuConfig::default();
    let get = |key: &str| case.config.get(key);
    if let Some(t) = get("tokenize") {
        cfg.tokenize = Tokenize::from_name(t.as_str().unwrap()).unwrap();
    }
    cfg.lowercase = get("lowercase").is_some_and(|v| v.as_bool().unwrap());
    cfg.effective_order = get("effective_order").is_some_and(|v| v.as_bool().unwrap());
    if let Some(n) = get("max_ngram_order") {
        cfg.max_ngram_order = n.as_u64().unwrap() as usize;
    }
    let value = get("smooth_value").map(|v| v.as_f64().unwrap());
    cfg.smooth = match get("smooth_method").map(|v| v.as_str().unwrap()) {
        None | Some("exp") => Smooth::Exp,
        Some("none") => Smooth::None,
        Some("floor") => value.map_or(Smooth::FLOOR, Smooth::Floor),
        Some("add-k") => value.map_or(Smooth::ADD_K, Smooth::AddK),
        Some(other) => panic!("{}: smooth_method `{other}` unknown to this test", case.name),
    };
    let known =
        ["tokenize", "lowercase", "effective_order", "max_ngram_order", "smooth_value", "smooth_method"];
    for key in case.config.keys() {
        assert!(known.contains(&key.as_str()), "{}: BLEU config key `{key}` unknown to this test", case.name);
    }
    cfg
}

/// A deliberately wrong metric, to show the comparison catches it.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Correct,
    /// chrF1 scored against sacrebleu's chrF2 values.
    ChrfBeta1,
    /// BLEU without the brevity penalty (the score divided by it).
    BleuNoBrevityPenalty,
}

fn push_float(out: &mut Vec<String>, what: &str, got: f64, want: f64) {
    if got.is_nan() || (got - want).abs() > TOL {
        out.push(format!("{what}: got {got:.15} want {want:.15} (diff {:e})", got - want));
    }
}

fn push_eq<T: PartialEq + std::fmt::Debug>(out: &mut Vec<String>, what: &str, got: T, want: Option<T>) {
    if let Some(want) = want
        && got != want
    {
        out.push(format!("{what}: got {got:?} want {want:?}"));
    }
}

fn compare_chrf(out: &mut Vec<String>, what: &str, got: &ChrfScore, want: &Expected) {
    push_float(out, &format!("{what} score"), got.score, want.score);
    let stats: Vec<[u64; 3]> = got.stats.iter().map(|s| [s.hyp, s.reference, s.matched]).collect();
    push_eq(out, &format!("{what} stats [hyp, ref, match]"), stats, want.stats.clone());
}

fn compare_bleu(out: &mut Vec<String>, what: &str, got: &BleuScore, want: &Expected, variant: Variant) {
    let mut score = got.score;
    if variant == Variant::BleuNoBrevityPenalty && got.bp > 0.0 {
        score /= got.bp;
    }
    push_float(out, &format!("{what} score"), score, want.score);
    if let Some(bp) = want.bp {
        push_float(out, &format!("{what} bp"), got.bp, bp);
    }
    for (n, (&g, &w)) in got.precisions.iter().zip(want.precisions.iter().flatten()).enumerate() {
        push_float(out, &format!("{what} precision {}", n + 1), g, w);
    }
    push_eq(out, &format!("{what} sys_len"), got.sys_len, want.sys_len);
    push_eq(out, &format!("{what} ref_len"), got.ref_len, want.ref_len);
    push_eq(out, &format!("{what} counts"), got.counts.clone(), want.counts.clone());
    push_eq(out, &format!("{what} totals"), got.totals.clone(), want.totals.clone());
}

/// Every difference between babelrl's scores for `case` and sacrebleu's, each naming the case, the level
/// (corpus or sentence line) and the field.
fn mismatches(f: &Fixture, case: &Case, variant: Variant) -> Vec<String> {
    let set = &f.sets[&case.set];
    let hyps: Vec<&str> = set.hyps.iter().map(String::as_str).collect();
    let streams: Vec<Vec<&str>> = set.refs.iter().map(|s| s.iter().map(String::as_str).collect()).collect();
    let refs: Vec<&[&str]> = streams.iter().map(Vec::as_slice).collect();
    let line_refs = |i: usize| -> Vec<&str> { refs.iter().map(|s| s[i]).collect() };
    assert_eq!(case.sentences.len(), hyps.len(), "{}: sentence entries", case.name);
    let mut out = Vec::new();
    let at = |level: &str| format!("{} {level}", case.name);
    match case.metric.as_str() {
        "chrf" => {
            let mut cfg = chrf_config(case);
            if variant == Variant::ChrfBeta1 {
                cfg.beta = 1;
            }
            let corpus = corpus_chrf_multi(&hyps, &refs, &cfg).unwrap();
            compare_chrf(&mut out, &at("corpus"), &corpus, &case.corpus);
            for (i, want) in case.sentences.iter().enumerate() {
                let got = sentence_chrf(hyps[i], &line_refs(i), &cfg).unwrap();
                compare_chrf(&mut out, &at(&format!("sentence {i}")), &got, want);
            }
        }
        "bleu" => {
            let cfg = bleu_config(case);
            let corpus = corpus_bleu_multi(&hyps, &refs, &cfg).unwrap();
            compare_bleu(&mut out, &at("corpus"), &corpus, &case.corpus, variant);
            for (i, want) in case.sentences.iter().enumerate() {
                let got = sentence_bleu(hyps[i], &line_refs(i), &cfg).unwrap();
                compare_bleu(&mut out, &at(&format!("sentence {i}")), &got, want, variant);
            }
        }
        other => panic!("{}: unknown metric `{other}`", case.name),
    }
    out
}

fn all_mismatches(f: &Fixture, metric: &str, variant: Variant) -> (usize, Vec<String>) {
    let cases: Vec<&Case> = f.cases.iter().filter(|c| c.metric == metric).collect();
    (cases.len(), cases.iter().flat_map(|c| mismatches(f, c, variant)).collect())
}

fn assert_no_mismatch(metric: &str) {
    let f = fixture();
    let (n, bad) = all_mismatches(&f, metric, Variant::Correct);
    assert!(n >= 30, "{metric}: only {n} cases in the fixture");
    assert!(bad.is_empty(), "{metric}: {} differences from sacrebleu:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn chrf_matches_sacrebleu() {
    assert_no_mismatch("chrf");
}

#[test]
fn bleu_matches_sacrebleu() {
    assert_no_mismatch("bleu");
}

#[test]
fn wrong_metrics_fail_the_check() {
    let f = fixture();
    let (_, bad) = all_mismatches(&f, "chrf", Variant::ChrfBeta1);
    // β changes nothing only where precision equals recall (identical lines) or both are 0.
    for lang in ["eng_Latn", "zho_Hans", "bod_Tibt"] {
        let name = format!("chrf/{lang} corpus score");
        assert!(bad.iter().any(|m| m.starts_with(&name)), "chrF1 passed as chrF2 on {lang}: {bad:?}");
    }
    let (_, bad) = all_mismatches(&f, "bleu", Variant::BleuNoBrevityPenalty);
    // The edge set's corpus has shorter hypotheses than references, so its BP is below 1.
    assert!(bad.iter().any(|m| m.starts_with("bleu/edge corpus score")), "BLEU without BP passed: {bad:?}");
    assert!(bad.iter().all(|m| m.contains(" score: ")), "only the score uses BP: {bad:?}");
}

#[test]
fn tokenizers_match_sacrebleu() {
    let f = fixture().tokenizers;
    for (name, outputs) in &f.outputs {
        let tok = Tokenize::from_name(name).unwrap();
        assert_eq!(tok.name(), name);
        for (input, want) in f.inputs.iter().zip(outputs) {
            assert_eq!(&tok.apply(input), want, "tokenizer {name} on {input:?}");
        }
    }
    assert_eq!(f.outputs.len(), Tokenize::ALL.len());
}

/// Inclusive code point ranges as one flag per code point.
fn flags(ranges: &[[u32; 2]]) -> Vec<bool> {
    let mut out = vec![false; 0x110000];
    for &[lo, hi] in ranges {
        out[lo as usize..=hi as usize].iter_mut().for_each(|w| *w = true);
    }
    out
}

/// Checks `pred` against the inclusive `ranges` on every code point `within` holds for, naming the
/// first disagreements.
fn assert_ranges(
    what: &str,
    ranges: &[[u32; 2]],
    pred: impl Fn(char) -> bool,
    within: impl Fn(char) -> bool,
) {
    let want = flags(ranges);
    let bad: Vec<String> = (0..0x110000u32)
        .filter_map(char::from_u32)
        .filter(|&c| within(c) && pred(c) != want[c as usize])
        .map(|c| format!("U+{:04X} (python: {}, rust: {})", c as u32, want[c as usize], pred(c)))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} code points differ, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
}

#[test]
fn unicode_tables_match_python() {
    let u = fixture().unicode;
    let space: Vec<[u32; 2]> = u.py_space.iter().map(|&c| [c, c]).collect();
    assert_ranges("str.isspace()", &space, is_py_space, |_| true);
    assert_ranges("sacrebleu zh _is_chinese_char", &u.zh_chinese_char, is_chinese_char, |_| true);
    // Python's `regex` module may know a newer Unicode than the `regex` crate (regex 2026.11 has CJK
    // extensions up to plane 3 that the crate's Unicode 16 lacks): compare the code points both have
    // assigned, and check those are nearly all of Python's.
    let py_assigned = flags(&u.regex_classes["Assigned"]);
    let rust_assigned = regex::Regex::new(r"^\p{Assigned}$").unwrap();
    let both = |c: char| py_assigned[c as usize] && rust_assigned.is_match(c.encode_utf8(&mut [0; 4]));
    let chars = || (0..0x110000u32).filter_map(char::from_u32);
    let n_py = chars().filter(|&c| py_assigned[c as usize]).count();
    let n_both = chars().filter(|&c| both(c)).count();
    assert!(
        n_both * 10 >= n_py * 9,
        "only {n_both} of Python's {n_py} assigned code points are assigned in Rust"
    );
    for class in ["P", "S", "N"] {
        let re = regex::Regex::new(&format!(r"^\p{{{class}}}$")).unwrap();
        let pred = |c: char| re.is_match(c.encode_utf8(&mut [0; 4]));
        assert_ranges(&format!(r"\p{{{class}}}"), &u.regex_classes[class], pred, both);
    }
}

/// The message of the error `r` must be.
fn err<T: std::fmt::Debug>(r: babelrl::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_name_the_problem() {
    let chrf = ChrfConfig::default();
    let bleu = BleuConfig::default();
    let e = err(corpus_chrf(&["a", "b"], &["a"], &chrf));
    assert!(e.contains("chrF") && e.contains("2 hypotheses") && e.contains("stream 0 has 1"), "{e}");
    let e = err(corpus_bleu_multi(&["a"], &[&["a"], &["a", "b"]], &bleu));
    assert!(e.contains("BLEU") && e.contains("stream 1 has 2"), "{e}");
    assert!(err(corpus_bleu(&[], &[], &bleu)).contains("no hypotheses"));
    assert!(err(corpus_chrf_multi(&["a"], &[], &chrf)).contains("no reference streams"));
    assert!(err(sentence_bleu("a", &[], &bleu)).contains("no reference"));
    let e = err(sentence_chrf("a", &["a"], &ChrfConfig { char_order: 0, ..chrf }));
    assert!(e.contains("char_order and word_order are both 0"), "{e}");
    let e = err(corpus_bleu(&["a"], &["a"], &BleuConfig { max_ngram_order: 0, ..bleu }));
    assert!(e.contains("max_ngram_order is 0"), "{e}");
    let e = err(Tokenize::from_name("ja-mecab"));
    assert!(e.contains("`ja-mecab`") && e.contains("13a") && e.contains("need MeCab"), "{e}");
}
