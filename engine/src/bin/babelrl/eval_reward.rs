//! `babelrl eval --reward-model DIR --data PAIRS.jsonl`: a reward model's pairwise accuracy on preference
//! pairs, overall and per language, with the distribution of the margins r_c − r_r; every side of every
//! pair is scored in batched GPU passes. A table on stdout and, with `--json`, the report and each pair's
//! rewards.

use std::path::Path;

use anyhow::{Context, bail};
use babelrl::eval::pairwise::{PairwiseReport, PairwiseScores, pairwise_report};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::model::RewardModel;
use babelrl::train::reward::reward_input_ids;
use babelrl::train::{read_pairs, render_pairs};

pub fn run(
    dir: &Path,
    data: &Path,
    language: Option<&str>,
    limit: Option<usize>,
    json: Option<&Path>,
) -> anyhow::Result<()> {
    let mut pairs = read_pairs(data)?;
    if let Some(n) = limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        pairs.truncate(n);
    }
    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let rm =
        RewardModel::load(gpu, dir).with_context(|| format!("loading the reward model {}", dir.display()))?;
    let tok = rm.tokenizer();
    let eos_id = *tok.eos_ids().first().context("the reward model's tokenizer has no EOS token")?;
    let eos = tok.id_to_token(eos_id).unwrap_or_default();
    let texts = render_pairs(data, &pairs, tok)?;
    let max = rm.decoder().max_context();
    let mut seqs = Vec::with_capacity(2 * pairs.len());
    for (p, t) in pairs.iter().zip(&texts) {
        for side in [&t.chosen, &t.rejected] {
            let ids = reward_input_ids(tok, &eos, &t.prompt, side, t.chat)?;
            if ids.len() > max {
                bail!(
                    "{}: {}: an input of {} tokens; the reward model takes at most {max}",
                    data.display(),
                    p.origin,
                    ids.len()
                );
            }
            seqs.push(ids);
        }
    }
    let scores = rm.score_ids(&seqs)?;
    let chosen: Vec<f64> = scores.iter().step_by(2).map(|&v| f64::from(v)).collect();
    let rejected: Vec<f64> = scores.iter().skip(1).step_by(2).map(|&v| f64::from(v)).collect();
    let languages: Vec<Option<String>> =
        pairs.iter().map(|p| p.language.clone().or_else(|| language.map(str::to_string))).collect();
    let report = pairwise_report(&chosen, &rejected, &languages)?;
    print_table(&report);
    if let Some(out) = json {
        let per_pair: Vec<serde_json::Value> = pairs
            .iter()
            .zip(chosen.iter().zip(&rejected))
            .zip(&languages)
            .map(|((p, (c, r)), l)| {
                serde_json::json!({"at": p.origin.to_string(), "language": l, "chosen": c, "rejected": r, "margin": c - r})
            })
            .collect();
        let doc = serde_json::json!({
            "reward_model": dir, "data": data, "pairs": pairs.len(),
            "overall": report.overall, "per_language": report.per_language, "per_pair": per_pair,
        });
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn row(label: &str, s: &PairwiseScores) {
    let m = &s.margin;
    println!(
        "{label:<12} {:>6} {:>8.1}% {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
        s.pairs,
        100.0 * s.accuracy,
        m.mean,
        m.q05,
        m.q25,
        m.median,
        m.q75,
        m.q95
    );
}

fn print_table(report: &PairwiseReport) {
    println!(
        "{:<12} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "language", "pairs", "accuracy", "margin", "q05", "q25", "median", "q75", "q95"
    );
    for (lang, s) in &report.per_language {
        row(lang, s);
    }
    row("all", &report.overall);
}
