//! `babelrl eval`'s scoring of one model's completions on a held-out set: corpus chrF / chrF++ / BLEU
//! against the references, mean semantic similarity, the language-consistency rate and exact-match
//! accuracy, each per row where it has one, scored as the reward plugins score them.
//!
//! - semantic: cosine of the encoder's embeddings of completion and reference (the semantic-similarity
//!   plugin's similarity before it is shaped into a reward; the encoder adds its own prefix, e.g. e5's
//!   `"query: "`, as it does for the plugin's `embed`);
//! - language: the share of a completion's letters in the script(s) of the row's `language` is at least
//!   [`LANGUAGE_THRESHOLD`] (the language-consistency plugin in `gate` mode with its defaults; a
//!   completion without letters is not consistent);
//! - exact: the last number of the completion equals the last number of the reference within a relative
//!   [`EXACT_TOLERANCE`] (the exact-match plugin with its defaults).

use std::path::Path;

use babelrl_sdk::{lang, number, script, similarity};

use crate::eval::{BleuConfig, ChrfConfig, corpus_bleu, corpus_chrf};
use crate::train::grpo::GrpoPrompt;
use crate::{Error, Result};

/// Share of letters in the target script a consistent completion needs (the plugin's default).
pub const LANGUAGE_THRESHOLD: f32 = 0.8;
/// Relative tolerance of exact-match, against `max(1, |reference|)` (the plugin's default).
pub const EXACT_TOLERANCE: f64 = 1e-6;

/// A metric family `--metrics` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// chrF and chrF++ (sacrebleu's `CHRF()` and `CHRF(word_order=2)`), corpus level.
    Chrf,
    /// BLEU (sacrebleu's `BLEU()`, tokenizer selectable), corpus level.
    Bleu,
    /// Mean cosine similarity of completion and reference embeddings.
    Semantic,
    /// Share of completions in the row's language's script.
    Language,
    /// Share of completions whose last number equals the reference's.
    Exact,
}

impl Metric {
    /// Every metric, in table order.
    pub const ALL: [Metric; 5] =
        [Metric::Chrf, Metric::Bleu, Metric::Semantic, Metric::Language, Metric::Exact];

    /// The name `--metrics` takes.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Chrf => "chrf",
            Metric::Bleu => "bleu",
            Metric::Semantic => "semantic",
            Metric::Language => "language",
            Metric::Exact => "exact",
        }
    }

    /// Parses a comma-separated list (`chrf,bleu`); repeats are dropped, the order is [`Metric::ALL`]'s.
    pub fn parse_list(list: &str) -> Result<Vec<Metric>> {
        let mut chosen = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let metric =
                Metric::ALL.into_iter().find(|m| m.name() == name.to_ascii_lowercase()).ok_or_else(|| {
                    Error::Input(format!("unknown metric `{name}`: choose from {}", Self::names()))
                })?;
            chosen.push(metric);
        }
        if chosen.is_empty() {
            return Err(Error::Input(format!("no metric chosen: give one or more of {}", Self::names())));
        }
        Ok(Metric::ALL.into_iter().filter(|m| chosen.contains(m)).collect())
    }

    fn names() -> String {
        Metric::ALL.map(Metric::name).join(", ")
    }

    /// The data column the metric reads.
    pub fn column(self) -> &'static str {
        if self == Metric::Language { "language" } else { "reference" }
    }
}

/// Whether `completion` is written in `language`'s script: at least [`LANGUAGE_THRESHOLD`] of its
/// letters are. A completion without letters is not. An unknown language code is an error.
pub fn language_consistent(completion: &str, language: &str) -> Result<bool> {
    let scripts = lang::expected_scripts(language).ok_or_else(|| {
        Error::Input(format!("unknown language code `{language}` (use e.g. bod_Tibt, zho_Hans, zh, en)"))
    })?;
    Ok(script::script_share(completion, scripts).is_some_and(|share| share >= LANGUAGE_THRESHOLD))
}

/// Whether the last number of `completion` equals the last number of `reference` (within
/// [`EXACT_TOLERANCE`]); a completion without a number is wrong. A reference without a number is an
/// error.
pub fn exact_match(completion: &str, reference: &str) -> Result<bool> {
    let want = number::last_number(reference)
        .ok_or_else(|| Error::Input(format!("the reference {reference:?} has no number to compare with")))?;
    Ok(number::last_number(completion).is_some_and(|got| number::numbers_match(got, want, EXACT_TOLERANCE)))
}

/// Checks, before anything is generated, that every row of `path` has what `metrics` read: a
/// `reference` (with a number for `exact`) and a known `language` code. Errors name the file and line.
pub fn check_rows(path: &Path, rows: &[GrpoPrompt], metrics: &[Metric]) -> Result<()> {
    for row in rows {
        let bad = |m: String| Error::format(path, format!("line {}: {m}", row.line));
        for &metric in metrics {
            let value = if metric == Metric::Language { &row.language } else { &row.reference };
            let Some(value) = value else {
                return Err(bad(format!(
                    "no `{}` column, which the `{}` metric reads: add it, or leave the metric out of --metrics",
                    metric.column(),
                    metric.name()
                )));
            };
            match metric {
                Metric::Exact => {
                    exact_match("", value).map_err(|e| bad(format!("{e} (the `exact` metric needs one)")))?;
                }
                Metric::Language => {
                    language_consistent("", value).map_err(|e| bad(e.to_string()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// One row's scores (`None` where its metric was not asked for).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RowScores {
    pub semantic: Option<f32>,
    pub language_consistent: Option<bool>,
    pub exact: Option<bool>,
}

/// One model's scores over the set (`None` where the metric was not asked for). chrF, chrF++ and BLEU
/// are in [0, 100]; the others are means or rates in [0, 1] (semantic in [−1, 1]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Scores {
    pub chrf: Option<f64>,
    #[serde(rename = "chrf++")]
    pub chrf_pp: Option<f64>,
    pub bleu: Option<f64>,
    pub semantic: Option<f64>,
    pub language: Option<f64>,
    pub exact: Option<f64>,
    #[serde(skip)]
    pub rows: Vec<RowScores>,
}

/// Scores `completions[i]` against row `rows[i]` (checked by [`check_rows`]) for `metrics`. BLEU uses
/// `bleu`; `embed` returns L2-normalised embeddings of its texts, in order (called once, and only for
/// `semantic`).
pub fn score(
    rows: &[GrpoPrompt],
    completions: &[&str],
    metrics: &[Metric],
    bleu: &BleuConfig,
    embed: impl FnOnce(&[String]) -> Result<Vec<Vec<f32>>>,
) -> Result<Scores> {
    if rows.len() != completions.len() {
        return Err(Error::Input(format!("{} completions for {} rows", completions.len(), rows.len())));
    }
    if rows.is_empty() {
        return Err(Error::Input("nothing to score: the data set has no rows".into()));
    }
    let n = rows.len();
    let mut out = Scores { rows: vec![RowScores::default(); n], ..Scores::default() };
    if metrics.contains(&Metric::Chrf) || metrics.contains(&Metric::Bleu) {
        let refs = rows.iter().map(reference).collect::<Result<Vec<_>>>()?;
        if metrics.contains(&Metric::Chrf) {
            out.chrf = Some(corpus_chrf(completions, &refs, &ChrfConfig::default())?.score);
            out.chrf_pp = Some(corpus_chrf(completions, &refs, &ChrfConfig::chrf_pp())?.score);
        }
        if metrics.contains(&Metric::Bleu) {
            out.bleu = Some(corpus_bleu(completions, &refs, bleu)?.score);
        }
    }
    if metrics.contains(&Metric::Semantic) {
        let mut texts: Vec<String> = completions.iter().map(|c| c.to_string()).collect();
        for row in rows {
            texts.push(reference(row)?.to_string());
        }
        let vecs = embed(&texts)?;
        if vecs.len() != texts.len() {
            return Err(Error::Input(format!(
                "the encoder gave {} vectors for {} texts",
                vecs.len(),
                texts.len()
            )));
        }
        let mut sum = 0.0f64;
        for (i, slot) in out.rows.iter_mut().enumerate() {
            let s = similarity::cosine(&vecs[i], &vecs[n + i]).map_err(Error::Input)?;
            slot.semantic = Some(s);
            sum += f64::from(s);
        }
        out.semantic = Some(sum / n as f64);
    }
    if metrics.contains(&Metric::Language) {
        let mut hits = 0usize;
        for ((row, completion), slot) in rows.iter().zip(completions).zip(&mut out.rows) {
            let language = row.language.as_deref().ok_or_else(|| missing(row, "language"))?;
            let ok = language_consistent(completion, language)?;
            hits += usize::from(ok);
            slot.language_consistent = Some(ok);
        }
        out.language = Some(hits as f64 / n as f64);
    }
    if metrics.contains(&Metric::Exact) {
        let mut hits = 0usize;
        for ((row, completion), slot) in rows.iter().zip(completions).zip(&mut out.rows) {
            let ok = exact_match(completion, reference(row)?)?;
            hits += usize::from(ok);
            slot.exact = Some(ok);
        }
        out.exact = Some(hits as f64 / n as f64);
    }
    Ok(out)
}

fn missing(row: &GrpoPrompt, column: &str) -> Error {
    Error::Input(format!("line {}: no `{column}` (check the rows with check_rows first)", row.line))
}

fn reference(row: &GrpoPrompt) -> Result<&str> {
    row.reference.as_deref().ok_or_else(|| missing(row, "reference"))
}

#[cfg(test)]
mod tests;
