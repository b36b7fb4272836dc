//! Host services outside and inside the sandbox: `babelrl plugin score --encoder DIR` and
//! `--reward-model DIR` serve the example semantic-similarity and reward-model plugins from the tiny
//! fixtures (their scores equal the engine's own embeddings and reward-model scores), missing or bad
//! flags are clear errors, and [`RunServices`] chunks long lists and explains a missing default encoder.

use crate::common::{self, Scratch, gpu, repo_root, scratch};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use babelrl::model::{Encoder, RewardModel};
use babelrl::plugin::{EMBED_CHUNK, HostServices, RunServices};

fn plugin(name: &str) -> Option<PathBuf> {
    let path = repo_root().join(format!("plugins/target/wasm32-wasip2/release/{name}.wasm"));
    if path.exists() {
        Some(path)
    } else {
        common::skip(format!("{} not built; run plugins/build.sh", path.display()))
    }
}

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

fn babelrl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_babelrl"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("run the babelrl binary")
}

fn temp(name: &str) -> Scratch {
    scratch(&format!("svc-{name}"))
}

/// The `{"score": x}` lines of `plugin score --print-scores`.
fn printed_scores(out: &Output) -> Vec<f32> {
    assert!(out.status.success(), "babelrl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("score").and_then(|s| s.as_f64()).map(|s| s as f32))
        .collect()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "babelrl succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_rows(dir: &Path, rows: &[(&str, &str, &str)]) -> PathBuf {
    let lines: Vec<String> = rows
        .iter()
        .map(|(p, c, r)| serde_json::json!({"prompt": p, "completion": c, "reference": r}).to_string())
        .collect();
    let path = dir.join("rows.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn plugin_score_with_encoder_serves_embed_from_that_encoder() {
    let Some(wasm) = plugin("semantic_similarity") else { return };
    let dir = temp("embed");
    let rows =
        [("q", "hello world", "hello world"), ("q", "the lazy dog", "hello world"), ("q", "fox", "hello")];
    let data = write_rows(&dir, &rows);
    let encoder_dir = fixture("tiny-bert");
    // tau = -1: the reward is (cos + 1) / 2, so every similarity shows.
    let config = r#"{"mode": "threshold", "tau": -1.0}"#;
    let (w, d, e) = (wasm.to_str().unwrap(), data.to_str().unwrap(), encoder_dir.to_str().unwrap());
    let args = ["plugin", "score", "--plugin", w, "--data", d, "--config", config, "--print-scores"];
    let got = printed_scores(&babelrl(&[&args[..], &["--encoder", e]].concat()));
    let encoder = Encoder::load(gpu(), &encoder_dir).unwrap();
    let texts: Vec<String> = rows.iter().flat_map(|(_, c, r)| [c.to_string(), r.to_string()]).collect();
    let emb = encoder.embed(&texts).unwrap();
    assert_eq!(got.len(), rows.len());
    for (i, g) in got.iter().enumerate() {
        let cos: f32 = emb[2 * i].iter().zip(&emb[2 * i + 1]).map(|(a, b)| a * b).sum();
        assert!((g - (cos + 1.0) / 2.0).abs() < 1e-5, "row {i}: plugin {g}, engine cos {cos}");
    }
    assert!((got[0] - 1.0).abs() < 1e-5 && got[1] < 0.999, "{got:?}");

    // `plugin check` serves it too.
    let out = babelrl(&["plugin", "check", w, "--config", config, "--encoder", e]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("score(2 samples) = [Some(")
    );
    // Without --encoder the plugin's embed fails, and the error says which flag serves it.
    let e = stderr(&babelrl(&args));
    assert!(e.contains("no encoder configured") && e.contains("--encoder"), "{e}");
    // A folder that is not an encoder is refused before the plugin runs, naming the flag.
    let bad = fixture("tiny-llama");
    let e = stderr(&babelrl(&[&args[..], &["--encoder", bad.to_str().unwrap()]].concat()));
    assert!(e.contains("--encoder") && e.contains("tiny-llama") && e.contains("config.json"), "{e}");
}

#[test]
fn plugin_score_with_reward_model_serves_the_reward_models_scores() {
    let Some(wasm) = plugin("reward_model") else { return };
    let dir = temp("rm");
    let rows =
        [("hello", " world", ""), ("the quick brown fox", " jumps over the lazy dog.", ""), ("hi", "!", "")];
    let data = write_rows(&dir, &rows);
    let (w, d) = (wasm.to_str().unwrap(), data.to_str().unwrap());
    let args = ["plugin", "score", "--plugin", w, "--data", d, "--print-scores", "--group-by", "reference"];
    // A transformers-saved reward model, and one babelrl trained and saved (a SEQ_CLS adapter).
    for rm_dir in [fixture("tiny-rm-llama"), fixture("tiny-rm-llama/babelrl-rm")] {
        let got =
            printed_scores(&babelrl(&[&args[..], &["--reward-model", rm_dir.to_str().unwrap()]].concat()));
        let rm = RewardModel::load(gpu(), &rm_dir).unwrap();
        let prompts: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
        let completions: Vec<String> = rows.iter().map(|r| r.1.to_string()).collect();
        let want = rm.score(&prompts, &completions).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{}: plugin {g}, reward model {w}",
                rm_dir.display()
            );
        }
    }
    let e = stderr(&babelrl(&args));
    assert!(e.contains("no reward model configured") && e.contains("--reward-model"), "{e}");
    let e =
        stderr(&babelrl(&[&args[..], &["--reward-model", fixture("tiny-llama").to_str().unwrap()]].concat()));
    assert!(e.contains("--reward-model") && e.contains("ForSequenceClassification"), "{e}");
}

#[test]
fn run_services_chunk_long_lists_and_explain_a_missing_default_encoder() {
    let encoder = Arc::new(Encoder::load(gpu(), &fixture("tiny-bert")).unwrap());
    let services = RunServices::new().with_encoder(encoder.clone());
    let texts: Vec<String> = (0..EMBED_CHUNK + 7).map(|i| format!("text number {i}")).collect();
    let got = services.embed(&texts).unwrap();
    assert_eq!(got.len(), texts.len());
    let tail = encoder.embed(&texts[EMBED_CHUNK..]).unwrap();
    assert_eq!(&got[EMBED_CHUNK..], &tail[..], "the second chunk is embedded as on its own");
    let e = services.reward_model_score(&["p".into()], &["c".into()]).unwrap_err();
    assert!(e.contains("no reward model configured"), "{e}");

    // The default encoder is loaded on the first embed; a cache without it fails that call (and the
    // next) with what to run, and nothing fails before.
    let cache = temp("no-cache");
    let missing = cache.join("models/multilingual-e5-small");
    let services = RunServices::new().with_lazy_encoder(gpu(), missing.clone());
    assert!(services.encoder().is_none());
    for _ in 0..2 {
        let e = services.embed(&["x".into()]).unwrap_err();
        assert!(e.contains("scripts/fetch_models.sh") && e.contains(&missing.display().to_string()), "{e}");
    }
    // A failed load is not remembered: once the folder is there, the next embed loads it.
    std::fs::create_dir_all(&missing).unwrap();
    for f in std::fs::read_dir(fixture("tiny-bert")).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, missing.join(f.file_name().unwrap())).unwrap();
        }
    }
    assert_eq!(services.embed(&texts[..3]).unwrap(), encoder.embed(&texts[..3]).unwrap());
    assert!(services.encoder().is_some());
    let services = RunServices::new().with_lazy_encoder(gpu(), fixture("tiny-bert"));
    assert!(services.encoder().is_none(), "loaded before the first embed");
    assert_eq!(services.embed(&texts[..3]).unwrap(), encoder.embed(&texts[..3]).unwrap());
    assert!(services.encoder().is_some());
}
