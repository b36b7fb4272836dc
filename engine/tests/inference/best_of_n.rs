//! Best-of-n: the library call and `babelrl generate --best-of N` on the tiny Llama, judged by the
//! length-guard plugin (deterministic: completion length against the reference) or the tiny reward model;
//! the kept completion is the first with the highest score, and every score is the judge's own.
//! Bad option combinations are clear errors.

use std::path::Path;
use std::sync::Arc;

use crate::common::{gpu, repo_root, scratch};
use crate::train_cli::{babelrl, err, ok, tiny_model};
use crate::train_cli_grpo::length_guard;

use babelrl::generate::{BestOfPrompt, Judge, SamplingConfig, argmax, best_of_n};
use babelrl::model::load_language_model;
use babelrl::plugin::{NoServices, OnError, RewardSet, RewardSpec, Sample};

fn length_guard_set(path: &Path) -> RewardSet {
    let spec = RewardSpec {
        name: "length-guard".into(),
        path: path.to_path_buf(),
        weight: 1.0,
        config: serde_json::json!({}),
        limits: Default::default(),
        capabilities: Default::default(),
    };
    RewardSet::load(&[spec], OnError::Fail, Path::new(""), Arc::new(NoServices)).unwrap()
}

#[test]
fn best_of_n_keeps_the_highest_scoring_completion() {
    let Some(plugin) = length_guard() else { return };
    let lm = load_language_model(gpu(), &tiny_model()).unwrap();
    let tok = lm.tokenizer().unwrap();
    let prompts: Vec<BestOfPrompt> = [("sky is", "blue sky"), ("grass is", "green grass and more")]
        .iter()
        .map(|(p, r)| BestOfPrompt {
            tokens: tok.encode(p, true).unwrap(),
            sample: Sample {
                prompt: p.to_string(),
                completion: String::new(),
                reference: Some(r.to_string()),
                language: None,
                fields: Vec::new(),
            },
            messages: None,
        })
        .collect();
    let cfg = SamplingConfig { temperature: 1.0, max_new_tokens: 12, seed: 5, ..Default::default() };
    let mut set = length_guard_set(&plugin);
    let results = best_of_n(&lm.decoder, tok, &prompts, 6, &cfg, Judge::Plugins(&mut set)).unwrap();
    assert_eq!(results.len(), 2);
    let mut fresh = length_guard_set(&plugin);
    let mut distinct = false;
    for (p, r) in prompts.iter().zip(&results) {
        assert_eq!(r.completions.len(), 6);
        // The scores are the plugin's: a fresh copy scores the same texts the same.
        let group: Vec<Sample> =
            r.completions.iter().map(|c| Sample { completion: c.text.clone(), ..p.sample.clone() }).collect();
        let again = fresh.score(&group).unwrap();
        assert_eq!(r.scores, again.total.iter().map(|&v| Some(v)).collect::<Vec<_>>());
        let max = r.scores.iter().flatten().fold(f32::MIN, |m, &v| m.max(v));
        assert_eq!(r.scores[r.best], Some(max), "{:?}", r.scores);
        assert!(r.scores[..r.best].iter().all(|&v| v < Some(max)), "not the first best: {:?}", r.scores);
        assert_eq!(Some(r.best), argmax(&r.scores));
        distinct |= r.scores.iter().any(|&v| v != Some(max));
    }
    assert!(distinct, "every sample scored the same: the test would not see a wrong pick");
}

#[test]
fn generate_best_of_prints_every_score_and_the_best() {
    let Some(plugin) = length_guard() else { return };
    let model = tiny_model();
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "sky is",
        "--best-of",
        "5",
        "--temperature",
        "1.0",
        "--max-tokens",
        "10",
        "--seed",
        "2",
        "--plugin",
        plugin.to_str().unwrap(),
        "--reference",
        "blue sky",
        "--jsonl",
    ];
    let text = ok(&babelrl(&args, &[]));
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let completions = v["completions"].as_array().unwrap();
    assert_eq!(completions.len(), 5);
    let scores: Vec<f64> = completions.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    let best = v["best"].as_u64().unwrap() as usize;
    assert!(scores.iter().all(|&s| s <= scores[best]), "{scores:?}, best {best}");
    assert_eq!(v["best_text"], completions[best]["text"]);
    assert_eq!(completions[0]["plugins"]["length_guard"].as_f64(), Some(scores[0]));
    // The same run prints the best completion's text alone without --jsonl.
    let plain = ok(&babelrl(&args[..args.len() - 1], &[]));
    assert_eq!(plain.trim_end_matches('\n'), v["best_text"].as_str().unwrap());
}

#[test]
fn generate_best_of_with_a_reward_model_judge() {
    let model = tiny_model();
    let rm = repo_root().join("tests/fixtures/tiny-rm-llama");
    let dir = scratch("best-of");
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"sky is\"}\n{\"prompt\": \"snow is\"}\n").unwrap();
    let text = ok(&babelrl(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--best-of",
            "3",
            "--temperature",
            "1.0",
            "--max-tokens",
            "6",
            "--reward-model",
            rm.to_str().unwrap(),
            "--jsonl",
        ],
        &[],
    ));
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for v in &lines {
        let scores: Vec<f64> =
            v["completions"].as_array().unwrap().iter().map(|c| c["score"].as_f64().unwrap()).collect();
        let best = v["best"].as_u64().unwrap() as usize;
        assert!(scores.iter().all(|&s| s <= scores[best]), "{scores:?}");
    }
    assert_eq!(lines[1]["prompt"], "snow is");
}

#[test]
fn generate_best_of_bad_options_are_clear_errors() {
    let model = tiny_model();
    let m = model.to_str().unwrap();
    let e = err(&babelrl(&["generate", "--model", m, "--prompt", "a", "--best-of", "3"], &[]));
    assert!(e.contains("--best-of needs a judge"), "{e}");
    let e = err(&babelrl(&["generate", "--model", m, "--prompt", "a", "--plugin", "x.wasm"], &[]));
    assert!(e.contains("add --best-of N"), "{e}");
    let e = err(&babelrl(
        &["generate", "--model", m, "--prompt", "a", "--best-of", "0", "--plugin", "x.wasm"],
        &[],
    ));
    assert!(e.contains("--best-of 0"), "{e}");
    let e = err(&babelrl(
        &["generate", "--model", m, "--prompt", "a", "--best-of", "2", "--plugin", "/nonexistent/x.wasm"],
        &[],
    ));
    assert!(e.contains("/nonexistent/x.wasm"), "{e}");
}
