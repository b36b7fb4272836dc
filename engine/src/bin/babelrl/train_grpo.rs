//! `babelrl train RUN.toml` for a `[grpo]` job: the reward plugins, the prompts and the `[router]`,
//! checked before any rollout; then GRPO steps (rollouts — in the router's languages with `[router]` —,
//! plugin rewards, the update, the router's update) with metrics, checkpoints and resume.

use std::sync::Arc;

use anyhow::{Context, bail};
use babelrl::generate::FinishReason;
use babelrl::plugin::{NoServices, RewardSet, Sample};
use babelrl::train::ROUTER_STATE_FILE;
use babelrl::train::grpo::{
    GrpoOptions, GrpoPrompt, GrpoTrainer, PromptOrder, Rollout, RoutedRollout, load_grpo_prompts,
};

use crate::train_cmd::{DataPosition, Session, StepLog};

/// Prompts the reward check scores before training (each with two made-up completions).
const PROBE_PROMPTS: usize = 4;

/// Scores made-up completions of the first prompts with every plugin before any rollout: a plugin that
/// fails on the data, or scores none of them (it lacks a column it needs, e.g. `reference`), stops the
/// run here rather than after the first rollouts.
fn check_rewards(
    rewards: &mut RewardSet,
    prompts: &[GrpoPrompt],
    data: &std::path::Path,
) -> anyhow::Result<()> {
    let probe: Vec<&GrpoPrompt> = prompts.iter().take(PROBE_PROMPTS).collect();
    let mut scored = vec![false; rewards.names().len()];
    for p in &probe {
        let group: Vec<Sample> = [p.text.as_str(), "0"].iter().map(|c| p.sample(c)).collect();
        let got = rewards.score(&group).with_context(|| {
            format!(
                "{}: line {}: the reward plugins fail on this prompt before training",
                data.display(),
                p.line
            )
        })?;
        for (j, scores) in got.per_plugin.iter().enumerate() {
            scored[j] |= scores.iter().any(Option::is_some);
        }
    }
    if let Some(j) = scored.iter().position(|s| !s) {
        let columns: Vec<String> = probe[0]
            .reference
            .as_ref()
            .map(|_| "reference".to_string())
            .into_iter()
            .chain(probe[0].language.as_ref().map(|_| "language".to_string()))
            .chain(probe[0].fields.iter().map(|(k, _)| k.clone()))
            .collect();
        bail!(
            "the reward `{}` gives no score to any completion of the first {} prompts of {}: does the data \
             lack a column it needs (e.g. `reference`)? The data's columns besides `prompt`: {}",
            rewards.names()[j],
            probe.len(),
            data.display(),
            if columns.is_empty() { "none".to_string() } else { columns.join(", ") }
        );
    }
    Ok(())
}

pub fn run(s: &Session) -> anyhow::Result<()> {
    let (g, specs) = s.run.grpo()?;
    let (g, specs) = (g.clone(), specs.clone());
    let tokenizer = s.lm.tokenizer()?;
    let prompts = load_grpo_prompts(&g.data, tokenizer, g.max_prompt_length)?;
    // The router first: it checks the columns it needs (`language`, `id`), which rewards may need too.
    let mut router = crate::train_lrpo::open(s, &g, &prompts)?;
    let mut rewards =
        RewardSet::load(&specs.rewards, specs.on_error, std::path::Path::new(""), Arc::new(NoServices))
            .with_context(|| format!("{}: loading the [[reward]] plugins", s.run.path.display()))?;
    check_rewards(&mut rewards, &prompts, &g.data)?;
    if let Some(router) = &router {
        crate::train_lrpo::check_languages(&mut rewards, router, &prompts, &g.data)?;
    }
    let names: Vec<String> = rewards.names().iter().map(|n| n.to_string()).collect();

    let adapter = s.adapter()?;
    let total = g.max_steps;
    let schedule = s.run.schedule(total)?;
    let options = GrpoOptions {
        num_generations: g.num_generations,
        sampling: g.sampling(),
        loss: g.loss(),
        scale_rewards: g.scale_rewards,
        mask_truncated_completions: g.mask_truncated_completions,
        seed: g.seed,
    };
    let mut trainer =
        GrpoTrainer::new(&s.lm.decoder, tokenizer, adapter, s.run.optimizer, schedule, options)?;
    if let Some(c) = &s.checkpoint {
        let want = c.state.step * g.prompts_per_step as u64;
        if c.state.examples_seen != want || c.state.data_seed != g.seed {
            bail!(
                "{}: the checkpoint has seen {} prompts with data seed {}; this run file takes {} prompts a \
                 step with seed {} (expected {want} prompts at step {}): resume with the run file it was \
                 trained with",
                c.dir.display(),
                c.state.examples_seen,
                c.state.data_seed,
                g.prompts_per_step,
                g.seed,
                c.state.step
            );
        }
        trainer
            .restore(&c.optimizer)
            .with_context(|| format!("{}: resuming from this checkpoint", c.dir.display()))?;
        eprintln!("resuming from {} (step {} of {total})", c.dir.display(), c.state.step);
    }

    let mut order = PromptOrder::new(prompts.len(), g.seed);
    let mut log = StepLog::open(s, trainer.step_count(), total)?;
    let stop = log.stop;
    let mut last = None;
    while trainer.step_count() < stop {
        let step0 = trainer.step_count();
        let first = step0 * g.prompts_per_step as u64;
        let picked: Vec<usize> = (first..first + g.prompts_per_step as u64).map(|k| order.at(k)).collect();
        let n = g.num_generations;
        // Each rollout's question and the prompt it is asked with (with [router], in its language).
        let routes: Option<Vec<RoutedRollout>> = match &mut router {
            Some(r) => Some(r.route(step0, &picked, n).with_context(|| {
                format!(
                    "step {}: the router chose no languages (the last checkpoint is intact; fix the cause \
                     and pass --resume)",
                    step0 + 1
                )
            })?),
            None => None,
        };
        let asked: Vec<&GrpoPrompt> = match (&router, &routes) {
            (Some(r), Some(routes)) => routes.iter().map(|x| r.prompt(&prompts, x)).collect(),
            _ => picked.iter().flat_map(|&p| std::iter::repeat_n(&prompts[p], n)).collect(),
        };
        let tokens: Vec<Vec<u32>> = asked.iter().map(|p| p.tokens.clone()).collect();
        let mut plugin_sums = vec![(0.0f64, 0usize); names.len()];
        let mut reward_seconds = 0.0;
        let (mut unscored, mut truncated, mut rollouts_n) = (0usize, 0usize, 0usize);
        let mut step_rewards: Vec<f64> = Vec::new();
        let m = trainer.step_rollouts(&tokens, |rollouts: &[Rollout]| {
            let start = std::time::Instant::now();
            rollouts_n = rollouts.len();
            truncated = rollouts.iter().filter(|r| r.completion.finish == FinishReason::Length).count();
            let mut out = Vec::with_capacity(rollouts.len());
            for group in rollouts.chunk_by(|a, b| a.prompt == b.prompt) {
                let at = out.len();
                let samples: Vec<Sample> =
                    group.iter().enumerate().map(|(j, r)| asked[at + j].sample(&r.completion.text)).collect();
                let scored = rewards.score(&samples)?;
                for (j, scores) in scored.per_plugin.iter().enumerate() {
                    for v in scores.iter().flatten() {
                        plugin_sums[j].0 += f64::from(*v);
                        plugin_sums[j].1 += 1;
                    }
                }
                // A rollout no plugin scored is NaN (left out of the advantages, as TRL).
                for (i, total) in scored.total.iter().enumerate() {
                    let any = scored.per_plugin.iter().any(|s| s[i].is_some());
                    unscored += usize::from(!any);
                    out.push(if any { f64::from(*total) } else { f64::NAN });
                }
            }
            reward_seconds = start.elapsed().as_secs_f64();
            step_rewards = out.clone();
            Ok(out)
        });
        let m = m.with_context(|| {
            format!(
                "step {}: no update (the last checkpoint is intact; fix the cause and pass --resume)",
                trainer.step_count() + 1
            )
        })?;
        if !m.loss.is_finite() {
            bail!(
                "step {}: the loss is {} (lower the learning rate); the last checkpoint is intact",
                m.step,
                m.loss
            );
        }
        let mut route_brief = String::new();
        let mut route_metrics = None;
        if let (Some(r), Some(routes)) = (&mut router, &routes) {
            r.update(step0, routes, &step_rewards).with_context(|| {
                format!(
                    "step {}: the router's update failed after the step's update (the last checkpoint is \
                     intact; fix the cause and pass --resume)",
                    m.step
                )
            })?;
            let (shares, by_language, brief) = crate::train_lrpo::step_metrics(r, routes, &step_rewards);
            route_metrics = Some((shares, by_language));
            route_brief = brief;
        }
        let per_plugin: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&plugin_sums)
            .map(|(n, (sum, count))| {
                let mean =
                    if *count > 0 { serde_json::json!(sum / *count as f64) } else { serde_json::Value::Null };
                (n.clone(), mean)
            })
            .collect();
        let line = serde_json::json!({
            "step": m.step, "loss": m.loss, "reward": m.reward_mean, "reward_std": m.reward_std,
            "rewards": per_plugin, "grad_norm": m.grad_norm, "learning_rate": m.learning_rate,
            "clip_ratio": m.clip_ratio, "completion_tokens": m.completion_tokens,
            "completion_length": m.completion_tokens as f64 / rollouts_n.max(1) as f64,
            "truncated_ratio": truncated as f64 / rollouts_n.max(1) as f64, "unscored": unscored,
            "kl": m.kl, "rollout_seconds": m.rollout_seconds, "reward_seconds": reward_seconds,
            "reference_seconds": m.reference_seconds, "update_seconds": m.update_seconds,
        });
        let mut line = line;
        if let Some((shares, by_language)) = route_metrics {
            line["router_shares"] = shares;
            line["reward_by_language"] = by_language;
        }
        let message = format!(
            "reward {:.3} ± {:.3}  loss {:.4}  grad norm {:.3}  lr {:.3e}{route_brief}",
            m.reward_mean, m.reward_std, m.loss, m.grad_norm, m.learning_rate
        );
        log.record(m.step, &line, &message)?;
        let seen = m.step * g.prompts_per_step as u64;
        let position = DataPosition { seed: g.seed, examples_seen: seen, epoch: seen / prompts.len() as u64 };
        let metrics = serde_json::json!({"loss": m.loss, "reward": m.reward_mean, "grad_norm": m.grad_norm});
        s.maybe_checkpoint_with(
            m.step,
            stop,
            trainer.adapter(),
            || trainer.optimizer_state(),
            || s.state(m.step, *trainer.schedule(), position, metrics),
            || match &mut router {
                Some(r) => Ok(vec![(ROUTER_STATE_FILE, r.save_state()?)]),
                None => Ok(Vec::new()),
            },
        )?;
        last = Some(m);
    }
    log.finish();
    let adapter_dir = s.finish(trainer.adapter())?;
    match last {
        Some(m) => println!(
            "trained to step {} of {total}: reward {:.4}; adapter in {} (try: babelrl generate --adapter {} ...)",
            m.step,
            m.reward_mean,
            adapter_dir.display(),
            adapter_dir.display()
        ),
        None => println!("nothing to do: the run is at step {} of {stop}", trainer.step_count()),
    }
    Ok(())
}
