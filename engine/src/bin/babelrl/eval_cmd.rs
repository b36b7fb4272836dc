//! `babelrl eval DATA.jsonl`: greedy completions of the base model and each `--adapter` on a held-out
//! set, scored with chrF / chrF++ / BLEU, semantic similarity, language consistency and exact match
//! (`babelrl::eval::report`); a table on stdout and, with `--json`, every number and completion.
//! With `--reward-model DIR`, the data are preference pairs and the report is the reward model's pairwise
//! accuracy (`eval_reward`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use babelrl::eval::report::{Metric, RowScores, Scores, check_rows, score};
use babelrl::eval::{BleuConfig, Tokenize};
use babelrl::generate::{Completion, SamplingConfig, generate};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::lora::Adapter;
use babelrl::model::{Decoder, Encoder, load_language_model};
use babelrl::text::Tokenizer;
use babelrl::train::grpo::{GrpoPrompt, load_grpo_prompts};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Held-out JSONL, as GRPO data: `prompt` (text or chat messages), `reference`, `language`; with
    /// --reward-model, preference pairs (`prompt`, `chosen`, `rejected`, `language`).
    data: Option<PathBuf>,
    /// The data file, as an option (in place of the positional argument).
    #[arg(long = "data", value_name = "FILE")]
    data_flag: Option<PathBuf>,
    /// Evaluate this reward model (a *ForSequenceClassification folder or a PEFT SEQ_CLS adapter, e.g.
    /// a run's `reward-model` folder) on preference pairs: pairwise accuracy overall and per language,
    /// and the distribution of the reward margins.
    #[arg(long, value_name = "DIR")]
    reward_model: Option<PathBuf>,
    /// With --reward-model: the language of the pairs that have no `language` field.
    #[arg(long, value_name = "CODE")]
    language: Option<String>,
    /// A GGUF file or a Hugging Face folder (default: SmolLM2-135M-Instruct from the model cache).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A PEFT adapter folder to evaluate besides the base model, as NAME=DIR (e.g. sft=out/sft) or DIR
    /// (named after the folder). Repeatable; the base model is always evaluated first.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,
    /// Comma-separated metrics from chrf (chrF and chrF++), bleu, semantic, language, exact. Default:
    /// those the data has columns for (exact only when every reference holds a number).
    #[arg(long)]
    metrics: Option<String>,
    /// Evaluate the first N rows only.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Prompts generated together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Stop when the completion contains this string (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Sentence encoder for `semantic` (default: multilingual-e5-small from the model cache).
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// BLEU's tokenizer: 13a (sacrebleu's default), intl, zh (use it for Chinese targets), char, none.
    #[arg(long, default_value = "13a")]
    bleu_tokenize: String,
    /// Write every score and every completion to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A model under evaluation: the base (`dir` = None) or an adapter.
struct Entry {
    label: String,
    dir: Option<PathBuf>,
}

/// `NAME=DIR` or `DIR`, checked to be a folder before any model is loaded.
fn parse_adapters(specs: &[String]) -> anyhow::Result<Vec<Entry>> {
    let mut out = vec![Entry { label: "base".into(), dir: None }];
    for spec in specs {
        let (label, dir) = match spec.split_once('=') {
            Some((name, dir)) if !name.is_empty() => (name.to_string(), PathBuf::from(dir)),
            Some(_) => bail!("--adapter {spec:?}: the name before `=` is empty (use NAME=DIR)"),
            None => {
                let dir = PathBuf::from(spec);
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                (name.unwrap_or_else(|| spec.clone()), dir)
            }
        };
        if !dir.is_dir() {
            bail!(
                "--adapter {label}: {} is not a folder (give a PEFT adapter folder with adapter_config.json \
                 and adapter_model.safetensors, e.g. a run's output dir)",
                dir.display()
            );
        }
        if out.iter().any(|e| e.label == label) {
            bail!("--adapter: two models are labelled `{label}` (name them with NAME=DIR)");
        }
        out.push(Entry { label, dir: Some(dir) });
    }
    Ok(out)
}

/// The metrics the rows have columns for (`--metrics` not given).
fn default_metrics(path: &Path, rows: &[GrpoPrompt]) -> Vec<Metric> {
    Metric::ALL.into_iter().filter(|&m| check_rows(path, rows, &[m]).is_ok()).collect()
}

pub fn run(mut args: EvalArgs) -> anyhow::Result<()> {
    let data = match (args.data.take(), args.data_flag.take()) {
        (Some(a), Some(b)) if a != b => {
            bail!("two data files, {} and --data {}: give one", a.display(), b.display())
        }
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => bail!("no data file: babelrl eval DATA.jsonl (or --data DATA.jsonl)"),
    };
    args.data = Some(data.clone());
    if let Some(rm) = &args.reward_model {
        if !args.adapters.is_empty() || args.metrics.is_some() {
            bail!(
                "--reward-model evaluates preference pairs: --adapter and --metrics are for generation; drop them"
            );
        }
        return crate::eval_reward::run(
            rm,
            &data,
            args.language.as_deref(),
            args.limit,
            args.json.as_deref(),
        );
    }
    if args.language.is_some() {
        bail!("--language names the language of preference pairs, with --reward-model");
    }
    let explicit = args.metrics.as_deref().map(Metric::parse_list).transpose()?;
    let bleu = BleuConfig { tokenize: Tokenize::from_name(&args.bleu_tokenize)?, ..BleuConfig::default() };
    let entries = parse_adapters(&args.adapters)?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let path = args.model.clone().unwrap_or_else(crate::default_model);
    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let lm =
        load_language_model(gpu.clone(), &path).with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = lm.tokenizer()?;
    let mut rows = load_grpo_prompts(&data, tokenizer, lm.decoder.max_context() - 1)?;
    if let Some(n) = args.limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        rows.truncate(n);
    }
    let metrics = match explicit {
        Some(m) => m,
        None => default_metrics(&data, &rows),
    };
    if metrics.is_empty() {
        bail!(
            "{}: no metric applies (rows need `reference` for chrf, bleu, semantic and exact, `language` for \
             language)",
            data.display()
        );
    }
    check_rows(&data, &rows, &metrics)?;
    let mut adapters = Vec::with_capacity(entries.len());
    for entry in &entries {
        adapters.push(match &entry.dir {
            Some(dir) => Some(
                Adapter::load_peft(gpu.clone(), dir, lm.decoder.config())
                    .with_context(|| format!("--adapter {}: loading {}", entry.label, dir.display()))?,
            ),
            None => None,
        });
    }
    let encoder = if metrics.contains(&Metric::Semantic) {
        let dir = args
            .encoder
            .clone()
            .unwrap_or_else(|| babelrl::model::cache_dir().join("models/multilingual-e5-small"));
        Some(
            Encoder::load(gpu.clone(), &dir)
                .with_context(|| format!("loading the encoder {}", dir.display()))?,
        )
    } else {
        None
    };
    let cfg = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        stop_strings: args.stop.clone(),
        ..SamplingConfig::default()
    };
    eprintln!(
        "eval: {} rows of {}, metrics {}, models {}",
        rows.len(),
        data.display(),
        metrics.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
        entries.iter().map(|e| e.label.as_str()).collect::<Vec<_>>().join(", ")
    );
    let mut results = Vec::with_capacity(entries.len());
    for (entry, adapter) in entries.iter().zip(&adapters) {
        let done =
            complete(&lm.decoder, adapter.as_ref(), tokenizer, &rows, &cfg, args.batch_size, &entry.label)?;
        let texts: Vec<&str> = done.iter().map(|c| c.text.as_str()).collect();
        let scores = score(&rows, &texts, &metrics, &bleu, |t| match &encoder {
            Some(e) => e.embed(t),
            None => Err(babelrl::Error::Input("no encoder loaded".into())),
        })
        .with_context(|| format!("scoring {}", entry.label))?;
        results.push((scores, done));
    }
    print_table(&entries, &results, &metrics);
    if let Some(out) = &args.json {
        let json = report_json(&args, &path, &metrics, &rows, &entries, &results);
        let text = serde_json::to_string_pretty(&json)? + "\n";
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Greedy completions of every row, `batch` prompts at a time, with a progress bar on stderr.
fn complete(
    decoder: &Decoder,
    adapter: Option<&Adapter>,
    tokenizer: &Tokenizer,
    rows: &[GrpoPrompt],
    cfg: &SamplingConfig,
    batch: usize,
    label: &str,
) -> anyhow::Result<Vec<Completion>> {
    let bar = indicatif::ProgressBar::new(rows.len() as u64).with_message(label.to_string());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>8} [{bar:30}] {pos}/{len} prompts, {elapsed} ({eta} left)",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|r| r.tokens.clone()).collect();
        let done =
            generate(decoder.adapted(adapter), tokenizer, &prompts, cfg, |_| {}).with_context(|| {
                format!("{label}: generating for lines {}..{}", chunk[0].line, chunk[chunk.len() - 1].line)
            })?;
        out.extend(done);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

fn cell(v: Option<f64>, percent: bool) -> String {
    match v {
        Some(v) if percent => format!("{:.2}", v * 100.0),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

/// The table: one row per model; rates shown in percent, semantic as a mean cosine.
fn print_table(entries: &[Entry], results: &[(Scores, Vec<Completion>)], metrics: &[Metric]) {
    let mut head = vec!["model".to_string()];
    for m in metrics {
        match m {
            Metric::Chrf => head.extend(["chrF2".into(), "chrF2++".into()]),
            Metric::Bleu => head.push("BLEU".into()),
            Metric::Semantic => head.push("semantic".into()),
            Metric::Language => head.push("language %".into()),
            Metric::Exact => head.push("exact %".into()),
        }
    }
    let mut lines = vec![head];
    for (entry, (s, _)) in entries.iter().zip(results) {
        let mut line = vec![entry.label.clone()];
        for m in metrics {
            match m {
                Metric::Chrf => line.extend([cell(s.chrf, false), cell(s.chrf_pp, false)]),
                Metric::Bleu => line.push(cell(s.bleu, false)),
                Metric::Semantic => line.push(s.semantic.map_or("-".into(), |v| format!("{v:.4}"))),
                Metric::Language => line.push(cell(s.language, true)),
                Metric::Exact => line.push(cell(s.exact, true)),
            }
        }
        lines.push(line);
    }
    let widths: Vec<usize> =
        (0..lines[0].len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (v, w))| if c == 0 { format!("{v:<w$}") } else { format!("{v:>w$}") })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

fn report_json(
    args: &EvalArgs,
    model: &Path,
    metrics: &[Metric],
    rows: &[GrpoPrompt],
    entries: &[Entry],
    results: &[(Scores, Vec<Completion>)],
) -> serde_json::Value {
    let models: Vec<serde_json::Value> = entries
        .iter()
        .zip(results)
        .map(|(entry, (scores, done))| {
            let per_row: Vec<serde_json::Value> = rows
                .iter()
                .zip(done)
                .zip(&scores.rows)
                .map(|((row, c), RowScores { semantic, language_consistent, exact })| {
                    serde_json::json!({
                        "line": row.line, "prompt": row.text, "reference": row.reference,
                        "language": row.language, "completion": c.text, "tokens": c.tokens.len(),
                        "finish": c.finish, "semantic": semantic,
                        "language_consistent": language_consistent, "exact": exact,
                    })
                })
                .collect();
            serde_json::json!({
                "label": entry.label, "adapter": entry.dir, "scores": scores, "rows": per_row,
            })
        })
        .collect();
    serde_json::json!({
        "data": args.data, "model": model, "rows": rows.len(),
        "metrics": metrics, "max_new_tokens": args.max_new_tokens, "bleu_tokenize": args.bleu_tokenize,
        "models": models,
    })
}
