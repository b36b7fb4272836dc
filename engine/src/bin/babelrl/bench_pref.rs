//! `babelrl bench --reward / --dpo / --best-of-n`: a Bradley–Terry reward-model step and a DPO step on
//! random token pairs (LoRA r = 16 on all seven projections), and best-of-n with a reward-model judge,
//! measured as `scripts/bench_pytorch.py` measures TRL's RewardTrainer and DPOTrainer and transformers'
//! generate + a sequence-classification forward.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use babelrl::generate::{BestOfPrompt, Judge, SamplingConfig, best_of_n};
use babelrl::lora::{Adapter, LoraConfig, Target};
use babelrl::model::{Decoder, LanguageModel, RewardModel, RmPrompt};
use babelrl::plugin::Sample;
use babelrl::train::dpo::{DpoLossConfig, DpoOptions, DpoTrainer};
use babelrl::train::reward::initial_head;
use babelrl::train::{
    AdamWConfig, MemoryReport, PairOrigin, RewardOptions, RewardPair, RewardTrainer, Schedule, SchedulerType,
    save_reward_adapter,
};
use rand::{Rng, SeedableRng};

use crate::bench::Figures;

/// The shapes of the reward-model measurement.
pub struct RewardBench {
    pub pairs: usize,
    /// Tokens of each side (chosen and rejected alike).
    pub tokens: usize,
    pub steps: usize,
}

/// The shapes of the DPO measurement.
pub struct DpoBench {
    pub pairs: usize,
    pub prompt_tokens: usize,
    /// Tokens of each completion (chosen and rejected alike).
    pub completion_tokens: usize,
    pub steps: usize,
    pub beta: f64,
}

/// The shapes of the best-of-n measurement.
pub struct BestOfNBench {
    pub prompts: usize,
    /// Completions sampled per prompt.
    pub samples: usize,
    /// Most new tokens per completion.
    pub tokens: usize,
}

/// The prompt text of best-of-n (the peer's `BON_TEXT`).
const BON_TEXT: &str = "Write one sentence about the weather in the mountains, numbered";

fn lora(model: &Decoder, base: Option<&Path>) -> anyhow::Result<Adapter> {
    let mut config = LoraConfig::new(16, 32.0, &Target::ALL)?;
    config.base_model = base.map(|b| b.to_string_lossy().into_owned());
    Ok(Adapter::init(model.gpu().clone(), config, model.config(), 0)?)
}

fn draw(rng: &mut rand_chacha::ChaCha8Rng, vocab: u32, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab)).collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Prints one trainer's row and records its figures under `key`.
fn report(key: &str, secs: &[f64], tokens: usize, mem: MemoryReport, figures: &mut Figures) {
    let s_step = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
    let rate = tokens as f64 / s_step;
    println!("| s/step | tokens/s | weights MiB | activations MiB | LoRA + optimizer MiB |");
    println!("|---|---|---|---|---|");
    println!(
        "| {s_step:.2} | {rate:.1} | {:.1} | {:.1} | {:.1} |",
        mib(mem.weights),
        mib(mem.activations),
        mib(mem.lora_and_optimizer)
    );
    figures.add(format!("{key}_step_seconds"), s_step);
    figures.add(format!("{key}_tokens_per_s"), rate);
    figures.add(format!("{key}_activation_bytes"), mem.activations as f64);
    figures.add(format!("{key}_weight_bytes"), mem.weights as f64);
    figures.add(format!("{key}_lora_optimizer_bytes"), mem.lora_and_optimizer as f64);
}

/// Bradley–Terry steps of a reward model (the base's body, a fresh head, LoRA r = 16) on random pairs:
/// one warm-up step, then `steps` timed ones; tokens/s counts both sides of every pair.
pub fn bench_reward(body: &LanguageModel, b: &RewardBench, figures: &mut Figures) -> anyhow::Result<()> {
    let model = &body.decoder;
    let vocab = model.config().vocab as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let data: Vec<RewardPair> = (0..b.pairs)
        .map(|i| RewardPair {
            chosen: draw(&mut rng, vocab, b.tokens),
            rejected: draw(&mut rng, vocab, b.tokens),
            language: None,
            origin: PairOrigin::Item(i + 1),
        })
        .collect();
    let head = initial_head(&body.path, model.config(), 0)?;
    let options = RewardOptions { batch_size: b.pairs, shuffle: false, ..Default::default() };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, b.steps as u64 + 2)?;
    let optim = AdamWConfig { learning_rate: 1e-4, ..Default::default() };
    let mut trainer = RewardTrainer::new(model, lora(model, None)?, &head, data, optim, schedule, options)?;
    trainer.step()?; // warm-up: pipelines and allocations
    let (mut secs, mut tokens) = (Vec::new(), 0);
    for _ in 0..b.steps {
        let m = trainer.step()?;
        anyhow::ensure!(m.loss.is_finite(), "reward bench: the loss is {}", m.loss);
        secs.push(m.seconds);
        tokens = m.tokens;
    }
    println!(
        "\nReward-model step (Bradley–Terry, LoRA r = 16 on all seven projections + score head): {} pairs × \
         2 × {} tokens, mean of {} steps after a warm-up",
        b.pairs, b.tokens, b.steps
    );
    report("reward", &secs, tokens, trainer.memory(), figures);
    Ok(())
}

/// DPO steps (sigmoid loss) on random pairs, the reference log-probs from a forward with the adapter
/// off in every step (TRL's default with a PEFT model): one warm-up step, then `steps` timed ones;
/// tokens/s counts prompt + completion of both sides.
pub fn bench_dpo(model: &Decoder, b: &DpoBench, figures: &mut Figures) -> anyhow::Result<()> {
    let vocab = model.config().vocab as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let pairs: Vec<babelrl::train::dpo::DpoPair> = (0..b.pairs)
        .map(|_| babelrl::train::dpo::DpoPair {
            prompt: draw(&mut rng, vocab, b.prompt_tokens),
            chosen: draw(&mut rng, vocab, b.completion_tokens),
            rejected: draw(&mut rng, vocab, b.completion_tokens),
        })
        .collect();
    let options = DpoOptions {
        loss: DpoLossConfig { beta: b.beta, ..Default::default() },
        batch_size: b.pairs,
        max_length: None,
        precompute_ref_log_probs: false,
        shuffle: false,
        ..Default::default()
    };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, b.steps as u64 + 2)?;
    let optim = AdamWConfig { learning_rate: 1e-4, ..Default::default() };
    let mut trainer = DpoTrainer::new(model, lora(model, None)?, &pairs, optim, schedule, options)?;
    trainer.step()?; // warm-up
    let (mut secs, mut reference, mut tokens) = (Vec::new(), 0.0, 0);
    for _ in 0..b.steps {
        let m = trainer.step()?;
        anyhow::ensure!(m.loss.is_finite(), "dpo bench: the loss is {}", m.loss);
        secs.push(m.seconds);
        reference += m.reference_seconds / b.steps as f64;
        tokens = m.tokens;
    }
    println!(
        "\nDPO step (sigmoid, beta {}, LoRA r = 16 on all seven projections, reference = adapter off, every \
         step): {} pairs × ({} prompt + {} completion tokens) × 2 sides, mean of {} steps after a warm-up; \
         reference pass {reference:.2} s/step",
        b.beta, b.pairs, b.prompt_tokens, b.completion_tokens, b.steps
    );
    report("dpo", &secs, tokens, trainer.memory(), figures);
    figures.add("dpo_reference_seconds".into(), reference);
    Ok(())
}

/// Best-of-n with a reward-model judge (the base's body + a fresh LoRA and head, saved as a PEFT SEQ_CLS
/// adapter and loaded as `babelrl generate --best-of` loads one): `samples` completions of each of
/// `prompts` prompts in one batch, scored; one warm-up run, then one timed, split into generation and
/// scoring (the same completions scored again on their own).
pub fn bench_best_of_n(
    lm: &LanguageModel,
    body: &LanguageModel,
    b: &BestOfNBench,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let tokenizer = lm.tokenizer()?;
    let gpu = lm.decoder.gpu().clone();
    let dir = std::env::temp_dir().join(format!("babelrl-bench-rm-{}", std::process::id()));
    let head = initial_head(&body.path, body.decoder.config(), 0)?;
    let base = std::fs::canonicalize(&body.path).unwrap_or_else(|_| body.path.clone());
    let adapter = lora(&body.decoder, Some(&base))?;
    // The folder is removed whether saving or loading failed.
    let rm = save_reward_adapter(&adapter, &head, &dir, Some(&base.to_string_lossy()))
        .map_err(anyhow::Error::from)
        .and_then(|()| RewardModel::load(gpu, &dir).with_context(|| format!("loading {}", dir.display())));
    let _ = std::fs::remove_dir_all(&dir);
    let rm = rm?;
    let prompts = (0..b.prompts)
        .map(|i| {
            let text = format!("{BON_TEXT} {}.", i + 1);
            Ok(BestOfPrompt {
                tokens: tokenizer.encode(&text, true)?,
                sample: Sample {
                    prompt: text,
                    completion: String::new(),
                    reference: None,
                    language: None,
                    fields: Vec::new(),
                },
                messages: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cfg = SamplingConfig { temperature: 1.0, max_new_tokens: b.tokens, seed: 1, ..Default::default() };
    best_of_n(&lm.decoder, tokenizer, &prompts, b.samples, &cfg, Judge::RewardModel(&rm))?; // warm-up
    let start = Instant::now();
    let out = best_of_n(&lm.decoder, tokenizer, &prompts, b.samples, &cfg, Judge::RewardModel(&rm))?;
    let total = start.elapsed().as_secs_f64();
    let texts: Vec<String> = out.iter().flat_map(|o| o.completions.iter().map(|c| c.text.clone())).collect();
    let rm_prompts: Vec<RmPrompt> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(RmPrompt::Text(&p.sample.prompt), b.samples))
        .collect();
    let start = Instant::now();
    rm.score_prompts(&rm_prompts, &texts)?;
    let scoring = start.elapsed().as_secs_f64();
    let completions = texts.len();
    let new_tokens: usize = out.iter().flat_map(|o| o.completions.iter().map(|c| c.tokens.len())).sum();
    println!(
        "\nBest-of-n: {} prompts × {} completions of up to {} tokens (temperature 1), judged by a reward model \
         (the body + LoRA r = 16 + a fresh head), one timed run after a warm-up; scoring = the same completions \
         scored again alone, generation = the run minus that",
        b.prompts, b.samples, b.tokens
    );
    println!("| s/run | generation s | scoring s | new tokens | completions scored/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| {total:.2} | {:.2} | {scoring:.2} | {new_tokens} | {:.2} |",
        (total - scoring).max(0.0),
        completions as f64 / total
    );
    figures.add("best_of_n_seconds".into(), total);
    figures.add("best_of_n_generation_seconds".into(), (total - scoring).max(0.0));
    figures.add("best_of_n_scoring_seconds".into(), scoring);
    figures.add("best_of_n_new_tokens".into(), new_tokens as f64);
    figures.add("best_of_n_completions_per_s".into(), completions as f64 / total);
    Ok(())
}
