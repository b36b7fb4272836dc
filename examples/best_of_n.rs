//! Reward reuse through best-of-n, with the engine embedded as a library: `babelrl::generate::best_of_n`
//! samples n chat completions per MGSM question on the GPU (every question × n in one batch), scores every
//! group with reward plugins (sandboxed WebAssembly components) combined with weights, and keeps the best
//! completion of each group.
//!
//! Run (after `scripts/fetch_models.sh` and `plugins/build.sh`):
//!   cargo run --release -p babelrl --example best_of_n -- [LANG] [QUESTIONS] [N]
//! LANG is an MGSM language (default `en`), read from `$BABELRL_DATA/mgsm` (default `../shared/data`);
//! without it, three built-in English questions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use babelrl::generate::{BestOfPrompt, Judge, SamplingConfig, best_of_n};
use babelrl::gpu::{Gpu, GpuOptions};
use babelrl::model::{cache_dir, load_language_model};
use babelrl::plugin::{NoServices, RewardSet, RunRewards, Sample};
use babelrl::text::ChatMessage;

/// Used when MGSM is not at hand.
const DEMO: &str = "Tom has 3 apples and buys 5 more. How many apples does he have?\t8
A box holds 12 eggs. How many eggs are in 4 boxes?\t48
Sara reads 10 pages a day. How many pages does she read in a week?\t70";

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lang = args.first().map_or("en", String::as_str);
    let questions: usize = args.get(1).map_or(Ok(3), |s| s.parse()).context("QUESTIONS must be a number")?;
    let n: usize = args.get(2).map_or(Ok(4), |s| s.parse()).context("N must be a number")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // The data: `question<TAB>answer` lines, or three questions of our own when the data set is absent.
    let data = std::env::var_os("BABELRL_DATA").map_or_else(|| root.join("../shared/data"), PathBuf::from);
    let file = data.join(format!("mgsm/mgsm_{lang}.tsv"));
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if lang == "en" => {
            println!(
                "({}: {e}; using the built-in demo questions; set BABELRL_DATA for MGSM)",
                file.display()
            );
            DEMO.to_string()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {} (set BABELRL_DATA)", file.display())),
    };
    let rows: Vec<(&str, String)> = text
        .lines()
        .take(questions)
        .map(|l| {
            let (q, a) =
                l.split_once('\t').with_context(|| format!("{}: no tab in {l:?}", file.display()))?;
            Ok((q, a.replace(',', "")))
        })
        .collect::<anyhow::Result<_>>()?;

    // The rewards, as a run config would declare them: the answer's correctness, and a small bonus for
    // answering in the question's language.
    let plugins = root.join("plugins/target/wasm32-wasip2/release");
    let run = RunRewards::from_toml(
        r#"
        on_error = "fail"
        [[reward]]
        name = "exact-match"
        path = "exact_match.wasm"
        weight = 1.0
        [[reward]]
        name = "language"
        path = "language_consistency.wasm"
        weight = 0.2
        config = { mode = "gate", threshold = 0.5, no_letters = 0.0 }
        "#,
        Path::new("best_of_n run config"),
    )?;
    if !plugins.join("exact_match.wasm").exists() {
        bail!("no plugins in {}: build them with plugins/build.sh", plugins.display());
    }
    let mut rewards = RewardSet::load(&run.rewards, run.on_error, &plugins, Arc::new(NoServices))?;

    // The policy.
    let model = cache_dir().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let gpu = Gpu::new(&GpuOptions::from_env())?;
    let lm = load_language_model(gpu, &model)
        .with_context(|| format!("loading {} (run scripts/fetch_models.sh)", model.display()))?;
    let tokenizer = lm.tokenizer()?;
    let template = tokenizer.chat_template_renderer()?.context("the model has no chat template")?;
    println!(
        "adapter: {}; {} questions × {n} samples, rewards {:?}",
        lm.decoder.gpu().summary.name,
        rows.len(),
        rewards.names()
    );

    let prompts = rows
        .iter()
        .map(|(question, answer)| {
            let messages = [ChatMessage::new("user", format!("{question} Answer with a number."))];
            Ok(BestOfPrompt {
                tokens: tokenizer.encode(&template.render(&messages, true)?, false)?,
                sample: Sample {
                    prompt: question.to_string(),
                    completion: String::new(),
                    reference: Some(answer.clone()),
                    language: Some(lang.to_string()),
                    fields: Vec::new(),
                },
                messages: Some(messages.to_vec()),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cfg =
        SamplingConfig { temperature: 0.8, top_p: 0.95, seed: 0, max_new_tokens: 96, ..Default::default() };
    let results = best_of_n(&lm.decoder, tokenizer, &prompts, n, &cfg, Judge::Plugins(&mut rewards))?;

    let (mut first_correct, mut best_correct) = (0, 0);
    for (i, ((question, answer), r)) in rows.iter().zip(&results).enumerate() {
        // The first plugin is exact-match: 1 for the right number.
        let correct = |k: usize| r.per_plugin[0][k] == Some(1.0);
        first_correct += usize::from(correct(0));
        best_correct += usize::from(correct(r.best));
        let totals: Vec<f32> = r.scores.iter().map(|s| s.unwrap_or(f32::NAN)).collect();
        println!("\nQ{i}: {question}\n  reference: {answer}; rewards: {totals:?}");
        println!("  best (sample {}): {}", r.best, r.best().text.trim().replace('\n', " "));
    }
    println!(
        "\ncorrect: first sample {first_correct}/{}, best of {n} {best_correct}/{}",
        rows.len(),
        rows.len()
    );
    Ok(())
}
