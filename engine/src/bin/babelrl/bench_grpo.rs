//! `babelrl bench --grpo`: one GRPO step on the model — a group of completions of one prompt generated
//! with a LoRA adapter (r = 16 on all seven projections), a cheap reward, the reference pass when beta ≠ 0,
//! the update — timed by part, as `scripts/bench_pytorch.py --grpo` times TRL's GRPOTrainer.

use babelrl::generate::SamplingConfig;
use babelrl::lora::{Adapter, LoraConfig, Target};
use babelrl::model::LanguageModel;
use babelrl::train::grpo::{
    GrpoLossConfig, GrpoOptions, GrpoStepMetrics, GrpoTrainer, Rollout, ScaleRewards,
};
use babelrl::train::{AdamWConfig, Schedule, SchedulerType};
use rand::{Rng, SeedableRng};

use crate::bench::Figures;

/// The shapes of the GRPO measurement.
pub struct GrpoBench {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub generations: usize,
    pub steps: usize,
    pub beta: f64,
}

/// The reward of TRL_GRPO_NOTES' measurement: −|tokens − half the budget| / half the budget.
fn reward(rollouts: &[Rollout], budget: usize) -> Vec<f64> {
    let half = (budget as f64 / 2.0).max(1.0);
    rollouts.iter().map(|r| -((r.completion.tokens.len() as f64 - half).abs()) / half).collect()
}

/// Runs the GRPO step measurement and prints it as a Markdown table.
pub fn bench_grpo(lm: &LanguageModel, b: &GrpoBench, figures: &mut Figures) -> anyhow::Result<()> {
    let model = &lm.decoder;
    let tokenizer = lm.tokenizer()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let vocab = model.config().vocab as u32;
    let prompt: Vec<u32> = (0..b.prompt_tokens).map(|_| rng.random_range(0..vocab)).collect();
    let adapter =
        Adapter::init(model.gpu().clone(), LoraConfig::new(16, 32.0, &Target::ALL)?, model.config(), 0)?;
    let options = GrpoOptions {
        num_generations: b.generations,
        sampling: SamplingConfig {
            temperature: 1.0,
            max_new_tokens: b.completion_tokens,
            ..Default::default()
        },
        loss: GrpoLossConfig {
            beta: b.beta,
            max_completion_length: b.completion_tokens,
            ..Default::default()
        },
        scale_rewards: ScaleRewards::Group,
        mask_truncated_completions: false,
        num_iterations: 1,
        seed: 1,
    };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, b.steps as u64 + 1)?;
    let optim = AdamWConfig { learning_rate: 1e-5, ..Default::default() };
    let mut trainer = GrpoTrainer::new(model, tokenizer, adapter, optim, schedule, options)?;
    let prompts = [prompt];
    let mut step = || -> anyhow::Result<(GrpoStepMetrics, f64)> {
        let start = std::time::Instant::now();
        let m = trainer.step(&prompts, |r| Ok(reward(r, b.completion_tokens)))?;
        Ok((m, start.elapsed().as_secs_f64()))
    };
    step()?; // warm-up: pipelines and allocations
    model.gpu().take_profile(); // the warm-up's kernels are not part of the profile
    let mut runs = Vec::new();
    for _ in 0..b.steps {
        runs.push(step()?);
    }
    let kernels = model.gpu().take_profile();
    let memory = trainer.memory();
    let n = runs.len().max(1) as f64;
    let mean = |f: &dyn Fn(&(GrpoStepMetrics, f64)) -> f64| runs.iter().map(f).sum::<f64>() / n;
    let total = mean(&|r| r.1);
    let (rollout, rew, reference, update) = (
        mean(&|r| r.0.rollout_seconds),
        mean(&|r| r.0.reward_seconds),
        mean(&|r| r.0.reference_seconds),
        mean(&|r| r.0.update_seconds),
    );
    let generated = mean(&|r| r.0.generated_tokens as f64);
    println!(
        "\nGRPO step: LoRA r = 16 on all seven projections, 1 prompt of {} tokens × {} completions of up to {} \
         tokens, beta {}, mean of {} steps after a warm-up",
        b.prompt_tokens, b.generations, b.completion_tokens, b.beta, b.steps
    );
    println!(
        "| s/step | rollout s | reward s | reference s | update s | new tokens/step | new tokens/s | GPU memory \
         MiB: weights / update activations / LoRA + optimizer |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "| {total:.2} | {rollout:.2} | {rew:.4} | {reference:.2} | {update:.2} | {generated:.1} | {:.1} | {:.1} / \
         {:.1} / {:.1} |",
        generated / total,
        mib(memory.weights),
        mib(memory.activations),
        mib(memory.lora_and_optimizer)
    );
    if !kernels.is_empty() {
        // Rollout (decode kernels, prefill) and update (training kernels) together, per step.
        crate::bench::print_profile("GRPO step, rollout and update, per step", &kernels, b.steps);
    }
    for (name, v) in [
        ("grpo_step_seconds", total),
        ("grpo_rollout_seconds", rollout),
        ("grpo_reward_seconds", rew),
        ("grpo_reference_seconds", reference),
        ("grpo_update_seconds", update),
        ("grpo_tokens_per_s", generated / total),
        ("grpo_weight_bytes", memory.weights as f64),
        ("grpo_activation_bytes", memory.activations as f64),
        ("grpo_lora_optimizer_bytes", memory.lora_and_optimizer as f64),
    ] {
        figures.add(name.into(), v);
    }
    Ok(())
}
