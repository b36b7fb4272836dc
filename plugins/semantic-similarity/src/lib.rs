//! Reward plugin: embedding similarity of completion and reference (host `embed`), shaped by
//! threshold-and-rescale (`mode = "threshold"`) or LRPO's per-language-pair calibration (`"calibrated"`).

use babelrl_sdk::prelude::*;
use babelrl_sdk::similarity::{calibrated_reward, cosine, threshold_rescale};
use babelrl_sdk::{host, lang, script};
use serde::Deserialize;
use std::collections::BTreeMap;

/// How a similarity `s` becomes a reward.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `r = 0` if `s < tau`, else `(s − tau) / (1 − tau)`.
    Threshold,
    /// `r = clip((clip(s − (mu_pair[src][tgt] − mu_ref), −1, 1) + 1) / 2, 0, 1)`.
    Calibrated,
}

/// `[rewards.config]` of the run file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    /// Threshold τ in [−1, 1) (threshold mode; required there).
    pub tau: Option<f32>,
    /// Mean similarity of true translations over all pairs (calibrated mode).
    pub mu_ref: Option<f32>,
    /// Mean similarity of true translations per pair: `mu_pair[source][target]` (calibrated mode).
    #[serde(default)]
    pub mu_pair: BTreeMap<String, BTreeMap<String, f32>>,
    /// Source language when samples carry no `source_field`.
    pub source_language: Option<String>,
    /// Data set field holding each sample's source language.
    #[serde(default = "default_source_field")]
    pub source_field: String,
    /// If set, multiply the reward by a language gate: 1 if the share of letters in the sample's target
    /// language script is at least this, else 0.
    pub language_gate: Option<f32>,
}

fn default_source_field() -> String {
    "source_language".to_string()
}

/// The reward; `config` is checked in [`Reward::new`].
#[derive(Debug)]
pub struct SemanticSimilarity {
    config: Config,
}

impl SemanticSimilarity {
    /// The reward of one sample with similarity `s` to its reference.
    pub fn shape(&self, sample: &Sample, s: f32) -> Result<f32, String> {
        let c = &self.config;
        let r = match c.mode {
            Mode::Threshold => threshold_rescale(s, c.tau.unwrap_or(0.0)),
            Mode::Calibrated => {
                let src = match sample.field_text(&c.source_field) {
                    Some(src) => src,
                    None => c.source_language.clone().ok_or("no source language: set `source_language`")?,
                };
                let tgt = sample.language.as_deref().ok_or("calibrated mode needs each sample's language")?;
                let mu = c.mu_pair.get(&src).and_then(|m| m.get(tgt));
                let mu = mu.ok_or_else(|| format!("no mu_pair entry for {src} -> {tgt}"))?;
                calibrated_reward(s, *mu, c.mu_ref.unwrap_or(0.0))
            }
        };
        match c.language_gate {
            None => Ok(r),
            Some(threshold) => {
                let code = sample.language.as_deref().ok_or("language_gate needs each sample's language")?;
                let scripts =
                    lang::expected_scripts(code).ok_or_else(|| format!("unknown language `{code}`"))?;
                let share = script::script_share(&sample.completion, scripts).unwrap_or(0.0);
                Ok(if share >= threshold { r } else { 0.0 })
            }
        }
    }

    /// Scores a group given an embedder (the host's `embed` in the engine, a fake in tests). Samples
    /// without a reference get `None`; all texts go to the embedder in one call.
    pub fn score_with<E>(&self, group: &[Sample], embed: E) -> Result<Vec<Option<f32>>, String>
    where
        E: FnOnce(&[String]) -> Result<Vec<Vec<f32>>, String>,
    {
        let mut texts: Vec<String> = Vec::new();
        let mut slot = |t: &str| {
            texts.iter().position(|x| x == t).unwrap_or_else(|| {
                texts.push(t.to_string());
                texts.len() - 1
            })
        };
        let pairs: Vec<Option<(usize, usize)>> =
            group.iter().map(|s| s.reference.as_deref().map(|r| (slot(&s.completion), slot(r)))).collect();
        if texts.is_empty() {
            return Ok(vec![None; group.len()]);
        }
        let vecs = embed(&texts)?;
        if vecs.len() != texts.len() {
            return Err(format!("embed returned {} vectors for {} texts", vecs.len(), texts.len()));
        }
        let score = |(i, p): (usize, &Option<(usize, usize)>)| match p {
            None => Ok(None),
            Some((c, r)) => self.shape(&group[i], cosine(&vecs[*c], &vecs[*r])?).map(Some),
        };
        pairs.iter().enumerate().map(score).collect()
    }
}

impl Reward for SemanticSimilarity {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        match config.mode {
            Mode::Threshold => match config.tau {
                Some(t) if (-1.0..1.0).contains(&t) => {}
                Some(t) => return Err(format!("tau = {t} must be in [-1, 1)")),
                None => return Err("threshold mode needs `tau` (e.g. tau = 0.5)".into()),
            },
            Mode::Calibrated if config.mu_ref.is_none() || config.mu_pair.is_empty() => {
                return Err("calibrated mode needs `mu_ref` and a `mu_pair` table".into());
            }
            Mode::Calibrated => {}
        }
        if let Some(g) = config.language_gate.filter(|g| !(0.0..=1.0).contains(g)) {
            return Err(format!("language_gate = {g} must be in [0, 1]"));
        }
        Ok(SemanticSimilarity { config })
    }

    fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>, String> {
        self.score_with(group, host::embed)
    }
}

babelrl_sdk::export_reward!(SemanticSimilarity);

#[cfg(test)]
mod tests;
