//! GRPO steps end to end on the tiny Llama (GGUF with its tokenizer): rollouts with the adapter on, a
//! deterministic reward, TRL's loss through the training walk, AdamW. The mean reward must rise well above
//! where it starts within a bounded number of steps.

use crate::common::{gpu, repo_root};

use babelrl::generate::SamplingConfig;
use babelrl::gpu::{Gpu, GpuOptions, SubgroupMatmulRows};
use babelrl::lora::{Adapter, LoraConfig, Target};
use babelrl::model::load_language_model;
use babelrl::train::grpo::{GrpoLossConfig, GrpoOptions, GrpoTrainer, ScaleRewards};
use babelrl::train::{AdamWConfig, Schedule, SchedulerType};

#[test]
fn grpo_raises_a_deterministic_reward() {
    let lm = load_language_model(gpu(), &repo_root().join("tests/fixtures/tiny-llama-gguf/tiny-llama.gguf"))
        .unwrap();
    let tok = lm.tokenizer().unwrap();
    let dec = &lm.decoder;
    // The reward: the share of completion tokens that are a lowercase letter (26 of 300 ids).
    let letters: Vec<u32> = ('a'..='z').filter_map(|c| tok.token_to_id(&c.to_string())).collect();
    assert_eq!(letters.len(), 26);
    let prompts: Vec<Vec<u32>> =
        ["sky is", "grass is"].iter().map(|p| tok.encode(p, true).unwrap()).collect();
    let lora = LoraConfig::new(8, 16.0, &Target::ALL).unwrap();
    let adapter = Adapter::init(gpu(), lora, dec.config(), 1).unwrap();
    let options = GrpoOptions {
        num_generations: 8,
        sampling: SamplingConfig { temperature: 1.0, max_new_tokens: 6, ..Default::default() },
        loss: GrpoLossConfig { max_completion_length: 6, ..Default::default() },
        scale_rewards: ScaleRewards::Group,
        mask_truncated_completions: false,
        num_iterations: 1,
        seed: 5,
    };
    let optim = AdamWConfig { learning_rate: 2e-2, ..Default::default() };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, 40).unwrap();
    let mut trainer = GrpoTrainer::new(dec, tok, adapter, optim, schedule, options).unwrap();
    let mut means = Vec::new();
    for _ in 0..40 {
        let m = trainer
            .step(&prompts, |rollouts| {
                Ok(rollouts
                    .iter()
                    .map(|r| {
                        let t = &r.completion.tokens;
                        t.iter().filter(|id| letters.contains(id)).count() as f64 / t.len().max(1) as f64
                    })
                    .collect())
            })
            .unwrap();
        assert!(m.loss.is_finite() && m.grad_norm.is_finite(), "{m:?}");
        means.push(m.reward_mean);
    }
    let first = means[..5].iter().sum::<f64>() / 5.0;
    let last = means[35..].iter().sum::<f64>() / 5.0;
    eprintln!("mean reward: first 5 steps {first:.3}, last 5 {last:.3}; {means:.2?}");
    assert!(last > 0.4 && last > 3.0 * first, "the reward did not rise: {first:.3} → {last:.3}");
}

/// With `beta ≠ 0` the reference pass (the adapter off) gives the KL term its log-probs: a fresh adapter
/// (B = 0) is the base model itself, so the first step's KL is exactly 0; once the adapter has moved the
/// KL is positive, and `Decoder::reference_forward` gives the base model's log-probs at the temperature.
#[test]
fn grpo_with_beta_measures_the_kl_to_the_base_model() {
    let lm = load_language_model(gpu(), &repo_root().join("tests/fixtures/tiny-llama-gguf/tiny-llama.gguf"))
        .unwrap();
    let tok = lm.tokenizer().unwrap();
    let dec = &lm.decoder;
    let prompts: Vec<Vec<u32>> = ["sky is"].iter().map(|p| tok.encode(p, true).unwrap()).collect();
    let adapter =
        Adapter::init(gpu(), LoraConfig::new(4, 8.0, &Target::ALL).unwrap(), dec.config(), 2).unwrap();
    let options = GrpoOptions {
        num_generations: 4,
        sampling: SamplingConfig { temperature: 0.9, max_new_tokens: 5, ..Default::default() },
        loss: GrpoLossConfig { beta: 0.04, max_completion_length: 5, ..Default::default() },
        scale_rewards: ScaleRewards::Group,
        mask_truncated_completions: false,
        num_iterations: 1,
        seed: 3,
    };
    let optim = AdamWConfig { learning_rate: 2e-2, ..Default::default() };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, 5).unwrap();
    let mut trainer = GrpoTrainer::new(dec, tok, adapter, optim, schedule, options).unwrap();
    let reward = |rollouts: &[babelrl::train::grpo::Rollout]| {
        // Varies across a group (a constant reward has zero advantages and moves nothing).
        Ok(rollouts.iter().map(|r| r.completion.tokens.first().map_or(0.0, |&t| t as f64 / 300.0)).collect())
    };
    let first = trainer.step(&prompts, reward).unwrap();
    assert_eq!(first.kl, Some(0.0), "a fresh adapter is the base model: {first:?}");
    let mut last = first;
    for _ in 0..4 {
        last = trainer.step(&prompts, reward).unwrap();
    }
    assert!(last.kl.is_some_and(|kl| kl > 0.0 && kl.is_finite()), "{last:?}");
}

/// A GRPO trainer on the tiny Llama with `options` changed by `edit` (2 prompts × 4 completions).
fn tiny_trainer<'m>(
    lm: &'m babelrl::model::LanguageModel,
    lr: f64,
    edit: impl FnOnce(&mut GrpoOptions),
) -> GrpoTrainer<'m> {
    let tok = lm.tokenizer().unwrap();
    let dec = &lm.decoder;
    let adapter =
        Adapter::init(dec.gpu().clone(), LoraConfig::new(4, 8.0, &Target::ALL).unwrap(), dec.config(), 7)
            .unwrap();
    let mut options = GrpoOptions {
        num_generations: 4,
        sampling: SamplingConfig { temperature: 1.0, max_new_tokens: 5, ..Default::default() },
        loss: GrpoLossConfig { max_completion_length: 5, ..Default::default() },
        scale_rewards: ScaleRewards::Group,
        mask_truncated_completions: false,
        num_iterations: 1,
        seed: 11,
    };
    edit(&mut options);
    let optim = AdamWConfig { learning_rate: lr, ..Default::default() };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, 10).unwrap();
    GrpoTrainer::new(dec, tok, adapter, optim, schedule, options).unwrap()
}

/// A reward that varies within a group: the first completion token's id, scaled.
fn first_token_reward(rollouts: &[babelrl::train::grpo::Rollout]) -> babelrl::Result<Vec<f64>> {
    Ok(rollouts.iter().map(|r| r.completion.tokens.first().map_or(0.0, |&t| t as f64 / 300.0)).collect())
}

fn tiny_prompts(lm: &babelrl::model::LanguageModel) -> Vec<Vec<u32>> {
    let tok = lm.tokenizer().unwrap();
    ["sky is", "grass is"].iter().map(|p| tok.encode(p, true).unwrap()).collect()
}

fn max_param_diff(a: &Adapter, b: &Adapter) -> f32 {
    let (a, b) = (a.to_host().unwrap(), b.to_host().unwrap());
    a.iter()
        .zip(&b)
        .flat_map(|(x, y)| x.a.iter().zip(&y.a).chain(x.b.iter().zip(&y.b)))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `dapo` normalises by the active tokens of the whole generation batch, so splitting the 8 rollouts
/// into 2 micro-batches (gradient accumulation) must give the same loss, gradient and update as one
/// micro-batch (up to the order of float sums). A micro-batch loss that forgot the accumulation (each
/// divided by its own tokens) would double the gradient.
#[test]
fn gradient_accumulation_splits_a_step_without_changing_it() {
    // One micro-batch of 8 completions and two of 4 have different row counts (their group's prompt
    // laid out once), and on lavapipe the broadcast kernels pick one or four rows per lane by row
    // count, rounding differently: with four rows per lane from one row on, both take the same kernels
    // and differ only in the order of their sums.
    let same_kernels = SubgroupMatmulRows { one_per_lane: 1, four_per_lane: 1 };
    let gpu =
        Gpu::new(&GpuOptions { subgroup_matmul_rows: Some(same_kernels), ..GpuOptions::from_env() }).unwrap();
    let lm = load_language_model(gpu, &repo_root().join("tests/fixtures/tiny-llama-gguf/tiny-llama.gguf"))
        .unwrap();
    let prompts = tiny_prompts(&lm);
    let mut whole = tiny_trainer(&lm, 1e-2, |_| {});
    let mut split = tiny_trainer(&lm, 1e-2, |o| o.loss.gradient_accumulation_steps = 2);
    for step in 0..3 {
        let a = whole.step(&prompts, first_token_reward).unwrap();
        let b = split.step(&prompts, first_token_reward).unwrap();
        assert_eq!(a.generated_tokens, b.generated_tokens, "step {step}: the same rollouts");
        assert_eq!(a.completion_tokens, b.completion_tokens);
        assert!((a.loss - b.loss).abs() <= 1e-6 * a.loss.abs().max(1.0), "step {step}: {a:?}\n{b:?}");
        let rel = (a.grad_norm - b.grad_norm).abs() / a.grad_norm;
        assert!(rel < 1e-5, "step {step}: grad norm {} vs {}", a.grad_norm, b.grad_norm);
        // AdamW's first update is lr·g/(|g| + eps): equal gradients give equal adapters. Later updates
        // divide by √v, which magnifies float-order noise on elements whose gradient is ~0, so the
        // gradient (norm) is what the later steps compare.
        if step == 0 {
            let diff = max_param_diff(whole.adapter(), split.adapter());
            assert!(diff < 1e-6, "adapters differ by {diff} after the first step");
        }
    }
    let mut odd = tiny_trainer(&lm, 1e-2, |o| o.loss.gradient_accumulation_steps = 3);
    let err = odd.step(&prompts, first_token_reward).unwrap_err().to_string();
    assert!(err.contains("gradient_accumulation_steps = 3"), "{err}");
}

/// `num_iterations = 2`: a generation batch serves two optimizer steps. The first equals the step of a
/// `num_iterations = 1` run bit for bit (the stored log-probs are the policy's own, so the ratio is
/// exactly 1); the second generates nothing, calls no reward, and its ratio against the stored
/// log-probs is no longer 1, so with a large step the clip fires.
#[test]
fn num_iterations_reuses_a_generation_with_stored_log_probs() {
    let lm = load_language_model(gpu(), &repo_root().join("tests/fixtures/tiny-llama-gguf/tiny-llama.gguf"))
        .unwrap();
    let prompts = tiny_prompts(&lm);
    let mut once = tiny_trainer(&lm, 0.1, |_| {});
    let mut twice = tiny_trainer(&lm, 0.1, |o| o.num_iterations = 2);
    let a = once.step(&prompts, first_token_reward).unwrap();
    let calls = std::cell::Cell::new(0);
    let counted = |r: &[babelrl::train::grpo::Rollout]| {
        calls.set(calls.get() + 1);
        first_token_reward(r)
    };
    let b = twice.step(&prompts, counted).unwrap();
    assert_eq!((a.loss, a.grad_norm), (b.loss, b.grad_norm), "{a:?}\n{b:?}");
    assert_eq!(max_param_diff(once.adapter(), twice.adapter()), 0.0);
    assert_eq!((b.clip_ratio, b.iteration), (0.0, 0));
    assert!(!twice.needs_rollouts());
    let c = twice.step(&prompts, counted).unwrap();
    assert_eq!(calls.get(), 1, "the second iteration reuses the rollouts");
    assert!(twice.needs_rollouts());
    assert_eq!((c.iteration, c.generated_tokens, c.step), (1, 0, 2));
    assert_eq!((c.reward_mean, c.completion_tokens), (b.reward_mean, b.completion_tokens));
    assert!(c.clip_ratio > 0.0, "the policy moved, the ratio must leave [0.8, 1.2] somewhere: {c:?}");
    let d = twice.step(&prompts, counted).unwrap();
    assert_eq!((calls.get(), d.iteration, d.clip_ratio), (2, 0, 0.0), "a fresh generation: {d:?}");
}
