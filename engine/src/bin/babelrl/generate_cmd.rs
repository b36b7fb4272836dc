//! `babelrl generate` (one completion, or with `--best-of N` the best of N judged by a reward model or
//! reward plugins) and `babelrl embed`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use babelrl::generate::{BestOf, BestOfPrompt, Judge, SamplingConfig, best_of_n, generate};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::lora::Adapter;
use babelrl::model::{Encoder, RewardModel, load_language_model};
use babelrl::plugin::{
    OnError, RewardSet, RewardSpec, RunServices, Sample, default_encoder_dir, read_jsonl, sample_from_json,
};
use babelrl::text::{ChatMessage, Tokenizer};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A GGUF file or a Hugging Face folder (default: SmolLM2-135M-Instruct from the model cache).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The prompt (or the user message with --chat).
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    prompt: Option<String>,
    /// With --best-of: a JSONL file of prompts, one `{"prompt": "…"}` object a line (optional `reference`,
    /// `language` and other columns go to the reward plugins).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Sample N completions per prompt (in one batch) and keep the one the judge scores highest: the
    /// reward model (--reward-model) or the weighted reward plugins (--plugin).
    #[arg(long, value_name = "N")]
    best_of: Option<usize>,
    /// The best-of-n judge: a reward model folder (*ForSequenceClassification, or a PEFT SEQ_CLS adapter).
    /// With --plugin too, it serves the plugins' reward-model-score and the plugins judge.
    #[arg(long, value_name = "DIR")]
    reward_model: Option<PathBuf>,
    /// The best-of-n judge: a reward plugin (.wasm component), repeatable; scores are summed.
    #[arg(long = "plugin", value_name = "FILE.wasm")]
    plugins: Vec<PathBuf>,
    /// The configuration (JSON) of each --plugin, in the same order (default `{}`).
    #[arg(long = "plugin-config", value_name = "JSON")]
    plugin_configs: Vec<String>,
    /// The reference answer the reward plugins see (with --prompt).
    #[arg(long)]
    reference: Option<String>,
    /// The language the reward plugins see (with --prompt).
    #[arg(long)]
    language: Option<String>,
    /// With --best-of: print one JSON line per prompt (every completion with its score) instead of the
    /// best completion's text.
    #[arg(long)]
    jsonl: bool,
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

/// The prompt text as the model sees it (`--chat`: rendered with the chat template) and whether the
/// tokenizer's special tokens are still to be added.
fn model_text(
    tokenizer: &Tokenizer,
    args: &GenerateArgs,
    prompt: &str,
    model: &Path,
) -> anyhow::Result<(String, bool)> {
    let Some(messages) = chat_messages(args, prompt) else { return Ok((prompt.to_string(), true)) };
    let template = tokenizer
        .chat_template_renderer()?
        .with_context(|| format!("{} has no chat template", model.display()))?;
    Ok((template.render(&messages, true)?, false))
}

/// With `--chat`: the prompt as messages (`--system`, then the user's).
fn chat_messages(args: &GenerateArgs, prompt: &str) -> Option<Vec<ChatMessage>> {
    if !args.chat {
        return None;
    }
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system.clone()));
    }
    messages.push(ChatMessage::new("user", prompt));
    Some(messages)
}

/// Checks the best-of-n options before any model loads.
fn check_best_of(args: &GenerateArgs) -> anyhow::Result<()> {
    let judged = args.reward_model.is_some() || !args.plugins.is_empty();
    match args.best_of {
        None if judged || args.prompts.is_some() || args.jsonl => {
            bail!("--reward-model, --plugin, --prompts and --jsonl belong to best-of-n: add --best-of N")
        }
        None => return Ok(()),
        Some(0) => bail!("--best-of 0: sample at least one completion per prompt"),
        Some(_) if !judged => {
            bail!(
                "--best-of needs a judge: --reward-model DIR (a reward model) or --plugin FILE.wasm (reward \
                 plugins)"
            )
        }
        Some(_) => {}
    }
    if !args.plugin_configs.is_empty() && args.plugin_configs.len() != args.plugins.len() {
        bail!(
            "{} --plugin-config for {} --plugin: give one per plugin, in the same order, or none",
            args.plugin_configs.len(),
            args.plugins.len()
        );
    }
    if args.prompts.is_some() && (args.reference.is_some() || args.language.is_some()) {
        bail!(
            "--reference and --language go with --prompt; with --prompts, give them as columns of the file"
        );
    }
    Ok(())
}

/// The prompts of a best-of-n run: `--prompt` (with `--reference`, `--language`) or the rows of `--prompts`.
fn best_of_prompts(args: &GenerateArgs) -> anyhow::Result<Vec<Sample>> {
    match (&args.prompt, &args.prompts) {
        (Some(p), _) => Ok(vec![Sample {
            prompt: p.clone(),
            completion: String::new(),
            reference: args.reference.clone(),
            language: args.language.clone(),
            fields: Vec::new(),
        }]),
        (None, Some(file)) => {
            let rows = read_jsonl(file)?;
            if rows.is_empty() {
                bail!("{}: no prompts in the file", file.display());
            }
            rows.into_iter()
                .map(|(line, mut row)| {
                    if let Some(obj) = row.as_object_mut() {
                        obj.insert("completion".into(), "".into());
                    }
                    Ok(sample_from_json(&row, &format!("{}: line {line}", file.display()))?)
                })
                .collect()
        }
        (None, None) => bail!("give --prompt TEXT or --prompts FILE.jsonl"),
    }
}

/// The judge's reward plugins, loaded with the services they may call.
fn load_plugins(
    args: &GenerateArgs,
    gpu: &Arc<Gpu>,
    rm: Option<&Arc<RewardModel>>,
) -> anyhow::Result<RewardSet> {
    let mut specs = Vec::with_capacity(args.plugins.len());
    for (i, path) in args.plugins.iter().enumerate() {
        let config = match args.plugin_configs.get(i) {
            Some(text) => serde_json::from_str(text)
                .with_context(|| format!("--plugin-config {} (for {}) is not JSON", i + 1, path.display()))?,
            None => serde_json::json!({}),
        };
        let stem =
            path.file_stem().map_or_else(|| format!("plugin{i}"), |s| s.to_string_lossy().into_owned());
        let name =
            if specs.iter().any(|s: &RewardSpec| s.name == stem) { format!("{stem}-{i}") } else { stem };
        specs.push(RewardSpec {
            name,
            path: path.clone(),
            weight: 1.0,
            config,
            limits: Default::default(),
            capabilities: Default::default(),
        });
    }
    let mut services = RunServices::new().with_lazy_encoder(Arc::clone(gpu), default_encoder_dir());
    if let Some(rm) = rm {
        services = services.with_reward_model(Arc::clone(rm));
    }
    Ok(RewardSet::load(&specs, OnError::Fail, Path::new(""), Arc::new(services))?)
}

/// One best-of-n result as a JSON line: every completion with its score, and the best.
fn best_of_json(sample: &Sample, r: &BestOf, names: &[&str]) -> serde_json::Value {
    let completions: Vec<serde_json::Value> = r
        .completions
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let mut v = serde_json::json!({
                "text": c.text, "score": r.scores[k], "tokens": c.tokens.len(), "finish": c.finish,
            });
            if !names.is_empty() {
                let per: serde_json::Map<String, serde_json::Value> =
                    names.iter().zip(&r.per_plugin).map(|(n, s)| (n.to_string(), s[k].into())).collect();
                v["plugins"] = per.into();
            }
            v
        })
        .collect();
    serde_json::json!({
        "prompt": sample.prompt, "best": r.best, "best_text": r.best().text, "best_score": r.scores[r.best],
        "completions": completions,
    })
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    check_best_of(&args)?;
    let path = args.model.clone().unwrap_or_else(crate::default_model);
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
    let cfg = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_tokens,
        stop_strings: args.stop.clone(),
        ..Default::default()
    };
    if let Some(n) = args.best_of {
        if n > 1 && args.temperature == 0.0 {
            eprintln!("warning: --temperature 0 decodes greedily: the {n} samples are all the same");
        }
        let samples = best_of_prompts(&args)?;
        let prompts = samples
            .iter()
            .map(|s| {
                let (text, special) = model_text(tokenizer, &args, &s.prompt, &path)?;
                Ok(BestOfPrompt {
                    tokens: tokenizer.encode(&text, special)?,
                    sample: s.clone(),
                    messages: chat_messages(&args, &s.prompt),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let rm = match &args.reward_model {
            Some(dir) => Some(Arc::new(
                RewardModel::load(lm.decoder.gpu().clone(), dir)
                    .with_context(|| format!("loading the reward model {}", dir.display()))?,
            )),
            None => None,
        };
        let mut plugins = match args.plugins.is_empty() {
            true => None,
            false => Some(load_plugins(&args, lm.decoder.gpu(), rm.as_ref())?),
        };
        let names: Vec<String> =
            plugins.as_ref().map_or_else(Vec::new, |p| p.names().iter().map(|n| n.to_string()).collect());
        let judge = match (&mut plugins, &rm) {
            (Some(set), _) => Judge::Plugins(set),
            (None, Some(rm)) => Judge::RewardModel(rm),
            (None, None) => unreachable!("checked by check_best_of"),
        };
        let results = best_of_n(lm.decoder.adapted(adapter.as_ref()), tokenizer, &prompts, n, &cfg, judge)?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut out = std::io::stdout().lock();
        for (s, r) in samples.iter().zip(&results) {
            if args.jsonl {
                writeln!(out, "{}", best_of_json(s, r, &names))?;
            } else {
                writeln!(out, "{}", r.best().text)?;
                let shown: Vec<String> =
                    r.scores.iter().map(|v| v.map_or("none".into(), |v| format!("{v:.4}"))).collect();
                let judge = if names.is_empty() { "reward model".to_string() } else { names.join(" + ") };
                eprintln!("[best of {n} by {judge}: sample {}; scores {}]", r.best, shown.join(" "));
            }
        }
        return Ok(());
    }
    let prompt = args.prompt.clone().context("give --prompt TEXT")?;
    let (text, add_special) = model_text(tokenizer, &args, &prompt, &path)?;
    let ids = tokenizer.encode(&text, add_special)?;
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
