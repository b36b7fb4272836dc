//! `[router]` in `babelrl train`: LRPO's language router set up for a GRPO run (data columns checked,
//! every question built in every routed language, the plugin loaded, its state restored at `--resume`),
//! the reward plugins tried on the routed languages, and the router's part of each step's metrics.

use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use babelrl::plugin::{HostServices, RewardSet, Sample};
use babelrl::train::grpo::{GrpoPrompt, LanguageRouter, RoutedRollout, route_stats};
use babelrl::train::{GrpoSection, ROUTER_STATE_FILE, Stage};

use crate::train_cmd::Session;

/// The run's router (`None` without `[router]`), with the checkpoint's state when resuming.
pub fn open(
    s: &Session,
    g: &GrpoSection,
    prompts: &[GrpoPrompt],
    services: Arc<dyn HostServices>,
) -> anyhow::Result<Option<LanguageRouter>> {
    // Only a GRPO stage's checkpoint holds a router state (a two-stage run checks its GRPO stage while
    // resuming SFT).
    let checkpoint = s.checkpoint.as_ref().filter(|_| s.stage == Stage::Grpo);
    let Some(section) = &s.run.router else {
        if let Some(c) = checkpoint
            && c.read_file(ROUTER_STATE_FILE)?.is_some()
        {
            bail!(
                "{}: the checkpoint holds a router state ({ROUTER_STATE_FILE}) but {} has no [router]: resume \
                 with the run file it was trained with",
                c.dir.display(),
                s.run.path.display()
            );
        }
        return Ok(None);
    };
    let tokenizer = s.lm.tokenizer()?;
    let mut router = LanguageRouter::new(section, prompts, tokenizer, g.max_prompt_length, &g.data, services)
        .with_context(|| format!("{}: setting up [router] `{}`", s.run.path.display(), section.name))?;
    if let Some(c) = checkpoint {
        let path = c.dir.join(ROUTER_STATE_FILE);
        let state = c.read_file(ROUTER_STATE_FILE)?.ok_or_else(|| {
            anyhow!(
                "{}: the checkpoint has no router state ({ROUTER_STATE_FILE}) but the run file has [router] \
                 `{}`: resume with the run file it was trained with",
                c.dir.display(),
                section.name
            )
        })?;
        router.load_state(&state).with_context(|| {
            format!(
                "{}: the router `{}` refused this checkpoint's state (written by another router or language \
                 list, or damaged); resume from another checkpoint or with the run file it was trained with",
                path.display(),
                section.name
            )
        })?;
    }
    Ok(Some(router))
}

/// Scores a made-up completion of the first prompt asked in each routed language with every reward
/// plugin, so a plugin that cannot handle one of the languages (e.g. a code it does not know) stops the
/// run before any rollout.
pub fn check_languages(
    rewards: &mut RewardSet,
    router: &LanguageRouter,
    prompts: &[GrpoPrompt],
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let samples: Vec<Sample> = router
        .languages()
        .iter()
        .filter_map(|l| router.prompt_in(prompts, 0, l))
        .map(|p| p.sample("0"))
        .collect();
    let at = |language: &str| {
        format!(
            "{}: line {}: the reward plugins fail on this prompt asked in [router] language `{language}` before \
             training",
            data.display(),
            prompts[0].line,
        )
    };
    // One group per language, so a failure names it; under `on_error = "skip"` a plugin's error only
    // shows in `skipped`, and it would drop that plugin's scores for every mixed group with the language.
    for (language, sample) in router.languages().iter().zip(samples) {
        let scored = rewards.score(std::slice::from_ref(&sample)).with_context(|| at(language))?;
        if let Some(e) = scored.skipped.first() {
            return Err(anyhow::anyhow!("{e}")).with_context(|| at(language));
        }
    }
    Ok(())
}

/// The router's metrics of a step: `router_shares` (share of its choices per language) and
/// `reward_by_language` (mean reward of the rollouts per target language), and a short text for the
/// progress line (the largest non-zero shares).
pub fn step_metrics(
    router: &LanguageRouter,
    routes: &[RoutedRollout],
    rewards: &[f64],
) -> (serde_json::Value, serde_json::Value, String) {
    let (shares, means) = route_stats(router.languages(), routes, rewards);
    let mut top: Vec<(&String, &f64)> = shares.iter().filter(|(_, v)| **v > 0.0).collect();
    top.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let mut brief: Vec<String> = top.iter().take(4).map(|(l, v)| format!("{l} {v:.2}")).collect();
    if top.len() > 4 {
        brief.push("…".into());
    }
    let brief = if brief.is_empty() { String::new() } else { format!("  route {}", brief.join(" ")) };
    (serde_json::json!(shares), serde_json::json!(means), brief)
}
