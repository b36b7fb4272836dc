//! Pairwise accuracy of a reward model on preference pairs: the share of pairs whose chosen answer scores
//! strictly above the rejected one (TRL's `accuracy`), overall and per language, with the distribution of
//! the margins `r_c − r_r` (mean, quantiles).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{Error, Result};

/// The distribution of a set of margins; quantiles interpolate linearly between order statistics
/// (numpy's default `linear` method).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MarginStats {
    pub mean: f64,
    pub min: f64,
    pub q05: f64,
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    pub q95: f64,
    pub max: f64,
}

/// Accuracy and margins of one set of pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairwiseScores {
    pub pairs: usize,
    /// Pairs with r_c > r_r.
    pub correct: usize,
    pub accuracy: f64,
    pub margin: MarginStats,
}

/// A whole evaluation: every pair, and each language's (pairs without a language under `"-"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairwiseReport {
    pub overall: PairwiseScores,
    pub per_language: BTreeMap<String, PairwiseScores>,
}

/// The label of pairs without a language.
pub const NO_LANGUAGE: &str = "-";

/// The `q`-quantile of sorted `v` (non-empty), linearly interpolated.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn scores(chosen: &[f64], rejected: &[f64]) -> PairwiseScores {
    let mut m: Vec<f64> = chosen.iter().zip(rejected).map(|(c, r)| c - r).collect();
    let correct = m.iter().filter(|&&d| d > 0.0).count();
    let n = m.len();
    let mean = m.iter().sum::<f64>() / n as f64;
    m.sort_by(f64::total_cmp);
    PairwiseScores {
        pairs: n,
        correct,
        accuracy: correct as f64 / n as f64,
        margin: MarginStats {
            mean,
            min: m[0],
            q05: quantile(&m, 0.05),
            q25: quantile(&m, 0.25),
            median: quantile(&m, 0.5),
            q75: quantile(&m, 0.75),
            q95: quantile(&m, 0.95),
            max: m[n - 1],
        },
    }
}

/// The report of pairs with rewards `chosen[i]`, `rejected[i]` and `languages[i]`. An empty set, lists of
/// different lengths, or a reward that is not finite are errors.
pub fn pairwise_report(
    chosen: &[f64],
    rejected: &[f64],
    languages: &[Option<String>],
) -> Result<PairwiseReport> {
    if chosen.is_empty() || chosen.len() != rejected.len() || chosen.len() != languages.len() {
        return Err(Error::Input(format!(
            "pairwise accuracy: {} chosen, {} rejected rewards and {} languages (need as many of each, at least 1)",
            chosen.len(),
            rejected.len(),
            languages.len()
        )));
    }
    if let Some(i) = chosen.iter().chain(rejected).position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "pairwise accuracy: reward {i} is not finite (the model gave NaN or infinity)"
        )));
    }
    let mut groups: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for ((c, r), l) in chosen.iter().zip(rejected).zip(languages) {
        let g = groups.entry(l.clone().unwrap_or_else(|| NO_LANGUAGE.into())).or_default();
        g.0.push(*c);
        g.1.push(*r);
    }
    Ok(PairwiseReport {
        overall: scores(chosen, rejected),
        per_language: groups.into_iter().map(|(k, (c, r))| (k, scores(&c, &r))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts_strict_wins_per_language_and_quantiles_interpolate() {
        let c = [1.0, 0.0, 2.0, 5.0, 1.0];
        let r = [0.0, 0.0, 3.0, 1.0, 0.5];
        let l = [Some("en".to_string()), Some("en".into()), Some("bo".into()), None, Some("bo".into())];
        let rep = pairwise_report(&c, &r, &l).unwrap();
        // A tie is not a win (TRL: chosen > rejected).
        assert_eq!((rep.overall.pairs, rep.overall.correct), (5, 3));
        assert_eq!(rep.per_language["en"].correct, 1);
        assert_eq!(rep.per_language["bo"].accuracy, 0.5);
        assert_eq!(rep.per_language[NO_LANGUAGE].pairs, 1);
        // Margins 1, 0, −1, 4, 0.5 → sorted −1, 0, 0.5, 1, 4.
        let m = rep.overall.margin;
        assert_eq!((m.min, m.median, m.max, m.mean), (-1.0, 0.5, 4.0, 0.9));
        assert_eq!(m.q25, 0.0);
        assert!((m.q95 - (1.0 + 3.0 * 0.8)).abs() < 1e-12, "{}", m.q95);
        assert!(pairwise_report(&[], &[], &[]).is_err());
        assert!(
            pairwise_report(&[f64::NAN], &[0.0], &[None]).unwrap_err().to_string().contains("not finite")
        );
    }
}
