//! `babelrl train RUN.toml` for a `[dpo]` job (alone, or the stage after `[sft]`): the pairs — a preference
//! file, or on-policy pairs (each step samples `num_generations` completions of each prompt with the current
//! policy, the judge — `[[reward]]` plugins, else the `[reward_model]` — scores them, the best is chosen and
//! the worst rejected) — then DPO steps with
//! TRL's metrics (loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/*),
//! checkpoints and resume.

use std::sync::Arc;

use anyhow::{Context, bail};
use babelrl::generate::{SamplingConfig, argmax, generate};
use babelrl::model::{RewardModel, RmPrompt};
use babelrl::plugin::{RewardSet, Sample};
use babelrl::train::Stage;
use babelrl::train::dpo::{DpoPair, DpoStepMetrics, DpoTrainer, load_dpo_pairs};
use babelrl::train::grpo::{GrpoPrompt, PromptOrder, load_grpo_prompts};
use babelrl::train::run_file::{DpoPairs, DpoSection};

use crate::train_cmd::{DataPosition, Session, StepLog};

/// The `[dpo]` stage's pairs (file pairs only), for `--stop-at` counts and the trainer.
pub fn file_pairs(s: &Session) -> anyhow::Result<Vec<DpoPair>> {
    let d = s.run.dpo.as_ref().context("no [dpo] section")?;
    Ok(load_dpo_pairs(&d.data, s.lm.tokenizer()?)?)
}

/// What ranks an on-policy stage's samples.
enum Ranker {
    /// `[[reward]]` plugins, each prompt's samples scored as one group (their `[reward_model]` and
    /// `[encoder]`, if any, serve the plugins).
    Plugins(RewardSet),
    RewardModel(Box<RewardModel>),
}

/// What an on-policy stage samples from and ranks with.
struct OnPolicy {
    prompts: Vec<GrpoPrompt>,
    ranker: Ranker,
    sampling: SamplingConfig,
    n: usize,
}

fn on_policy(s: &Session, d: &DpoSection) -> anyhow::Result<Option<OnPolicy>> {
    let DpoPairs::OnPolicy {
        num_generations,
        max_completion_length,
        max_prompt_length,
        temperature,
        top_p,
        top_k,
    } = d.pairs
    else {
        return Ok(None);
    };
    let ranker = match &s.run.rewards {
        Some(specs) => {
            let services = Arc::new(crate::train_grpo::services(s)?);
            let set = RewardSet::load(&specs.rewards, specs.on_error, std::path::Path::new(""), services)
                .with_context(|| format!("{}: loading the [[reward]] plugins", s.run.path.display()))?;
            Ranker::Plugins(set)
        }
        None => Ranker::RewardModel(Box::new(load_reward_model(s)?)),
    };
    let prompts = load_grpo_prompts(&d.data, s.lm.tokenizer()?, max_prompt_length)?;
    let sampling = SamplingConfig {
        temperature,
        top_p,
        top_k,
        seed: d.seed,
        max_new_tokens: max_completion_length,
        ..SamplingConfig::default()
    };
    Ok(Some(OnPolicy { prompts, ranker, sampling, n: num_generations }))
}

/// The `[reward_model]` that ranks on-policy samples.
fn load_reward_model(s: &Session) -> anyhow::Result<RewardModel> {
    let rm = s.run.reward_model.as_ref().context("[dpo] pairs = \"on_policy\" needs a judge")?;
    RewardModel::load(Arc::clone(&s.gpu), &rm.path).with_context(|| {
        format!(
            "{}: [reward_model] path = {}: the reward model does not load",
            s.run.path.display(),
            rm.path.display()
        )
    })
}

/// Checks the stage's inputs before an `[sft]` stage spends time: the pairs, or the prompts and the
/// reward model.
pub fn preflight(s: &Session) -> anyhow::Result<()> {
    let d = s.run.dpo.clone().context("no [dpo] section")?;
    match d.pairs {
        DpoPairs::File => file_pairs(s).map(drop),
        DpoPairs::OnPolicy { .. } => on_policy(s, &d).map(drop),
    }
    .context("checking the [dpo] stage before the [sft] stage starts")
}

/// The pairs of one on-policy step: for each prompt, the best- and worst-scoring of its samples (the first
/// on a tie; samples the judge did not score take no part). A prompt gives none when fewer than two samples
/// were scored, all score the same, or the two are the same tokens. Returns the pairs, the mean score of
/// the scored samples and the prompts skipped.
fn sample_pairs(
    trainer: &DpoTrainer,
    s: &Session,
    op: &mut OnPolicy,
    picked: &[usize],
    step: u64,
) -> anyhow::Result<(Vec<DpoPair>, f64, usize)> {
    let tok = s.lm.tokenizer()?;
    let n = op.n;
    let repeated: Vec<Vec<u32>> =
        picked.iter().flat_map(|&p| std::iter::repeat_n(op.prompts[p].tokens.clone(), n)).collect();
    let sampling = SamplingConfig { seed: op.sampling.seed.wrapping_add(step), ..op.sampling.clone() };
    let done = generate(s.lm.decoder.with_adapter(trainer.adapter()), tok, &repeated, &sampling, |_| {})?;
    let scores: Vec<Option<f32>> = match &mut op.ranker {
        Ranker::RewardModel(rm) => {
            let texts: Vec<String> = done.iter().map(|c| c.text.clone()).collect();
            let prompts: Vec<RmPrompt> = picked
                .iter()
                .flat_map(|&p| {
                    let prompt = &op.prompts[p];
                    let rm_prompt = match &prompt.messages {
                        Some(m) => RmPrompt::Chat(m),
                        None => RmPrompt::Text(&prompt.text),
                    };
                    std::iter::repeat_n(rm_prompt, n)
                })
                .collect();
            let scores =
                rm.score_prompts(&prompts, &texts).context("scoring the samples with [reward_model]")?;
            scores.into_iter().map(Some).collect()
        }
        Ranker::Plugins(set) => {
            let mut all = Vec::with_capacity(done.len());
            for (g, &p) in picked.iter().enumerate() {
                let group: Vec<Sample> =
                    done[g * n..(g + 1) * n].iter().map(|c| op.prompts[p].sample(&c.text)).collect();
                let scored = set.score(&group).context("scoring the samples with the [[reward]] plugins")?;
                all.extend(
                    (0..n)
                        .map(|k| scored.per_plugin.iter().any(|s| s[k].is_some()).then_some(scored.total[k])),
                );
            }
            all
        }
    };
    let scores: Vec<Option<f32>> = scores.into_iter().map(|v| v.filter(|v| !v.is_nan())).collect();
    let finite: Vec<f64> = scores.iter().flatten().map(|&v| f64::from(v)).collect();
    let mean = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
    let (mut pairs, mut skipped) = (Vec::new(), 0);
    for (g, &p) in picked.iter().enumerate() {
        let group = &scores[g * n..(g + 1) * n];
        let best = argmax(group);
        let worst = argmax(&group.iter().map(|v| v.map(|v| -v)).collect::<Vec<_>>());
        let (Some(best), Some(worst)) = (best, worst) else {
            skipped += 1;
            continue;
        };
        let (b, w) = (g * n + best, g * n + worst);
        if group[best] == group[worst] || done[b].tokens == done[w].tokens {
            skipped += 1;
            continue;
        }
        pairs.push(DpoPair {
            prompt: op.prompts[p].tokens.clone(),
            chosen: done[b].tokens.clone(),
            rejected: done[w].tokens.clone(),
        });
    }
    Ok((pairs, mean, skipped))
}

pub fn run(s: &Session) -> anyhow::Result<()> {
    let d = s.run.dpo.clone().context("no [dpo] section")?;
    let adapter = s.adapter()?;
    let optimizer = s.run.optimizer_for(Stage::Dpo);
    let mut op = on_policy(s, &d)?;
    let (mut trainer, total) = match &op {
        None => {
            let pairs = file_pairs(s)?;
            let total = d.total_steps(pairs.len());
            let schedule = s.run.schedule(total)?;
            (DpoTrainer::new(&s.lm.decoder, adapter, &pairs, optimizer, schedule, d.options())?, total)
        }
        Some(_) => {
            let total = d.total_steps(0);
            let schedule = s.run.schedule(total)?;
            (DpoTrainer::on_policy(&s.lm.decoder, adapter, optimizer, schedule, d.options())?, total)
        }
    };
    let prompts_per_step = (d.per_device_train_batch_size * d.gradient_accumulation_steps) as u64;
    if let Some(c) = &s.checkpoint {
        let want = c.state.step * prompts_per_step;
        if c.state.examples_seen != want || c.state.data_seed != d.seed {
            bail!(
                "{}: the checkpoint has seen {} pairs with data seed {}; this run file takes \
                 {prompts_per_step} a step with seed {} (expected {want} at step {}): resume with the run \
                 file it was trained with",
                c.dir.display(),
                c.state.examples_seen,
                c.state.data_seed,
                d.seed,
                c.state.step
            );
        }
        trainer
            .restore(&c.optimizer, if op.is_none() { c.state.examples_seen } else { 0 })
            .with_context(|| format!("{}: resuming from this checkpoint", c.dir.display()))?;
        eprintln!("{}resuming from {} (step {} of {total})", s.label(), c.dir.display(), c.state.step);
    }
    let mut order = op.as_ref().map(|op| PromptOrder::new(op.prompts.len(), d.seed));
    let mut log = StepLog::open(s, trainer.step_count(), total)?;
    let stop = log.stop;
    let mut last: Option<DpoStepMetrics> = None;
    while trainer.step_count() < stop {
        let step0 = trainer.step_count();
        let (m, sampled) = match (&mut op, &mut order) {
            (Some(op), Some(order)) => {
                let first = step0 * prompts_per_step;
                let picked: Vec<usize> = (first..first + prompts_per_step).map(|k| order.at(k)).collect();
                let (pairs, mean, skipped) = sample_pairs(&trainer, s, op, &picked, step0)?;
                if pairs.is_empty() {
                    bail!(
                        "step {}: no prompt's {} samples gave a pair (all scored alike by the judge, or \
                         too few were scored): raise temperature or num_generations; the last checkpoint is \
                         intact",
                        step0 + 1,
                        op.n
                    );
                }
                let n = pairs.len();
                (trainer.step_pairs(&pairs), Some((mean, n, skipped)))
            }
            _ => (trainer.step(), None),
        };
        let m = m.with_context(|| {
            format!(
                "step {}: no update (the last checkpoint is intact; fix the cause and pass --resume)",
                step0 + 1
            )
        })?;
        if !m.loss.is_finite() {
            bail!(
                "step {}: the loss is {} (lower the learning rate); the last checkpoint is intact",
                m.step,
                m.loss
            );
        }
        let mut line = serde_json::to_value(m)?;
        if let (Some((mean, n, skipped)), Some(fields)) = (sampled, line.as_object_mut()) {
            fields.insert("reward_mean".into(), mean.into());
            fields.insert("pairs".into(), n.into());
            fields.insert("prompts_skipped".into(), skipped.into());
        }
        let message = format!(
            "loss {:.4}  margin {:.4}  acc {:.2}  lr {:.3e}",
            m.loss, m.dpo.rewards_margins, m.dpo.rewards_accuracies, m.learning_rate
        );
        log.record(m.step, &line, &message)?;
        let seen = m.step * prompts_per_step;
        let position = DataPosition { seed: d.seed, examples_seen: seen, epoch: m.epoch as u64 };
        let metrics = serde_json::json!({"loss": m.loss, "rewards/margins": m.dpo.rewards_margins});
        s.maybe_checkpoint(
            m.step,
            stop,
            trainer.adapter(),
            || trainer.optimizer_state(),
            || s.state(m.step, *trainer.schedule(), position, metrics),
        )?;
        last = Some(m);
    }
    log.finish();
    let adapter_dir = s.finish(trainer.adapter())?;
    match last {
        Some(m) => println!(
            "{}trained to step {} of {total}: loss {:.4}, rewards/margins {:.4}, rewards/accuracies {:.2}; \
             adapter in {}",
            s.label(),
            m.step,
            m.loss,
            m.dpo.rewards_margins,
            m.dpo.rewards_accuracies,
            adapter_dir.display()
        ),
        None => println!("{}nothing to do: the run is at step {} of {stop}", s.label(), trainer.step_count()),
    }
    Ok(())
}
