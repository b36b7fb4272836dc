//! chrF (Popović 2015) and chrF++ (Popović 2017) as sacrebleu 2.x's `CHRF` computes them
//! (`sacrebleu/metrics/chrf.py`, `helpers.py`).
//!
//! Per order n (character orders 1..=char_order, then word orders 1..=word_order) a segment gives three
//! counts: hypothesis n-grams, reference n-grams and clipped matches (a hypothesis n-gram matches at most
//! as often as the reference has it; with no reference n-grams of that order the hypothesis count is 0).
//! Character n-grams are over Unicode scalar values of the line with all whitespace removed (unless
//! `whitespace`); word n-grams (chrF++) over `str.split()` words with one ASCII punctuation mark split off
//! the end, or else the start, of each word longer than one character. A corpus sums the counts over
//! segments, then scores once. With several references a segment takes the reference with the best
//! F-score (the first on ties).
//!
//! Score (β = `beta`), from the counts of each order: P = matched / hyp, R = matched / ref (ε = 1e-16 when
//! a count is 0).
//! * default (sacrebleu's `eps_smoothing=False`): average P and R over the orders where hyp > 0 and
//!   ref > 0, then 100 · (1 + β²) · P̄ · R̄ / (β² · P̄ + R̄), 0 when P̄ + R̄ = 0;
//! * `eps_smoothing` (chrF++.py, Moses, NLTK): 100 · mean over all orders of (1 + β²) · P · R / (β² · P + R),
//!   ε for an order where the denominator is 0.

use std::collections::HashMap;

use super::{check_corpus, check_sentence, maybe_lower, py_split, segment_refs};
use crate::{Error, Result};

/// chrF's settings; the default is sacrebleu's `CHRF()` (chrF2), [`ChrfConfig::chrf_pp`] is chrF++.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChrfConfig {
    /// Character n-gram orders 1..=char_order (sacrebleu: 6).
    pub char_order: usize,
    /// Word n-gram orders 1..=word_order (0: chrF; 2: chrF++).
    pub word_order: usize,
    /// Recall weighs β times as much as precision (sacrebleu: 2).
    pub beta: u32,
    /// Lowercase hypotheses and references first.
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams (sacrebleu default: removed).
    pub whitespace: bool,
    /// chrF++.py-style ε smoothing instead of averaging over the effective orders (sacrebleu default: off).
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        ChrfConfig {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfConfig {
    /// chrF++: sacrebleu's `CHRF(word_order=2)`.
    pub fn chrf_pp() -> Self {
        ChrfConfig { word_order: 2, ..ChrfConfig::default() }
    }

    /// sacrebleu's name for the variant: `chrF2`, `chrF2++`, ...
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }

    fn check(&self) -> Result<()> {
        if self.char_order + self.word_order == 0 {
            return Err(Error::Input(
                "chrF: char_order and word_order are both 0 (no n-grams to score; sacrebleu uses 6 and 0)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One n-gram order's counts: hypothesis n-grams, reference n-grams, clipped matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NgramCounts {
    pub hyp: u64,
    pub reference: u64,
    pub matched: u64,
}

/// A chrF score and the (summed) counts it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ChrfScore {
    /// In [0, 100].
    pub score: f64,
    /// Character orders 1..=char_order, then word orders 1..=word_order.
    pub stats: Vec<NgramCounts>,
}

/// chrF of a corpus against one reference per hypothesis.
pub fn corpus_chrf(hyps: &[&str], refs: &[&str], cfg: &ChrfConfig) -> Result<ChrfScore> {
    corpus_chrf_multi(hyps, &[refs], cfg)
}

/// chrF of a corpus against one or more reference streams (`refs[k][i]`: k-th reference of hypothesis i).
pub fn corpus_chrf_multi(hyps: &[&str], refs: &[&[&str]], cfg: &ChrfConfig) -> Result<ChrfScore> {
    cfg.check()?;
    check_corpus("chrF", hyps, refs)?;
    let mut total = vec![NgramCounts::default(); cfg.char_order + cfg.word_order];
    for (i, hyp) in hyps.iter().enumerate() {
        for (sum, s) in total.iter_mut().zip(segment_stats(hyp, &segment_refs(refs, i), cfg)) {
            sum.hyp += s.hyp;
            sum.reference += s.reference;
            sum.matched += s.matched;
        }
    }
    Ok(ChrfScore { score: f_score(&total, cfg), stats: total })
}

/// chrF of one sentence against its reference(s): a corpus of one segment.
pub fn sentence_chrf(hyp: &str, refs: &[&str], cfg: &ChrfConfig) -> Result<ChrfScore> {
    cfg.check()?;
    check_sentence("chrF", refs)?;
    let stats = segment_stats(hyp, refs, cfg);
    Ok(ChrfScore { score: f_score(&stats, cfg), stats })
}

/// N-gram counts of one order (n-grams joined as strings: character slices, or words joined by spaces).
type Counts = HashMap<String, u64>;

/// The counts of a segment against the reference with the best F-score (`_compute_segment_statistics`).
fn segment_stats(hyp: &str, refs: &[&str], cfg: &ChrfConfig) -> Vec<NgramCounts> {
    let hyp_ngrams = extract(&maybe_lower(hyp, cfg.lowercase), cfg);
    let mut best = Vec::new();
    let mut best_f = -1.0;
    for r in refs {
        let ref_ngrams = extract(&maybe_lower(r, cfg.lowercase), cfg);
        let stats: Vec<NgramCounts> =
            hyp_ngrams.iter().zip(&ref_ngrams).map(|(h, r)| match_stats(h, r)).collect();
        let f = f_score(&stats, cfg);
        if f > best_f {
            best_f = f;
            best = stats;
        }
    }
    best
}

/// All n-gram orders of a line: characters first, then words.
fn extract(line: &str, cfg: &ChrfConfig) -> Vec<Counts> {
    let text: String = if cfg.whitespace { line.to_string() } else { py_split(line).collect() };
    // Byte offset of every character, and the end: character n-grams are slices between them.
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let n_chars = bounds.len() - 1;
    let mut out = Vec::with_capacity(cfg.char_order + cfg.word_order);
    for n in 1..=cfg.char_order {
        let mut counts = Counts::new();
        for i in 0..(n_chars + 1).saturating_sub(n) {
            *counts.entry(text[bounds[i]..bounds[i + n]].to_string()).or_default() += 1;
        }
        out.push(counts);
    }
    if cfg.word_order > 0 {
        let words = split_punctuation(line);
        for n in 1..=cfg.word_order {
            let mut counts = Counts::new();
            for w in words.windows(n) {
                *counts.entry(w.join(" ")).or_default() += 1;
            }
            out.push(counts);
        }
    }
    out
}

/// `string.punctuation`, the marks chrF++ splits off words.
fn is_ascii_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// `CHRF._remove_punctuation`: words of `str.split()`; a word longer than one character loses a final
/// punctuation mark, or else an initial one, as a separate word (so `(hi)` gives `(hi` and `)`).
fn split_punctuation(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    for w in py_split(line) {
        let mut chars = w.chars();
        let (first, last) = (chars.next(), chars.next_back());
        match (first, last) {
            (Some(_), Some(l)) if is_ascii_punct(l) => {
                let cut = w.len() - l.len_utf8();
                words.extend([&w[..cut], &w[cut..]]);
            }
            (Some(f), Some(_)) if is_ascii_punct(f) => {
                let cut = f.len_utf8();
                words.extend([&w[..cut], &w[cut..]]);
            }
            _ => words.push(w),
        }
    }
    words
}

/// `CHRF._get_match_statistics`.
fn match_stats(hyp: &Counts, reference: &Counts) -> NgramCounts {
    let (mut hyp_count, mut matched) = (0, 0);
    for (ngram, &count) in hyp {
        hyp_count += count;
        if let Some(&r) = reference.get(ngram) {
            matched += count.min(r);
        }
    }
    NgramCounts {
        // no hits counted when the reference has no n-gram of this order
        hyp: if reference.is_empty() { 0 } else { hyp_count },
        reference: reference.values().sum(),
        matched,
    }
}

/// `CHRF._compute_f_score`, operation for operation (see the module doc for the formulas).
fn f_score(stats: &[NgramCounts], cfg: &ChrfConfig) -> f64 {
    const EPS: f64 = 1e-16;
    let beta = f64::from(cfg.beta);
    let factor = beta * beta;
    let (mut score, mut avg_prec, mut avg_rec, mut effective_order) = (0.0, 0.0, 0.0, 0usize);
    for s in stats {
        let prec = if s.hyp > 0 { s.matched as f64 / s.hyp as f64 } else { EPS };
        let rec = if s.reference > 0 { s.matched as f64 / s.reference as f64 } else { EPS };
        let denom = factor * prec + rec;
        score += if denom > 0.0 { (1.0 + factor) * prec * rec / denom } else { EPS };
        if s.hyp > 0 && s.reference > 0 {
            avg_prec += prec;
            avg_rec += rec;
            effective_order += 1;
        }
    }
    if cfg.eps_smoothing {
        return 100.0 * score / stats.len() as f64;
    }
    if effective_order == 0 {
        (avg_prec, avg_rec) = (0.0, 0.0);
    } else {
        avg_prec /= effective_order as f64;
        avg_rec /= effective_order as f64;
    }
    if avg_prec + avg_rec != 0.0 {
        let mut score = (1.0 + factor) * avg_prec * avg_rec;
        score /= factor * avg_prec + avg_rec;
        100.0 * score
    } else {
        0.0
    }
}
