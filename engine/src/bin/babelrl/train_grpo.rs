//! `babelrl train RUN.toml` for a `[grpo]` job (alone, or the stage after `[sft]`): the reward plugins,
//! the prompts and the `[router]`, checked before any rollout; then GRPO steps (rollouts — in the router's
//! languages with `[router]` —, plugin rewards, the update, the router's update) with metrics, checkpoints
//! and resume.

use std::sync::Arc;

use anyhow::{Context, bail};
use babelrl::generate::FinishReason;
use babelrl::model::{Encoder, RewardModel};
use babelrl::plugin::{RewardSet, RunServices, Sample, default_encoder_dir};
use babelrl::train::grpo::{
    GrpoPhase, GrpoPrompt, GrpoTrainer, LanguageRouter, PromptOrder, Rollout, RoutedRollout,
    load_grpo_prompts,
};
use babelrl::train::{ROUTER_STATE_FILE, Stage};

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

/// The second progress line: rollout tokens, then the reward call, the fixed log-probs and the update's
/// micro-batches.
fn show_phase(bar: &indicatif::ProgressBar, phase: GrpoPhase) {
    let (message, pos, len) = match phase {
        GrpoPhase::Rollout { generated, budget } => ("rollouts (tokens)", generated, budget),
        GrpoPhase::Reward => ("rewards", 0, 1),
        GrpoPhase::Fixed { done, of } => ("reference / old log-probs", done, of),
        GrpoPhase::Update { done, of } => ("update (micro-batches)", done, of),
    };
    bar.set_message(message);
    bar.set_length(len as u64);
    bar.set_position(pos as u64);
}

/// The host services of the run's plugins: `[encoder] path` and `[reward_model]` loaded now (a model that
/// does not load stops the run before any rollout); without `[encoder] path`, the cached default
/// encoder, loaded when a plugin first calls `embed`.
pub fn services(s: &Session) -> anyhow::Result<RunServices> {
    let gpu = &s.gpu;
    let run = s.run.path.display();
    let mut services = RunServices::new();
    services = match s.run.encoder.as_ref().and_then(|e| e.path.as_ref()) {
        Some(dir) => {
            let encoder = Encoder::load(Arc::clone(gpu), dir).with_context(|| {
                format!("{run}: [encoder] path = {}: the encoder does not load", dir.display())
            })?;
            services.with_encoder(Arc::new(encoder))
        }
        None => services.with_lazy_encoder(Arc::clone(gpu), default_encoder_dir()),
    };
    if let Some(rm) = &s.run.reward_model {
        let model = RewardModel::load(Arc::clone(gpu), &rm.path).with_context(|| {
            format!("{run}: [reward_model] path = {}: the reward model does not load", rm.path.display())
        })?;
        services = services.with_reward_model(Arc::new(model));
    }
    Ok(services)
}

/// What a `[grpo]` stage runs with: its prompts, reward plugins and (with `[router]`) language router.
type Prepared = (Vec<GrpoPrompt>, RewardSet, Option<LanguageRouter>);

/// The `[grpo]` prompts, the loaded reward plugins and the router, checked against each other
/// ([`check_rewards`], and the router's languages against the rewards).
fn prepare(s: &Session) -> anyhow::Result<Prepared> {
    let (g, specs) = s.run.grpo()?;
    let prompts = load_grpo_prompts(&g.data, s.lm.tokenizer()?, g.max_prompt_length)?;
    let services: Arc<RunServices> = Arc::new(services(s)?);
    // The router first: it checks the columns it needs (`language`, `id`), which rewards may need too.
    let router = crate::train_lrpo::open(s, g, &prompts, services.clone())?;
    let mut rewards = RewardSet::load(&specs.rewards, specs.on_error, std::path::Path::new(""), services)
        .with_context(|| format!("{}: loading the [[reward]] plugins", s.run.path.display()))?;
    check_rewards(&mut rewards, &prompts, &g.data)?;
    if let Some(router) = &router {
        crate::train_lrpo::check_languages(&mut rewards, router, &prompts, &g.data)?;
    }
    Ok((prompts, rewards, router))
}

/// Checks the `[grpo]` stage's prompts, plugins and router before a two-stage run spends its SFT stage, so
/// a bad plugin or data set fails at once rather than after SFT.
pub fn preflight(s: &Session) -> anyhow::Result<()> {
    prepare(s).map(drop).context("checking the [grpo] stage before the [sft] stage starts")
}

pub fn run(s: &Session) -> anyhow::Result<()> {
    let g = s.run.grpo()?.0.clone();
    let tokenizer = s.lm.tokenizer()?;
    let (prompts, mut rewards, mut router) = prepare(s)?;
    let names: Vec<String> = rewards.names().iter().map(|n| n.to_string()).collect();

    let adapter = s.adapter()?;
    let total = g.max_steps;
    let schedule = s.run.schedule(total)?;
    let options = g.options();
    let optimizer = s.run.optimizer_for(Stage::Grpo);
    let mut trainer = GrpoTrainer::new(&s.lm.decoder, tokenizer, adapter, optimizer, schedule, options)?;
    if let Some(c) = &s.checkpoint {
        if !c.state.step.is_multiple_of(g.num_iterations as u64) {
            bail!(
                "{}: the checkpoint is at step {}, inside a generation batch of num_iterations = {} steps: \
                 resume with the run file it was trained with (num_iterations changed?)",
                c.dir.display(),
                c.state.step,
                g.num_iterations
            );
        }
        let want = c.state.step / g.num_iterations as u64 * g.prompts_per_step as u64;
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
        eprintln!("{}resuming from {} (step {} of {total})", s.label(), c.dir.display(), c.state.step);
    }

    let mut order = PromptOrder::new(prompts.len(), g.seed);
    let mut log = StepLog::open(s, trainer.step_count(), total)?;
    let phase = log.phase.clone();
    trainer.on_progress(move |p| show_phase(&phase, p));
    let iterations = g.num_iterations as u64;
    // A generation batch serves num_iterations steps and checkpoints fall between batches: stop at the
    // end of one, so the last step is checkpointed.
    let stop = log.stop - log.stop % iterations;
    if stop < log.stop {
        eprintln!(
            "{}stopping at step {stop}, not {}: a multiple of num_iterations = {iterations}, so the stop is \
             checkpointed",
            s.label(),
            log.stop
        );
    }
    if trainer.step_count() >= stop && s.checkpoint.is_none() {
        log.finish();
        println!("{}GRPO not started: --stop-at ends the run before its first step", s.label());
        return Ok(());
    }
    let mut last = None;
    // Figures of the generation batch in use: a step that reuses it (num_iterations > 1) repeats them.
    let mut plugin_sums = vec![(0.0f64, 0usize); names.len()];
    let (mut unscored, mut truncated, mut rollouts_n) = (0usize, 0usize, 0usize);
    // Groups no plugin scored at all: their advantages are 0 (as TRL), so they teach nothing; their
    // tokens still count in the loss's normaliser, as TRL's do.
    let mut skipped_groups = 0usize;
    // The generation batch in use: its routes and rewards (for the router and the metrics).
    let mut routes: Option<Vec<RoutedRollout>> = None;
    let mut step_rewards: Vec<f64> = Vec::new();
    while trainer.step_count() < stop {
        let step0 = trainer.step_count();
        let generating = trainer.needs_rollouts();
        let first = step0 / iterations * g.prompts_per_step as u64;
        let picked: Vec<usize> = (first..first + g.prompts_per_step as u64).map(|k| order.at(k)).collect();
        let n = g.num_generations;
        // Each rollout's question and the prompt it is asked with (with [router], in its language). The
        // router chooses once per generation batch.
        if generating {
            routes = match &mut router {
                Some(r) => Some(r.route(step0, &picked, n).with_context(|| {
                    format!(
                        "step {}: the router's choose failed (the last checkpoint is intact; fix the cause \
                         and pass --resume)",
                        step0 + 1
                    )
                })?),
                None => None,
            };
        }
        let asked: Vec<&GrpoPrompt> = match (&router, &routes) {
            (Some(r), Some(routes)) => routes.iter().map(|x| r.prompt(&prompts, x)).collect(),
            _ => picked.iter().flat_map(|&p| std::iter::repeat_n(&prompts[p], n)).collect(),
        };
        let tokens: Vec<Vec<u32>> = asked.iter().map(|p| p.tokens.clone()).collect();
        let mut reward_seconds = 0.0;
        let m = trainer.step_rollouts(&tokens, |rollouts: &[Rollout]| {
            plugin_sums.iter_mut().for_each(|s| *s = (0.0, 0));
            unscored = 0;
            skipped_groups = 0;
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
                let none = (0..group.len()).all(|i| scored.per_plugin.iter().all(|s| s[i].is_none()));
                skipped_groups += usize::from(none);
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
            // Once per generation batch; a step that reuses it repeats its shares.
            if generating {
                r.update(step0, routes, &step_rewards).with_context(|| {
                    format!(
                        "step {}: the router's update failed after the step's update (the last checkpoint \
                         is intact; fix the cause and pass --resume)",
                        m.step
                    )
                })?;
            }
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
            "skipped_groups": skipped_groups,
            "kl": m.kl, "iteration": m.iteration, "generated_tokens": m.generated_tokens,
            "rollout_seconds": m.rollout_seconds, "reward_seconds": reward_seconds,
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
        // Checkpoints fall between generation batches only (a reused batch is not saved).
        if trainer.needs_rollouts() {
            let seen = m.step / iterations * g.prompts_per_step as u64;
            let position =
                DataPosition { seed: g.seed, examples_seen: seen, epoch: seen / prompts.len() as u64 };
            let metrics =
                serde_json::json!({"loss": m.loss, "reward": m.reward_mean, "grad_norm": m.grad_norm});
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
        }
        last = Some(m);
    }
    log.finish();
    let adapter_dir = s.finish(trainer.adapter())?;
    match last {
        Some(m) => println!(
            "{}trained to step {} of {total}: reward {:.4}; adapter in {} (try: babelrl generate --adapter {} ...)",
            s.label(),
            m.step,
            m.reward_mean,
            adapter_dir.display(),
            adapter_dir.display()
        ),
        None => println!("{}nothing to do: the run is at step {} of {stop}", s.label(), trainer.step_count()),
    }
    Ok(())
}
