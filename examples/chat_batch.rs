//! Batched chat generation with the engine embedded as a library: renders several conversations with
//! the model's own chat template, generates them together in one batch (different prompt lengths share
//! one KV cache), streams the text of each as it is produced, and prints every completion with its
//! finish reason and mean token log-probability.
//!
//! Run (after `scripts/fetch_models.sh`):
//!   cargo run --release -p babelrl --example chat_batch -- [MODEL.gguf | HF-FOLDER]

use std::path::PathBuf;

use anyhow::Context;
use babelrl::generate::{SamplingConfig, generate};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::model::{cache_dir, load_language_model};
use babelrl::text::ChatMessage;

const QUESTIONS: [&str; 3] = [
    "What is the capital of France?",
    "Give me one word that rhymes with 'ocean'.",
    "Translate to Spanish: good morning, my friend.",
];

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let model = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let lm = load_language_model(gpu, &model)
        .with_context(|| format!("loading {} (run scripts/fetch_models.sh)", model.display()))?;
    let tokenizer = lm.tokenizer()?;
    let template = tokenizer.chat_template_renderer()?.context("the model has no chat template")?;
    let prompts = QUESTIONS
        .iter()
        .map(|q| {
            let messages = [ChatMessage::new("system", "Answer briefly."), ChatMessage::new("user", *q)];
            Ok(tokenizer.encode(&template.render(&messages, true)?, false)?)
        })
        .collect::<anyhow::Result<Vec<Vec<u32>>>>()?;

    let cfg = SamplingConfig {
        temperature: 0.7,
        top_k: 50,
        seed: 7,
        max_new_tokens: 48,
        stop_strings: vec!["\n\n".into()],
        ..Default::default()
    };
    println!("adapter: {}; model: {}", lm.decoder.gpu().summary.name, model.display());
    let mut streamed = vec![String::new(); prompts.len()];
    let start = std::time::Instant::now();
    let completions = generate(&lm.decoder, tokenizer, &prompts, &cfg, |chunk| {
        streamed[chunk.seq].push_str(chunk.text);
    })?;
    let secs = start.elapsed().as_secs_f64();
    let tokens: usize = completions.iter().map(|c| c.tokens.len()).sum();
    for ((question, c), text) in QUESTIONS.iter().zip(&completions).zip(&streamed) {
        assert_eq!(text, &c.text, "the streamed pieces add up to the completion");
        let mean = c.logprobs.iter().sum::<f32>() / c.logprobs.len().max(1) as f32;
        println!(
            "\n> {question}\n{}\n[{} tokens, {:?}, mean log-prob {mean:.3}]",
            c.text.trim(),
            c.tokens.len(),
            c.finish
        );
    }
    println!("\n{tokens} tokens in {secs:.2} s ({:.1} tokens/s over the batch)", tokens as f64 / secs);
    Ok(())
}
