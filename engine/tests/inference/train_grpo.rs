//! GRPO steps end to end on the tiny Llama (GGUF with its tokenizer): rollouts with the adapter on, a
//! deterministic reward, TRL's loss through the training walk, AdamW. The mean reward must rise well above
//! where it starts within a bounded number of steps.

use crate::common::{gpu, repo_root};

use babelrl::generate::SamplingConfig;
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
