//! `babelrl train RUN.toml` with plugins that call host services: the semantic-similarity plugin served
//! by `[encoder] path` (the tiny BERT fixture) and the reward-model plugin served by `[reward_model]`
//! (the tiny scalar-head fixture) give finite rewards in the metrics; an `[encoder]` or
//! `[reward_model]` that does not load stops the run before any rollout, creating nothing.

use crate::common::{Scratch, repo_root, scratch};
use crate::train_cli::{babelrl, err, ok, tiny_model};
use std::path::{Path, PathBuf};

fn plugin(name: &str) -> Option<PathBuf> {
    crate::train_cli_grpo::built_plugins(&[name]).map(|mut p| p.remove(0))
}

/// A folder with prompts (and references) and the plugin, named `plugin.wasm`.
fn setup(name: &str, wasm: &Path) -> Scratch {
    let dir = scratch(&format!("grpo-svc-{name}"));
    std::fs::copy(wasm, dir.join("plugin.wasm")).unwrap();
    let rows =
        [("sky is", "blue sky"), ("grass is", "green grass"), ("snow is", "white"), ("coal is", "black")];
    let lines: Vec<String> =
        rows.iter().map(|(p, r)| serde_json::json!({"prompt": p, "reference": r}).to_string()).collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    dir
}

/// A two-step GRPO run file in `dir` with the plugin as reward `reward` and `tables` after it.
fn write_run(dir: &Path, name: &str, reward: &str, config: &str, tables: &str) -> PathBuf {
    let text = format!(
        "[model]\npath = {model:?}\n\n[lora]\nr = 4\nalpha = 8.0\n\n[grpo]\ndata = \"prompts.jsonl\"\n\
         num_generations = 4\nprompts_per_step = 1\nmax_steps = 2\nmax_completion_length = 8\nseed = 5\n\n\
         [[reward]]\nname = \"{reward}\"\npath = \"plugin.wasm\"\nconfig = {config}\n\n{tables}\n\n\
         [output]\ndir = \"out-{name}\"\n",
        model = tiny_model().to_str().unwrap(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Each step's mean reward of plugin `name`, from metrics.jsonl.
fn plugin_rewards(out: &Path, name: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["rewards"][name].as_f64().unwrap_or_else(|| panic!("no `{name}` reward in {l}"))
        })
        .collect()
}

#[test]
fn a_grpo_run_serves_embed_from_its_encoder_and_refuses_a_bad_encoder_before_rollout() {
    let Some(wasm) = plugin("semantic_similarity") else { return };
    let dir = setup("embed", &wasm);
    // tau = -1: the reward is (cos + 1) / 2, never exactly 0 or 1 for these completions.
    let config = "{ mode = \"threshold\", tau = -1.0 }";
    let encoder = repo_root().join("tests/fixtures/tiny-bert");
    let table = format!("[encoder]\npath = {:?}\n", encoder.to_str().unwrap());
    let run = write_run(&dir, "ok", "semantic", config, &table);
    let text = ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(text.contains("trained to step 2 of 2"), "{text}");
    let rewards = plugin_rewards(&dir.join("out-ok"), "semantic");
    assert_eq!(rewards.len(), 2);
    assert!(rewards.iter().all(|r| r.is_finite() && *r > 0.0 && *r < 1.0), "{rewards:?}");

    for (name, path, want) in [
        ("absent", "no-such-encoder".to_string(), "no-such-encoder"),
        ("decoder", repo_root().join("tests/fixtures/tiny-llama").display().to_string(), "model_type"),
    ] {
        let run = write_run(&dir, name, "semantic", config, &format!("[encoder]\npath = {path:?}\n"));
        let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
        assert!(
            e.contains("[encoder] path") && e.contains(&format!("{name}.toml")) && e.contains(want),
            "{e}"
        );
        assert!(!dir.join(format!("out-{name}")).exists(), "{name}: a refused run created its output");
    }
}

#[test]
fn a_grpo_run_serves_reward_model_score_from_its_reward_model() {
    let Some(wasm) = plugin("reward_model") else { return };
    let dir = setup("rm", &wasm);
    let config = "{ transform = \"sigmoid\" }";
    let rm = repo_root().join("tests/fixtures/tiny-rm-llama/peft");
    let run =
        write_run(&dir, "ok", "rm", config, &format!("[reward_model]\npath = {:?}\n", rm.to_str().unwrap()));
    let text = ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(text.contains("trained to step 2 of 2"), "{text}");
    let rewards = plugin_rewards(&dir.join("out-ok"), "rm");
    assert!(rewards.iter().all(|r| r.is_finite() && *r > 0.0 && *r < 1.0), "{rewards:?}");

    // Without [reward_model] the plugin fails on the first prompts, before any rollout.
    let run = write_run(&dir, "none", "rm", config, "");
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("no reward model configured") && e.contains("[reward_model]"), "{e}");
    let causal = repo_root().join("tests/fixtures/tiny-llama");
    let run = write_run(
        &dir,
        "bad",
        "rm",
        config,
        &format!("[reward_model]\npath = {:?}\n", causal.to_str().unwrap()),
    );
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("[reward_model] path") && e.contains("ForSequenceClassification"), "{e}");
    for name in ["none", "bad"] {
        assert!(!dir.join(format!("out-{name}")).exists(), "{name}: a refused run created its output");
    }
}
