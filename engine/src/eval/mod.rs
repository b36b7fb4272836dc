//! Translation metrics that agree with sacrebleu 2.x: chrF / chrF++ (`chrf`) and BLEU (`bleu`, with the
//! `13a`, `intl`, `zh`, `char` and `none` tokenizers of `tokenize`), at corpus and sentence level.
//!
//! Text is handled as sacrebleu handles Python `str`: n-grams are over Unicode scalar values (not bytes),
//! whitespace is what Python's `str.split()` / `str.isspace()` treat as whitespace ([`is_py_space`]) and
//! lowercasing is full Unicode lowercasing. Corpus scores sum the per-sentence statistics first and
//! compute one score from the sums, as sacrebleu does; the float arithmetic follows sacrebleu's operation
//! order, so scores agree to the last bits, not only to the printed digits.
//!
//! [`report`] scores a model's completions on a held-out set for `babelrl eval` (these metrics plus
//! semantic similarity, language consistency and exact-match accuracy).
//!
//! References come in sacrebleu's layout: `refs[k][i]` is the k-th reference of hypothesis `i` (one
//! stream per reference set); the plain `corpus_*` functions take one stream.

pub mod bleu;
pub mod chrf;
pub mod pairwise;
pub mod report;
pub mod tokenize;

pub use bleu::{BleuConfig, BleuScore, Smooth, corpus_bleu, corpus_bleu_multi, sentence_bleu};
pub use chrf::{ChrfConfig, ChrfScore, NgramCounts, corpus_chrf, corpus_chrf_multi, sentence_chrf};
pub use tokenize::Tokenize;

use crate::{Error, Result};

/// Python's `str.isspace()` for one character: Unicode `White_Space` plus U+001C..U+001F (Python also
/// counts the ASCII file, group, record and unit separators as whitespace).
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()` with no argument: runs of whitespace separate words, no empty words.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Python's `' '.join(s.split())`: words separated by single spaces, no leading or trailing space.
pub(crate) fn py_normalize_spaces(s: &str) -> String {
    py_split(s).collect::<Vec<_>>().join(" ")
}

/// Python's `s.lower()` when `lowercase`, else `s` unchanged.
pub(crate) fn maybe_lower(s: &str, lowercase: bool) -> std::borrow::Cow<'_, str> {
    if lowercase { s.to_lowercase().into() } else { s.into() }
}

/// Checks a corpus: at least one hypothesis, at least one reference stream, every stream as long as the
/// hypotheses. `metric` names the caller in the message.
pub(crate) fn check_corpus(metric: &str, hyps: &[&str], refs: &[&[&str]]) -> Result<()> {
    if hyps.is_empty() {
        return Err(Error::Input(format!("{metric}: no hypotheses (the corpus is empty)")));
    }
    if refs.is_empty() {
        return Err(Error::Input(format!("{metric}: no reference streams (give at least one)")));
    }
    for (k, stream) in refs.iter().enumerate() {
        if stream.len() != hyps.len() {
            return Err(Error::Input(format!(
                "{metric}: {} hypotheses but reference stream {k} has {} lines (one reference per \
                 hypothesis expected)",
                hyps.len(),
                stream.len()
            )));
        }
    }
    Ok(())
}

/// The references of segment `i`, one per stream.
pub(crate) fn segment_refs<'a>(refs: &[&[&'a str]], i: usize) -> Vec<&'a str> {
    refs.iter().map(|stream| stream[i]).collect()
}

/// Checks a sentence-level call has at least one reference.
pub(crate) fn check_sentence(metric: &str, refs: &[&str]) -> Result<()> {
    if refs.is_empty() {
        return Err(Error::Input(format!("{metric}: no reference for the sentence (give at least one)")));
    }
    Ok(())
}
