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
