//! The programs in examples/ (the engine embedded as a library) run to the end and print what they
//! promise. `cargo test` builds them with the other targets; they run here as child processes on the
//! real models and the built plugins, with their built-in demo data (no data set needed).

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::{model_dir, repo_root};

/// target/debug/deps/inference-HASH → target/debug/examples/NAME.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path =
        exe.parent().and_then(|deps| deps.parent()).expect("a target folder").join("examples").join(name);
    if path.exists() {
        Some(path)
    } else {
        common::skip(format!(
            "example `{name}` is not built at {} (a plain `cargo test` builds it)",
            path.display()
        ))
    }
}

/// Runs the example with `args` and no data set (its built-in demo data); returns stdout.
fn run(name: &str, args: &[&str]) -> Option<String> {
    let exe = example(name)?;
    let out = Command::new(&exe)
        .args(args)
        .env("BABELRL_DATA", repo_root().join("target/no-data-here"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

#[test]
fn chat_batch_generates_every_conversation() {
    if model_dir("smollm2-135m-instruct").is_none() {
        return;
    }
    let Some(out) = run("chat_batch", &[]) else { return };
    assert_eq!(out.matches("\n> ").count(), 3, "three conversations:\n{out}");
    assert!(out.contains("tokens/s over the batch"), "{out}");
}

#[test]
fn best_of_n_scores_groups_with_the_reward_plugins() {
    if model_dir("smollm2-135m-instruct").is_none() {
        return;
    }
    if !repo_root().join("plugins/target/wasm32-wasip2/release/exact_match.wasm").exists() {
        let _: Option<()> = common::skip("plugins not built; run plugins/build.sh".into());
        return;
    }
    let Some(out) = run("best_of_n", &["en", "2", "3"]) else { return };
    assert!(out.contains(r#"rewards ["exact-match", "language"]"#), "{out}");
    assert_eq!(out.matches("best (sample ").count(), 2, "{out}");
    assert!(out.contains("correct: first sample ") && out.contains("/2, best of 3 "), "{out}");
}

#[test]
fn cross_lingual_similarity_finds_each_translation() {
    if model_dir("multilingual-e5-small").is_none() {
        return;
    }
    let Some(out) = run("cross_lingual_similarity", &["fra_Latn", "zho_Hans", "spa_Latn"]) else { return };
    assert_eq!(out.matches(" ok").count(), 12, "every demo sentence closest to its English original:\n{out}");
    assert!(!out.contains("MISMATCH"), "{out}");
}
