//! Reward reuse through best-of-n, with the engine embedded as a library: sample n chat completions per
//! MGSM question on the GPU, score every group with reward plugins (sandboxed WebAssembly components)
//! combined with weights, and keep the best completion of each group.
//!
//! Run (after `scripts/fetch_models.sh` and `plugins/build.sh`):
//!   cargo run --release -p babelrl --example best_of_n -- [LANG] [QUESTIONS] [N]
//! LANG is an MGSM language (default `en`), read from `$BABELRL_DATA/mgsm` (default `../shared/data`);
//! without it, three built-in English questions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use babelrl::generate::{SamplingConfig, generate};
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

    let (mut first_correct, mut best_correct) = (0, 0);
    for (i, (question, answer)) in rows.iter().enumerate() {
        let messages = [ChatMessage::new("user", format!("{question} Answer with a number."))];
        let prompt = tokenizer.encode(&template.render(&messages, true)?, false)?;
        // n copies of the prompt in one batch: one prefill and one decode step per token for all.
        let cfg = SamplingConfig {
            temperature: 0.8,
            top_p: 0.95,
            seed: i as u64,
            max_new_tokens: 96,
            ..Default::default()
        };
        let completions = generate(&lm.decoder, tokenizer, &vec![prompt; n], &cfg, |_| {})?;
        let group: Vec<Sample> = completions
            .iter()
            .map(|c| Sample {
                prompt: question.to_string(),
                completion: c.text.clone(),
                reference: Some(answer.clone()),
                language: Some(lang.to_string()),
                fields: Vec::new(),
            })
            .collect();
        let scored = rewards.score(&group)?;
        let best = (0..n).max_by(|&a, &b| scored.total[a].total_cmp(&scored.total[b])).unwrap_or(0);
        let correct = |k: usize| scored.per_plugin[0][k] == Some(1.0);
        first_correct += usize::from(correct(0));
        best_correct += usize::from(correct(best));
        println!("\nQ{i}: {question}\n  reference: {answer}; rewards: {:?}", scored.total);
        println!("  best (sample {best}): {}", completions[best].text.trim().replace('\n', " "));
    }
    println!(
        "\ncorrect: first sample {first_correct}/{}, best of {n} {best_correct}/{}",
        rows.len(),
        rows.len()
    );
    Ok(())
}
