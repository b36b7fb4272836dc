//! `babelrl bench --train`: SFT training throughput of a LoRA adapter (r = 16 on all seven projections)
//! on random sequences, with and without gradient checkpointing, against the forward pass of the same
//! tokens, and the GPU memory the run allocated by kind.

use babelrl::lora::{Adapter, LoraConfig, Target};
use babelrl::model::Decoder;
use babelrl::train::{
    AdamWConfig, LoraGrads, Schedule, SchedulerType, SftOptions, SftTrainer, TrainBatch, TrainSequence,
    TrainShape,
};
use rand::{Rng, SeedableRng};

use crate::bench::Figures;

/// The shapes of the training measurement.
pub struct TrainBench {
    pub batch: usize,
    pub tokens: usize,
    pub steps: usize,
}

fn random_sequences(model: &Decoder, b: &TrainBench) -> Vec<TrainSequence> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let vocab = model.config().vocab as u32;
    (0..b.batch)
        .map(|_| TrainSequence {
            tokens: (0..b.tokens).map(|_| rng.random_range(0..vocab)).collect(),
            prompt_len: 1,
        })
        .collect()
}

fn adapter(model: &Decoder) -> anyhow::Result<Adapter> {
    let config = LoraConfig::new(16, 32.0, &Target::ALL)?;
    Ok(Adapter::init(model.gpu().clone(), config, model.config(), 0)?)
}

/// Tokens/s of the training forward alone (loss of every row, activations saved; no gradient).
fn forward_rate(model: &Decoder, seqs: &[TrainSequence], steps: usize) -> anyhow::Result<f64> {
    let adapter = adapter(model)?;
    let batch = TrainBatch::new(seqs, model.config().vocab, model.max_context())?;
    let shape = TrainShape { tokens: batch.len(), slots: batch.slots, span: batch.span };
    let mut acts = model.train_activations(shape, &adapter, false)?;
    let mut run = || -> anyhow::Result<f64> {
        let start = std::time::Instant::now();
        model.train_forward(&mut acts, &batch, &adapter, None)?;
        model.gpu().read_words::<f32>(&acts.nll.buffer, 0, 1)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let secs: f64 = (0..steps).map(|_| run()).sum::<anyhow::Result<f64>>()?;
    Ok((batch.len() * steps) as f64 / secs)
}

/// Tokens/s of full SFT steps (forward, backward, AdamW) and the memory the run allocated.
fn step_rate(
    model: &Decoder,
    seqs: &[TrainSequence],
    steps: usize,
    checkpointing: bool,
) -> anyhow::Result<(f64, babelrl::train::MemoryReport)> {
    let options =
        SftOptions { batch_size: seqs.len(), gradient_checkpointing: checkpointing, ..Default::default() };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, steps as u64 + 1)?;
    let config = AdamWConfig { learning_rate: 1e-4, ..Default::default() };
    let mut trainer = SftTrainer::new(model, adapter(model)?, seqs.to_vec(), config, schedule, options)?;
    let (mut secs, mut tokens) = (0.0, 0);
    for _ in 0..steps {
        let m = trainer.step()?;
        secs += m.seconds;
        tokens += m.tokens;
    }
    Ok((tokens as f64 / secs, trainer.memory()))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One short step with and without checkpointing and one forward, so every pipeline is compiled
/// before anything is timed (a full-size warm-up step would take minutes on lavapipe).
fn warm_up(model: &Decoder) -> anyhow::Result<()> {
    let short = random_sequences(model, &TrainBench { batch: 2, tokens: 16, steps: 1 });
    forward_rate(model, &short, 1)?;
    for checkpointing in [false, true] {
        step_rate(model, &short, 1, checkpointing)?;
    }
    Ok(())
}

/// Runs the training measurements and prints them as a Markdown table.
pub fn bench_train(model: &Decoder, b: &TrainBench, figures: &mut Figures) -> anyhow::Result<()> {
    warm_up(model)?;
    model.gpu().take_profile(); // the warm-up's kernels are not part of the profile
    let seqs = random_sequences(model, b);
    let lora_params: usize = LoraGrads::param_specs(&adapter(model)?).iter().map(|p| p.len).sum();
    println!(
        "\nSFT training: LoRA r = 16 on all seven projections ({lora_params} parameters), {} sequences × {} \
         tokens, mean of {} steps (pipelines compiled beforehand)",
        b.batch, b.tokens, b.steps
    );
    let forward = forward_rate(model, &seqs, b.steps)?;
    let forward_profile = model.gpu().take_profile();
    let mut profiles = vec![("forward only", forward_profile)];
    println!("| run | tokens/s | step / forward | weights MiB | activations MiB | LoRA + optimizer MiB |");
    println!("|---|---|---|---|---|---|");
    println!("| forward only (loss, activations saved) | {forward:.1} | 1 | | | |");
    figures.add("train_forward_tokens_per_s".into(), forward);
    for (checkpointing, name, key) in [
        (false, "SFT step", "train_tokens_per_s"),
        (true, "SFT step, gradient checkpointing", "train_ckpt_tokens_per_s"),
    ] {
        let (rate, mem) = step_rate(model, &seqs, b.steps, checkpointing)?;
        profiles.push((name, model.gpu().take_profile()));
        println!(
            "| {name} | {rate:.1} | {:.2} | {:.1} | {:.1} | {:.1} |",
            forward / rate,
            mib(mem.weights),
            mib(mem.activations),
            mib(mem.lora_and_optimizer)
        );
        figures.add(key.into(), rate);
        let suffix = if checkpointing { "_ckpt" } else { "" };
        figures.add(format!("train_activation_bytes{suffix}"), mem.activations as f64);
        figures.add(format!("train_weight_bytes{suffix}"), mem.weights as f64);
        figures.add(format!("train_lora_optimizer_bytes{suffix}"), mem.lora_and_optimizer as f64);
    }
    for (name, kernels) in profiles.iter().filter(|(_, k)| !k.is_empty()) {
        crate::bench::print_profile(&format!("{name}, per step"), kernels, b.steps);
    }
    Ok(())
}
