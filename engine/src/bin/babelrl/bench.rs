//! `babelrl bench`: prefill and decode tokens/s at several batch sizes, and GEMM GFLOP/s on the model's
//! own matrix shapes, printed as Markdown with the adapter and model that produced them.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use babelrl::generate::{
    LOGPROB_PACK_TOKENS, completion_logprobs, completion_logprobs_packed, forward_chunked,
};
use babelrl::gpu::cpu_ref::TokenInfo;
use babelrl::gpu::{Gpu, GpuOptions, KernelTime, Weight16};
use babelrl::model::quant::{GgmlType, pack_blocks};
use babelrl::model::{Decoder, LoadOptions, load_language_model};
use rand::{Rng, SeedableRng};

use crate::bench_grpo::{GrpoBench, bench_grpo};
use crate::bench_pref::{BestOfNBench, DpoBench, RewardBench, bench_best_of_n, bench_dpo, bench_reward};
use crate::bench_train::{TrainBench, bench_train};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A GGUF file or a Hugging Face folder (default: SmolLM2-135M-Instruct from the model cache).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Decode steps measured per batch size.
    #[arg(long, default_value_t = 16)]
    decode_tokens: usize,
    /// Batch sizes (comma-separated).
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Skip the GEMM measurements.
    #[arg(long)]
    no_gemm: bool,
    /// Only the GEMM measurements (no prefill or decode).
    #[arg(long, conflicts_with = "no_gemm")]
    gemm_only: bool,
    /// Time every kernel on its own and print where prefill and decode spend their time (the
    /// tokens/s figures are then those of the slower, profiled run).
    #[arg(long, conflicts_with = "gemm_only")]
    profile: bool,
    /// Also write every figure to this JSON file (`{"meta": {...}, "figures": {"name": value}}`), with
    /// the same names `scripts/bench_pytorch.py --json` uses, so `scripts/bench_table.py` can put both
    /// side by side.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also measure SFT training: LoRA r = 16 on all seven projections, with and without gradient
    /// checkpointing, against the forward pass of the same tokens.
    #[arg(long)]
    train: bool,
    /// Only the training measurement.
    #[arg(long, conflicts_with = "gemm_only")]
    train_only: bool,
    /// Sequences per training step.
    #[arg(long, default_value_t = 8)]
    train_batch: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 256)]
    train_tokens: usize,
    /// Training steps measured (after a short warm-up that compiles every pipeline).
    #[arg(long, default_value_t = 2)]
    train_steps: usize,
    /// Also measure one GRPO step (rollouts, reward, reference, update), timed by part.
    #[arg(long)]
    grpo: bool,
    /// Only the GRPO measurement.
    #[arg(long, conflicts_with_all = ["gemm_only", "train_only"])]
    grpo_only: bool,
    /// Prompt length of the GRPO measurement.
    #[arg(long, default_value_t = 64)]
    grpo_prompt_tokens: usize,
    /// Most new tokens per completion.
    #[arg(long, default_value_t = 64)]
    grpo_completion_tokens: usize,
    /// Completions of the prompt (the group).
    #[arg(long, default_value_t = 8)]
    grpo_generations: usize,
    /// GRPO steps measured (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    grpo_steps: usize,
    /// KL weight (≠ 0 adds the reference pass).
    #[arg(long, default_value_t = 0.0)]
    grpo_beta: f64,
    /// Also measure reward-model training: Bradley–Terry steps of the base's body + a score head, LoRA r =
    /// 16 on all seven projections, on random pairs.
    #[arg(long)]
    reward: bool,
    /// Only the reward-model measurement.
    #[arg(long)]
    reward_only: bool,
    /// The reward model's base, a Hugging Face folder (default: --model when it is one).
    #[arg(long)]
    reward_base: Option<PathBuf>,
    /// Pairs per reward-model step.
    #[arg(long, default_value_t = 8)]
    reward_pairs: usize,
    /// Tokens of each side of a reward pair.
    #[arg(long, default_value_t = 256)]
    reward_tokens: usize,
    /// Reward-model steps measured (after one warm-up step).
    #[arg(long, default_value_t = 2)]
    reward_steps: usize,
    /// Also measure DPO training (sigmoid loss, LoRA r = 16 on all seven projections, the reference pass
    /// with the adapter off every step) on random pairs.
    #[arg(long)]
    dpo: bool,
    /// Only the DPO measurement.
    #[arg(long)]
    dpo_only: bool,
    /// Pairs per DPO step.
    #[arg(long, default_value_t = 8)]
    dpo_pairs: usize,
    /// Prompt tokens of a DPO pair.
    #[arg(long, default_value_t = 64)]
    dpo_prompt_tokens: usize,
    /// Tokens of each completion (chosen and rejected) of a DPO pair.
    #[arg(long, default_value_t = 192)]
    dpo_completion_tokens: usize,
    /// DPO steps measured (after one warm-up step).
    #[arg(long, default_value_t = 2)]
    dpo_steps: usize,
    /// DPO's beta.
    #[arg(long, default_value_t = 0.1)]
    dpo_beta: f64,
    /// Also measure best-of-n with a reward-model judge (the --reward-base body + a fresh head): completions
    /// scored per second, split into generation and scoring.
    #[arg(long)]
    best_of_n: bool,
    /// Only the best-of-n measurement.
    #[arg(long)]
    best_of_n_only: bool,
    /// Prompts of the best-of-n measurement.
    #[arg(long, default_value_t = 2)]
    best_of_n_prompts: usize,
    /// Completions sampled per prompt.
    #[arg(long, default_value_t = 4)]
    best_of_n_samples: usize,
    /// Most new tokens per completion.
    #[arg(long, default_value_t = 32)]
    best_of_n_tokens: usize,
}

/// Every figure of one run, by the name the peer's script also uses, in the order measured.
#[derive(Default)]
pub struct Figures(Vec<(String, f64)>);

impl Figures {
    pub fn add(&mut self, name: String, value: f64) {
        self.0.push((name, value));
    }

    fn write(&self, path: &std::path::Path, meta: serde_json::Value) -> anyhow::Result<()> {
        let figures: serde_json::Map<String, serde_json::Value> =
            self.0.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect();
        let doc = serde_json::json!({ "meta": meta, "figures": figures });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let path = args.model.clone().unwrap_or_else(crate::default_model);
    let gpu = Gpu::new(&GpuOptions { profile: args.profile, ..GpuOptions::from_env() })?;
    let lm =
        load_language_model(gpu.clone(), &path).with_context(|| format!("loading {}", path.display()))?;
    let model = &lm.decoder;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!(
        "adapter: {} ({}, {}); model: {name}; shader runtime checks: {}",
        gpu.summary.name,
        gpu.summary.backend,
        gpu.summary.device_type,
        if gpu.shader_checks() { "on (BABELRL_SHADER_CHECKS=1)" } else { "off (trusted modules)" }
    );
    println!(
        "packed layer weights (BABELRL_PACKED_WEIGHTS=1): {}; decode matmuls for T ≤ 4 (BABELRL_DECODE_MATMUL): {}",
        LoadOptions::from_env().packed_weights,
        gpu.decode_matmul()
    );
    let mut figures = Figures::default();
    let p = args.prompt_tokens;
    // The preference modes' --*-only flags go together (`--reward-only --dpo-only` runs both and nothing
    // else); the other --*-only flags exclude each other and them.
    let pref_only = args.reward_only || args.dpo_only || args.best_of_n_only;
    let onlies = [args.gemm_only, args.train_only, args.grpo_only, pref_only];
    if onlies.iter().filter(|&&o| o).count() > 1 {
        bail!(
            "--gemm-only, --train-only, --grpo-only and the --reward-only / --dpo-only / --best-of-n-only \
             group exclude each other"
        );
    }
    let counts = [
        args.reward_pairs,
        args.reward_steps,
        args.dpo_pairs,
        args.dpo_prompt_tokens,
        args.dpo_completion_tokens,
        args.dpo_steps,
        args.best_of_n_prompts,
        args.best_of_n_samples,
        args.best_of_n_tokens,
    ];
    if counts.contains(&0) || args.reward_tokens < 2 {
        bail!("--reward-*, --dpo-* and --best-of-n-* counts must be at least 1 (--reward-tokens at least 2)");
    }
    let any_only = onlies.contains(&true);
    let run_pref = |flag: bool, only: bool| only || (flag && (pref_only || !any_only));
    let run_reward = run_pref(args.reward, args.reward_only);
    let run_dpo = run_pref(args.dpo, args.dpo_only);
    let run_bon = run_pref(args.best_of_n, args.best_of_n_only);
    if !args.gemm_only && !args.train_only && !args.grpo_only && !pref_only {
        println!("\n| batch | prefill tokens/s ({p} tokens) | decode tokens/s |");
        println!("|---|---|---|");
        let mut profiles = Vec::new();
        for &b in &args.batch {
            let (prefill, decode, profile) = bench_model(model, b, args.prompt_tokens, args.decode_tokens)?;
            println!("| {b} | {prefill:.1} | {decode:.2} |");
            figures.add(format!("prefill tokens/s ({p} tokens), batch {b}"), prefill);
            figures.add(format!("decode tokens/s, batch {b}"), decode);
            profiles.push((b, profile));
        }
        if args.profile {
            println!(
                "\n| batch | dispatches per prefill token | dispatches per decode step | per decoded token |"
            );
            println!("|---|---|---|---|");
            for (b, [prefill, decode]) in &profiles {
                let per_prefill = prefill.dispatches as f64 / prefill.tokens.max(1) as f64;
                let per_step = decode.dispatches as f64 / args.decode_tokens.max(1) as f64;
                let per_decoded = decode.dispatches as f64 / decode.tokens.max(1) as f64;
                println!("| {b} | {per_prefill:.2} | {per_step:.1} | {per_decoded:.1} |");
                figures.add(format!("dispatches per prefill token ({p} tokens), batch {b}"), per_prefill);
                figures.add(format!("dispatches per decoded token, batch {b}"), per_decoded);
            }
            for (b, [prefill, decode]) in profiles {
                let title = format!("prefill, batch {b} × {} tokens", args.prompt_tokens);
                print_profile(&title, &prefill.kernels, 1);
                print_profile(&format!("decode, batch {b}, per step"), &decode.kernels, args.decode_tokens);
            }
        }
    }
    if !args.gemm_only && !args.train_only && !args.grpo_only && !pref_only {
        bench_logprobs(model, p, &mut figures)?;
    }
    if !args.no_gemm && !args.train_only && !args.grpo_only && !pref_only {
        bench_gemm(&gpu, model, &mut figures)?;
    }
    if (args.grpo && !pref_only) || args.grpo_only {
        let shape = GrpoBench {
            prompt_tokens: args.grpo_prompt_tokens,
            completion_tokens: args.grpo_completion_tokens,
            generations: args.grpo_generations,
            steps: args.grpo_steps,
            beta: args.grpo_beta,
        };
        bench_grpo(&lm, &shape, &mut figures)?;
    }
    if (args.train && !pref_only) || args.train_only {
        let shape =
            TrainBench { batch: args.train_batch, tokens: args.train_tokens, steps: args.train_steps };
        bench_train(model, &shape, &mut figures)?;
    }
    if run_reward || run_dpo || run_bon {
        let body = if run_reward || run_bon {
            let base = match &args.reward_base {
                Some(dir) => dir.clone(),
                None if path.is_dir() => path.clone(),
                None => bail!(
                    "--reward, --best-of-n: the reward model's base is a Hugging Face folder; --model {} is not \
                     one: pass --reward-base DIR (write one with `python scripts/gguf_to_hf.py GGUF DIR`)",
                    path.display()
                ),
            };
            Some(
                crate::train_reward::load_body(gpu.clone(), &base)
                    .with_context(|| format!("loading the reward model's base {}", base.display()))?,
            )
        } else {
            None
        };
        if run_reward && let Some(body) = &body {
            let shape = RewardBench {
                pairs: args.reward_pairs,
                tokens: args.reward_tokens,
                steps: args.reward_steps,
            };
            bench_reward(body, &shape, &mut figures)?;
        }
        if run_dpo {
            let shape = DpoBench {
                pairs: args.dpo_pairs,
                prompt_tokens: args.dpo_prompt_tokens,
                completion_tokens: args.dpo_completion_tokens,
                steps: args.dpo_steps,
                beta: args.dpo_beta,
            };
            bench_dpo(model, &shape, &mut figures)?;
        }
        if run_bon && let Some(body) = &body {
            let shape = BestOfNBench {
                prompts: args.best_of_n_prompts,
                samples: args.best_of_n_samples,
                tokens: args.best_of_n_tokens,
            };
            bench_best_of_n(&lm, body, &shape, &mut figures)?;
        }
    }
    if let Some(json) = &args.json {
        let meta = serde_json::json!({
            "engine": format!("babelrl {}", env!("CARGO_PKG_VERSION")),
            "adapter": gpu.summary.name,
            "backend": gpu.summary.backend,
            "driver": gpu.summary.driver,
            "model": name,
            "shader_checks": gpu.shader_checks(),
        });
        figures.write(json, meta)?;
    }
    Ok(())
}

/// Teacher-forced log-probs of a GRPO-sized group (one prompt, eight completions as long as the
/// prompt): the pairs packed together, sharing the prompt's computation, against one pass per pair.
/// Each row says how many tokens actually ran through the model, and the rate both per token run and
/// per token of the pairs (the figure a user compares with a peer that runs every token).
fn bench_logprobs(model: &Decoder, prompt: usize, figures: &mut Figures) -> anyhow::Result<()> {
    let vocab = model.config().vocab as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut draw = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    let question = draw(prompt);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..8).map(|_| (question.clone(), draw(prompt))).collect();
    let in_pairs = pairs.len() * 2 * prompt;
    println!(
        "\n| teacher-forced log-probs, 8 × ({prompt} + {prompt}) tokens | tokens run | tokens/s run | \
         tokens/s of the {in_pairs} in the pairs |"
    );
    println!("|---|---|---|---|");
    completion_logprobs(model, &pairs[..1])?; // warm-up
    for (how, budget) in [("packed, prompt computed once", LOGPROB_PACK_TOKENS), ("one pass per pair", 1)] {
        let run = tokens_run(&pairs, budget == LOGPROB_PACK_TOKENS);
        let start = Instant::now();
        completion_logprobs_packed(model, &pairs, budget)?;
        let secs = start.elapsed().as_secs_f64();
        println!("| {how} | {run} | {:.1} | {:.1} |", run as f64 / secs, in_pairs as f64 / secs);
        let name = format!("teacher-forced log-probs tokens/s, 8 × ({prompt} + {prompt}) tokens");
        let name = if budget == 1 { format!("{name}, one pass per pair") } else { name };
        figures.add(name, in_pairs as f64 / secs);
    }
    Ok(())
}

/// Tokens a teacher-forcing pass runs: every pair's last completion token is never run, and with
/// `shared` a prompt repeated by later pairs runs only once (as `completion_logprobs_packed` does when
/// the pairs fit one pack).
fn tokens_run(pairs: &[(Vec<u32>, Vec<u32>)], shared: bool) -> usize {
    pairs
        .iter()
        .enumerate()
        .map(|(i, (prompt, completion))| {
            let repeated = shared && pairs[..i].iter().any(|(p, _)| p == prompt);
            completion.len().saturating_sub(1) + if repeated { 0 } else { prompt.len() }
        })
        .sum()
}

/// Where one phase spent its time, per repetition (`reps` steps), largest first.
pub fn print_profile(phase: &str, kernels: &[KernelTime], reps: usize) {
    let total: f64 = kernels.iter().map(|k| k.total.as_secs_f64()).sum();
    println!("\n| {phase}: kernel | calls | ms | share |");
    println!("|---|---|---|---|");
    for k in kernels {
        let secs = k.total.as_secs_f64();
        println!(
            "| {} | {} | {:.2} | {:.1}% |",
            k.kernel,
            k.calls as usize / reps.max(1),
            1e3 * secs / reps.max(1) as f64,
            100.0 * secs / total.max(f64::MIN_POSITIVE)
        );
    }
}

/// One phase's profile: where its kernels spent their time and how many dispatches it submitted.
pub struct PhaseProfile {
    pub kernels: Vec<KernelTime>,
    /// Compute dispatches the phase submitted ([`Gpu::dispatch_count`] before and after).
    pub dispatches: u64,
    /// Tokens the phase ran through the model.
    pub tokens: usize,
}

/// Prefill and decode tokens/s, and the profiles of both phases (no kernels unless profiling).
fn bench_model(
    model: &Decoder,
    batch: usize,
    prompt: usize,
    steps: usize,
) -> anyhow::Result<(f64, f64, [PhaseProfile; 2])> {
    let vocab = model.config().vocab as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let cache = model.new_cache(batch, prompt + steps + 1)?;
    let mut tokens = Vec::new();
    let mut info = Vec::new();
    let mut last = Vec::new();
    for slot in 0..batch {
        for pos in 0..prompt {
            tokens.push(rng.random_range(0..vocab));
            info.push(TokenInfo { pos: pos as u32, slot: slot as u32, n_keys: pos as u32 + 1 });
        }
        last.push(tokens.len() - 1);
    }
    // Warm up pipelines and buffers once, then time.
    forward_chunked(model, &cache, &tokens, &info, &last)?;
    model.gpu().take_profile();
    let dispatched = model.gpu().dispatch_count();
    let start = Instant::now();
    let logits = forward_chunked(model, &cache, &tokens, &info, &last)?;
    let prefill = tokens.len() as f64 / start.elapsed().as_secs_f64();
    let prefill_profile = PhaseProfile {
        kernels: model.gpu().take_profile(),
        dispatches: model.gpu().dispatch_count() - dispatched,
        tokens: tokens.len(),
    };

    let mut next: Vec<u32> = logits.iter().map(|row| argmax(row)).collect();
    let dispatched = model.gpu().dispatch_count();
    let start = Instant::now();
    for step in 0..steps {
        let pos = (prompt + step) as u32;
        let info: Vec<TokenInfo> =
            (0..batch).map(|s| TokenInfo { pos, slot: s as u32, n_keys: pos + 1 }).collect();
        let rows: Vec<u32> = (0..batch as u32).collect();
        let out = model.forward(&cache, &next, &info, &rows)?;
        let flat = model.read_logits(&out)?;
        next = flat.chunks(vocab as usize).map(argmax).collect();
    }
    let decode = (batch * steps) as f64 / start.elapsed().as_secs_f64();
    let decode_profile = PhaseProfile {
        kernels: model.gpu().take_profile(),
        dispatches: model.gpu().dispatch_count() - dispatched,
        tokens: batch * steps,
    };
    Ok((prefill, decode, [prefill_profile, decode_profile]))
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
        as u32
}

fn bench_gemm(gpu: &Gpu, model: &Decoder, figures: &mut Figures) -> anyhow::Result<()> {
    let c = model.config();
    let shapes = [
        ("qkv", c.qkv_width(), c.hidden),
        ("o_proj", c.hidden, c.n_head * c.head_dim),
        ("gate_up", 2 * c.intermediate, c.hidden),
        ("down", c.hidden, c.intermediate),
        ("lm_head", c.vocab, c.hidden),
    ];
    println!("\n| GEMM (N×K) | T=1 GFLOP/s | T=8 GFLOP/s | T=128 GFLOP/s |");
    println!("|---|---|---|---|");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    for (name, n, k) in shapes {
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-0.1..0.1)).collect();
        let w = gpu.upload_weight(name, &w, n, k)?;
        let mut row = format!("| {name} ({n}×{k}) |");
        for t in [1usize, 8, 128] {
            let gflops = time_matmul(gpu, &w, t, &mut rng)?;
            row.push_str(&format!(" {gflops:.2} |"));
            figures.add(format!("GEMM GFLOP/s, {name} ({n}×{k}), T={t}"), gflops);
        }
        println!("{row}");
    }
    // Packed GGUF blocks (`BABELRL_PACKED_WEIGHTS=1`), random scales and values: the decode kernels
    // read them at T ≤ 4 where the adapter has them; other launches run on their f16 expansion.
    println!("\n| packed GEMM (N×K), GFLOP/s | Q4_1 T=1 | Q4_1 T=4 | Q8_0 T=1 | Q8_0 T=4 |");
    println!("|---|---|---|---|---|");
    for (name, n, k) in shapes {
        if !k.is_multiple_of(babelrl::gpu::PACKED_BLOCK) {
            continue;
        }
        let mut row = format!("| {name} ({n}×{k}) |");
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
            let (block, size) = ty.block_layout();
            let mut bytes: Vec<u8> = (0..n * k / block * size).map(|_| rng.random()).collect();
            // Finite scales: each block's f16 d (and m) set to small values.
            for b in bytes.chunks_exact_mut(size) {
                let scales = if ty == GgmlType::Q4_1 { 2 } else { 1 };
                for s in 0..scales {
                    let v = half::f16::from_f32(rng.random_range(-0.01..0.01)).to_le_bytes();
                    b[2 * s..2 * s + 2].copy_from_slice(&v);
                }
            }
            let host =
                pack_blocks(ty, &bytes, n, k).map_err(anyhow::Error::msg)?.context("a packable type")?;
            let w = gpu.upload_packed(name, &host)?;
            for t in [1usize, 4] {
                let gflops = time_matmul(gpu, &w, t, &mut rng)?;
                row.push_str(&format!(" {gflops:.2} |"));
                figures.add(format!("packed {ty:?} GEMM GFLOP/s, {name} ({n}×{k}), T={t}"), gflops);
            }
        }
        println!("{row}");
    }
    Ok(())
}

/// GFLOP/s of y (T, N) = x (T, K) · wᵀ, repeated for about 0.3 s in one batch after a warm-up: the
/// best of three such batches (other work on the machine only ever slows a batch down).
fn time_matmul(gpu: &Gpu, w: &Weight16, t: usize, rng: &mut rand_chacha::ChaCha8Rng) -> anyhow::Result<f64> {
    let (n, k) = (w.rows, w.cols);
    let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let x = gpu.upload_f32("x", &x, &[t, k])?;
    let y = gpu.zeros("y", &[t, n])?;
    let run = |reps: usize| -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut b = gpu.batch();
        for _ in 0..reps {
            b.matmul(&x, w, None, None, &y, t)?;
        }
        b.submit()?;
        gpu.wait()?;
        Ok(start.elapsed().as_secs_f64())
    };
    run(1)?;
    let once = run(1)?;
    let reps = ((0.3 / once) as usize).clamp(1, 200);
    let secs =
        (0..3).map(|_| run(reps)).collect::<anyhow::Result<Vec<f64>>>()?.into_iter().fold(f64::MAX, f64::min);
    Ok(2.0 * (t * n * k * reps) as f64 / secs / 1e9)
}
