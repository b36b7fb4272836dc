//! BLEU (Papineni et al. 2002) as sacrebleu 2.x's `BLEU` computes it (`sacrebleu/metrics/bleu.py`).
//!
//! Each line is lowercased (if asked), stripped of trailing whitespace and tokenized ([`Tokenize`]), then
//! split on whitespace. A segment gives its hypothesis length, the reference length closest to it (the
//! shorter on ties), and for each order n ≤ `max_ngram_order` the hypothesis n-grams (`totals`) and the
//! clipped matches (`counts`; with several references an n-gram may match as often as the reference that
//! has it most often). A corpus sums these over segments and scores once:
//!
//!   BLEU = BP · exp((1/N) · Σₙ log pₙ),   pₙ = 100 · countsₙ / totalsₙ,
//!   BP = 1 if sys_len ≥ ref_len, else exp(1 − ref_len / sys_len) (0 when sys_len = 0),
//!
//! with log 0 taken as −9999999999 (so a zero precision zeroes the score) and the score 0 when no n-gram
//! matches at all. Smoothing changes the pₙ whose count is 0 ([`Smooth`]). N is `max_ngram_order`, or
//! with `effective_order` the highest order the hypothesis has n-grams of (sacrebleu's `sentence_bleu`
//! turns it on: [`BleuConfig::sentence`]).

use std::collections::HashMap;

use super::{Tokenize, check_corpus, check_sentence, is_py_space, maybe_lower, py_split, segment_refs};
use crate::{Error, Result};

/// How BLEU treats orders with no match (Chen & Cherry 2014; sacrebleu's `smooth_method`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smooth {
    /// `none`: pₙ = 0.
    None,
    /// `floor`: pₙ = 100 · value / totalsₙ (sacrebleu's default value: 0.1).
    Floor(f64),
    /// `add-k`: for n ≥ 2, value is added to countsₙ and totalsₙ (sacrebleu's default value: 1).
    AddK(f64),
    /// `exp` (NIST, mteval-v13a; sacrebleu's default): the k-th order with no match gets
    /// pₙ = 100 / (2ᵏ · totalsₙ).
    Exp,
}

impl Smooth {
    /// `floor` with sacrebleu's default value.
    pub const FLOOR: Smooth = Smooth::Floor(0.1);
    /// `add-k` with sacrebleu's default value.
    pub const ADD_K: Smooth = Smooth::AddK(1.0);
}

/// BLEU's settings; the default is sacrebleu's `BLEU()` (corpus level).
#[derive(Debug, Clone, PartialEq)]
pub struct BleuConfig {
    pub tokenize: Tokenize,
    pub lowercase: bool,
    pub smooth: Smooth,
    /// Highest n-gram order (sacrebleu: 4).
    pub max_ngram_order: usize,
    /// Average over the orders the hypotheses have n-grams of only (sacrebleu: off for `BLEU()` and
    /// `corpus_bleu`, on for `sentence_bleu`).
    pub effective_order: bool,
}

impl Default for BleuConfig {
    fn default() -> Self {
        BleuConfig {
            tokenize: Tokenize::V13a,
            lowercase: false,
            smooth: Smooth::Exp,
            max_ngram_order: 4,
            effective_order: false,
        }
    }
}

impl BleuConfig {
    /// sacrebleu's `sentence_bleu` defaults: as [`BleuConfig::default`] with `effective_order` on.
    pub fn sentence() -> Self {
        BleuConfig { effective_order: true, ..BleuConfig::default() }
    }

    fn check(&self) -> Result<()> {
        if self.max_ngram_order == 0 {
            return Err(Error::Input("BLEU: max_ngram_order is 0 (sacrebleu uses 4)".into()));
        }
        Ok(())
    }
}

/// A BLEU score with sacrebleu's `BLEUScore` fields. `counts` and `totals` are the raw sums (sacrebleu's
/// own object shows them after `add-k` added its value).
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    /// In [0, 100].
    pub score: f64,
    /// Clipped n-gram matches per order 1..=max_ngram_order.
    pub counts: Vec<u64>,
    /// Hypothesis n-grams per order.
    pub totals: Vec<u64>,
    /// pₙ in percent, after smoothing (0 for orders not reached).
    pub precisions: Vec<f64>,
    /// Brevity penalty.
    pub bp: f64,
    /// Hypothesis tokens.
    pub sys_len: u64,
    /// Reference tokens (closest reference length per segment).
    pub ref_len: u64,
}

/// BLEU of a corpus against one reference per hypothesis.
pub fn corpus_bleu(hyps: &[&str], refs: &[&str], cfg: &BleuConfig) -> Result<BleuScore> {
    corpus_bleu_multi(hyps, &[refs], cfg)
}

/// BLEU of a corpus against one or more reference streams (`refs[k][i]`: k-th reference of hypothesis i).
pub fn corpus_bleu_multi(hyps: &[&str], refs: &[&[&str]], cfg: &BleuConfig) -> Result<BleuScore> {
    cfg.check()?;
    check_corpus("BLEU", hyps, refs)?;
    let mut total = Stats::new(cfg.max_ngram_order);
    for (i, hyp) in hyps.iter().enumerate() {
        total.add(&segment_stats(hyp, &segment_refs(refs, i), cfg));
    }
    Ok(compute_bleu(&total, cfg))
}

/// BLEU of one sentence against its reference(s): a corpus of one segment. Use [`BleuConfig::sentence`]
/// for sacrebleu's `sentence_bleu`.
pub fn sentence_bleu(hyp: &str, refs: &[&str], cfg: &BleuConfig) -> Result<BleuScore> {
    cfg.check()?;
    check_sentence("BLEU", refs)?;
    Ok(compute_bleu(&segment_stats(hyp, refs, cfg), cfg))
}

/// BLEU's sufficient statistics (sacrebleu's `[hyp_len, ref_len] + correct + total`).
struct Stats {
    sys_len: u64,
    ref_len: u64,
    correct: Vec<u64>,
    total: Vec<u64>,
}

impl Stats {
    fn new(max_order: usize) -> Self {
        Stats { sys_len: 0, ref_len: 0, correct: vec![0; max_order], total: vec![0; max_order] }
    }

    fn add(&mut self, s: &Stats) {
        self.sys_len += s.sys_len;
        self.ref_len += s.ref_len;
        self.correct.iter_mut().zip(&s.correct).for_each(|(a, b)| *a += b);
        self.total.iter_mut().zip(&s.total).for_each(|(a, b)| *a += b);
    }
}

/// `BLEU._preprocess_segment`: lowercase (optionally), strip trailing whitespace, tokenize.
fn preprocess(line: &str, cfg: &BleuConfig) -> String {
    cfg.tokenize.apply(maybe_lower(line, cfg.lowercase).trim_end_matches(is_py_space))
}

/// Every n-gram of order 1..=max_order with its count (`extract_all_word_ngrams`).
fn ngrams<'a>(tokens: &'a [&'a str], max_order: usize) -> HashMap<&'a [&'a str], u64> {
    let mut counts = HashMap::new();
    for n in 1..=max_order {
        for w in tokens.windows(n) {
            *counts.entry(w).or_default() += 1;
        }
    }
    counts
}

/// `BLEU._get_closest_ref_len`: the reference length closest to `hyp_len`, the shorter on ties.
fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None; // (diff, len)
    for &len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        match best {
            Some((d, l)) if diff > d || (diff == d && len >= l) => {}
            _ => best = Some((diff, len)),
        }
    }
    best.map_or(0, |(_, len)| len)
}

/// `BLEU._extract_reference_info` + `_compute_segment_statistics` for one segment.
fn segment_stats(hyp: &str, refs: &[&str], cfg: &BleuConfig) -> Stats {
    let max = cfg.max_ngram_order;
    let ref_lines: Vec<String> = refs.iter().map(|r| preprocess(r, cfg)).collect();
    let ref_tokens: Vec<Vec<&str>> = ref_lines.iter().map(|l| py_split(l).collect()).collect();
    let mut ref_ngrams: HashMap<&[&str], u64> = HashMap::new();
    for tokens in &ref_tokens {
        for (ngram, count) in ngrams(tokens, max) {
            let c = ref_ngrams.entry(ngram).or_default();
            *c = (*c).max(count);
        }
    }
    let ref_lens: Vec<usize> = ref_tokens.iter().map(Vec::len).collect();
    let hyp_line = preprocess(hyp, cfg);
    let hyp_tokens: Vec<&str> = py_split(&hyp_line).collect();
    let mut stats = Stats::new(max);
    stats.sys_len = hyp_tokens.len() as u64;
    stats.ref_len = closest_ref_len(hyp_tokens.len(), &ref_lens) as u64;
    for (ngram, count) in ngrams(&hyp_tokens, max) {
        let n = ngram.len() - 1;
        stats.total[n] += count;
        if let Some(&r) = ref_ngrams.get(ngram) {
            stats.correct[n] += count.min(r);
        }
    }
    stats
}

/// sacrebleu's `my_log`: log, with log 0 = −9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// `BLEU.compute_bleu`, operation for operation.
fn compute_bleu(s: &Stats, cfg: &BleuConfig) -> BleuScore {
    let max = cfg.max_ngram_order;
    let bp = if s.sys_len < s.ref_len {
        if s.sys_len > 0 { (1.0 - s.ref_len as f64 / s.sys_len as f64).exp() } else { 0.0 }
    } else {
        1.0
    };
    let mut precisions = vec![0.0; max];
    let mut score = BleuScore {
        score: 0.0,
        counts: s.correct.clone(),
        totals: s.total.clone(),
        precisions: Vec::new(),
        bp,
        sys_len: s.sys_len,
        ref_len: s.ref_len,
    };
    if s.correct.iter().all(|&c| c == 0) {
        score.precisions = precisions;
        return score;
    }
    let mut smooth_mteval = 1.0;
    let mut eff_order = max;
    for n in 1..=max {
        let (mut correct, mut total) = (s.correct[n - 1] as f64, s.total[n - 1] as f64);
        if let Smooth::AddK(k) = cfg.smooth
            && n > 1
        {
            correct += k;
            total += k;
        }
        if total == 0.0 {
            break;
        }
        if cfg.effective_order {
            eff_order = n;
        }
        if correct == 0.0 {
            match cfg.smooth {
                Smooth::Exp => {
                    smooth_mteval *= 2.0;
                    precisions[n - 1] = 100.0 / (smooth_mteval * total);
                }
                Smooth::Floor(v) => precisions[n - 1] = 100.0 * v / total,
                Smooth::None | Smooth::AddK(_) => {}
            }
        } else {
            precisions[n - 1] = 100.0 * correct / total;
        }
    }
    let log_sum = precisions[..eff_order].iter().fold(0.0, |acc, &p| acc + my_log(p));
    score.score = bp * (log_sum / eff_order as f64).exp();
    score.precisions = precisions;
    score
}
