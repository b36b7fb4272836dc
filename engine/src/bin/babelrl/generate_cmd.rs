//! `babelrl generate` and `babelrl embed`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use babelrl::generate::{SamplingConfig, generate};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::lora::Adapter;
use babelrl::model::{Encoder, load_language_model};
use babelrl::text::ChatMessage;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A GGUF file or a Hugging Face folder (default: SmolLM2-135M-Instruct from the model cache).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt (or the user message with --chat).
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Render the prompt with the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    /// Stop when the text contains this string (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// A LoRA adapter folder in PEFT's format (adapter_config.json + adapter_model.safetensors),
    /// applied on top of the model without merging it.
    #[arg(long)]
    adapter: Option<PathBuf>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let path = args.model.unwrap_or_else(crate::default_model);
    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let lm =
        load_language_model(gpu.clone(), &path).with_context(|| format!("loading {}", path.display()))?;
    let adapter = match &args.adapter {
        Some(dir) => Some(
            Adapter::load_peft(gpu, dir, lm.decoder.config())
                .with_context(|| format!("loading the LoRA adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let tokenizer = lm.tokenizer()?;
    let (text, add_special) = if args.chat {
        let template = tokenizer
            .chat_template_renderer()?
            .with_context(|| format!("{} has no chat template", path.display()))?;
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", args.prompt));
        (template.render(&messages, true)?, false)
    } else {
        (args.prompt, true)
    };
    let ids = tokenizer.encode(&text, add_special)?;
    let cfg = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_tokens,
        stop_strings: args.stop,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let done = generate(lm.decoder.adapted(adapter.as_ref()), tokenizer, &[ids], &cfg, |chunk| {
        let _ = out.write_all(chunk.text.as_bytes());
        let _ = out.flush();
    })?;
    let n = done[0].tokens.len();
    let secs = start.elapsed().as_secs_f64();
    writeln!(out)?;
    out.flush()?;
    eprintln!(
        "[{} tokens in {secs:.2} s, {:.1} tokens/s, finish: {:?}, adapter: {}{}]",
        n,
        n as f64 / secs,
        done[0].finish,
        lm.decoder.gpu().summary.name,
        args.adapter.as_ref().map_or(String::new(), |d| format!(", LoRA: {}", d.display()))
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// A sentence-embedder folder (default: multilingual-e5-small from the model cache).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Texts to embed; read one per line from stdin when none are given.
    texts: Vec<String>,
}

pub fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    let dir = args.model.unwrap_or_else(|| babelrl::model::cache_dir().join("models/multilingual-e5-small"));
    let texts = if args.texts.is_empty() {
        std::io::stdin().lock().lines().collect::<Result<Vec<_>, _>>()?
    } else {
        args.texts
    };
    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let encoder = Encoder::load(gpu, &dir).with_context(|| format!("loading {}", dir.display()))?;
    for v in encoder.embed(&texts)? {
        println!("{}", serde_json::to_string(&v)?);
    }
    Ok(())
}
