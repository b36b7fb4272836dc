//! `babelrl train RUN.toml` with both `[sft]` and `[grpo]` (the semantic-reward recipe's two stages) on
//! the tiny Llama and the length-guard plugin: both stages complete, GRPO starts from the SFT adapter with
//! a fresh optimizer (it equals a one-stage GRPO run from the saved SFT adapter, bit for bit), a run killed
//! in either stage and resumed equals the uninterrupted one, and a resume or fresh start that does not fit
//! the output's stage layout is a clear error.

use crate::common::{Scratch, scratch};
use crate::train_cli::{babelrl, err, ok, tiny_model};
use crate::train_cli_grpo::length_guard;
use std::path::{Path, PathBuf};

/// A fresh folder with SFT pairs (`sft.jsonl`), GRPO prompts with references (`grpo.jsonl`) and a copy
/// of the plugin.
fn setup(name: &str, plugin: &Path) -> Scratch {
    let dir = scratch(&format!("recipe-{name}"));
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(plugin, dir.join("plugins/length_guard.wasm")).unwrap();
    let rows =
        [("sky is", " blue."), ("grass is", " green."), ("snow is", " white."), ("coal is", " black.")];
    let write = |file: &str, f: &dyn Fn(&str, &str) -> serde_json::Value| {
        let lines: Vec<String> = rows.iter().map(|(p, c)| f(p, c).to_string()).collect();
        std::fs::write(dir.join(file), lines.join("\n") + "\n").unwrap();
    };
    write("sft.jsonl", &|p, c| serde_json::json!({"prompt": p, "completion": c}));
    write("grpo.jsonl", &|p, c| serde_json::json!({"prompt": p, "reference": c.trim()}));
    dir
}

const LORA: &str = "[lora]\nr = 4\nalpha = 8.0\ndropout = 0.1\nseed = 3\n";
const SFT: &str = "[sft]\ndata = \"sft.jsonl\"\nbatch_size = 2\nmax_steps = 3\nlearning_rate = 1e-2\n";
const GRPO: &str = "[grpo]\ndata = \"grpo.jsonl\"\nnum_generations = 4\nprompts_per_step = 2\nmax_steps = 3\n\
                    max_completion_length = 8\ntemperature = 0.9\nseed = 11\nlearning_rate = 5e-3\n";
const REWARD: &str =
    "[[reward]]\nname = \"length\"\npath = \"plugins/length_guard.wasm\"\nconfig = { lo = 0.8, hi = 1.2 }\n";

/// A run file `name.toml` in `dir` with the sections given and `[output] dir = "out-NAME"`.
fn write_run(dir: &Path, name: &str, sections: &[&str]) -> PathBuf {
    let text = format!(
        "[model]\npath = {model:?}\n\n[optimizer]\nlearning_rate = 1e-3\n\n{}\n\
         [output]\ndir = \"out-{name}\"\nsave_steps = 1\nsave_total_limit = 2\n",
        sections.join("\n"),
        model = tiny_model().to_str().unwrap(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Metrics lines without the timing fields (which differ between runs).
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let timing = ["seconds", "tokens_per_s", "rollout_seconds", "reward_seconds", "reference_seconds"];
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in timing.iter().chain(&["update_seconds"]) {
                v.as_object_mut().unwrap().remove(*k);
            }
            v
        })
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The optimizer state of a checkpoint (its file's metadata order varies from run to run).
fn optimizer(checkpoint: &Path) -> babelrl::train::AdamWState {
    let path = checkpoint.join("optimizer.safetensors");
    babelrl::train::AdamWState::from_safetensors(&read(&path), &path).unwrap()
}

fn state(checkpoint: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(&checkpoint.join("trainer_state.json"))).unwrap()
}

/// Asserts that the two runs' outputs are the same bit for bit: both adapters, the last checkpoint of
/// each stage (adapter and optimizer moments) and the metrics.
fn assert_same_run(a: &Path, b: &Path, what: &str) {
    for file in [
        "sft-adapter/adapter_model.safetensors",
        "adapter/adapter_model.safetensors",
        "sft/checkpoint-3/adapter_model.safetensors",
        "grpo/checkpoint-3/adapter_model.safetensors",
    ] {
        assert!(read(&a.join(file)) == read(&b.join(file)), "{what}: {file} differs");
    }
    for stage in ["sft", "grpo"] {
        let ck = Path::new(stage).join("checkpoint-3");
        assert!(
            optimizer(&a.join(&ck)) == optimizer(&b.join(&ck)),
            "{what}: {stage}'s optimizer moments differ"
        );
    }
    assert_eq!(metrics(a), metrics(b), "{what}: the metrics differ");
}

#[test]
fn a_two_stage_run_trains_grpo_from_the_sft_adapter_and_resumes_in_either_stage_bit_for_bit() {
    let Some(plugin) = length_guard() else { return };
    let dir = setup("stages", &plugin);
    let full = write_run(&dir, "full", &[LORA, SFT, GRPO, REWARD]);
    let text = ok(&babelrl(&["train", full.to_str().unwrap()], &[]));
    assert!(
        text.contains("[sft] trained to step 3 of 3") && text.contains("[grpo] trained to step 3 of 3"),
        "{text}"
    );
    let out = dir.join("out-full");

    // Metrics: the SFT stage's steps, then GRPO's, each counted from 1 and naming its stage.
    let lines = metrics(&out);
    let stages: Vec<(&str, u64)> =
        lines.iter().map(|m| (m["stage"].as_str().unwrap(), m["step"].as_u64().unwrap())).collect();
    assert_eq!(stages, [("sft", 1), ("sft", 2), ("sft", 3), ("grpo", 1), ("grpo", 2), ("grpo", 3)]);
    assert!(lines[..3].iter().all(|m| m["loss"].is_f64() && m.get("reward").is_none()), "{lines:?}");
    assert!(lines[3..].iter().all(|m| m["reward"].is_f64()), "{lines:?}");
    // Each stage's own learning rate, each schedule starting afresh.
    assert_eq!(
        (lines[0]["learning_rate"].as_f64(), lines[3]["learning_rate"].as_f64()),
        (Some(1e-2), Some(5e-3))
    );

    // Checkpoints per stage, recording stage and layout; GRPO's optimizer is fresh (3 steps, not 6).
    for (stage, expected_seen) in [("sft", 6), ("grpo", 6)] {
        let s = state(&out.join(stage).join("checkpoint-3"));
        assert_eq!(s["stage"], stage);
        assert_eq!(s["stages"], serde_json::json!(["sft", "grpo"]));
        assert_eq!((s["step"].as_u64(), s["examples_seen"].as_u64()), (Some(3), Some(expected_seen)), "{s}");
    }
    assert!(!out.join("checkpoint-3").exists(), "a two-stage run keeps its checkpoints in sft/ and grpo/");
    assert_eq!(optimizer(&out.join("grpo/checkpoint-3")).step, 3);
    let sft_adapter = read(&out.join("sft-adapter/adapter_model.safetensors"));
    assert!(sft_adapter == read(&out.join("sft/checkpoint-3/adapter_model.safetensors")));
    assert!(
        sft_adapter != read(&out.join("adapter/adapter_model.safetensors")),
        "GRPO did not move the adapter"
    );

    // GRPO started from the saved SFT adapter with a fresh optimizer and schedule: a one-stage GRPO run
    // from that adapter gives the same adapter and rewards, bit for bit.
    let init = format!("[lora]\ninit_from = {:?}\n", out.join("sft-adapter").to_str().unwrap());
    let alone = write_run(&dir, "alone", &[&init, GRPO, REWARD]);
    ok(&babelrl(&["train", alone.to_str().unwrap()], &[]));
    let out_alone = dir.join("out-alone");
    let file = "adapter/adapter_model.safetensors";
    assert!(read(&out.join(file)) == read(&out_alone.join(file)), "GRPO after SFT ≠ GRPO from sft-adapter");
    let moments = optimizer(&out.join("grpo/checkpoint-3")) == optimizer(&out_alone.join("checkpoint-3"));
    assert!(moments, "GRPO's optimizer moments differ from the one-stage run's");
    assert_eq!(metrics(&out)[3..], metrics(&out_alone)[..], "GRPO's metrics differ from the one-stage run's");

    // Killed in either stage (after step 2's update, before its checkpoint), then resumed.
    for (name, kill, kept) in
        [("cutsft", "sft:2", "sft/checkpoint-1"), ("cutgrpo", "grpo:2", "grpo/checkpoint-1")]
    {
        let cut = write_run(&dir, name, &[LORA, SFT, GRPO, REWARD]);
        let killed = babelrl(&["train", cut.to_str().unwrap()], &[("BABELRL_TEST_KILL_AT_STEP", kill)]);
        assert!(!killed.status.success(), "{kill}: the run was not stopped");
        let out_cut = dir.join(format!("out-{name}"));
        let next = kept.replace("-1", "-2");
        assert!(out_cut.join(kept).is_dir() && !out_cut.join(&next).exists(), "{kill}");
        let text = ok(&babelrl(&["train", cut.to_str().unwrap(), "--resume"], &[]));
        assert!(text.contains("[grpo] trained to step 3 of 3"), "{kill}: {text}");
        assert_same_run(&out, &out_cut, kill);
    }

    // A fresh start over the output is refused; so is a resume with another stage layout.
    let e = err(&babelrl(&["train", full.to_str().unwrap()], &[]));
    assert!(e.contains("already holds a run") && e.contains("--resume"), "{e}");
    let grpo_only = write_run(&dir, "full", &[LORA, GRPO, REWARD]);
    let e = err(&babelrl(&["train", grpo_only.to_str().unwrap(), "--resume"], &[]));
    assert!(
        e.contains("[grpo] stage of a run with [sft] then [grpo]") && e.contains("this run file has [grpo]:"),
        "{e}"
    );
    let e = err(&babelrl(&["train", grpo_only.to_str().unwrap()], &[]));
    assert!(e.contains("already holds a run"), "{e}");
    let sft_only = write_run(&dir, "full", &[LORA, SFT]);
    let ck = out.join("sft/checkpoint-3");
    let e = err(&babelrl(&["train", sft_only.to_str().unwrap(), "--resume", ck.to_str().unwrap()], &[]));
    assert!(
        e.contains("[sft] stage of a run with [sft] then [grpo]") && e.contains("this run file has [sft]"),
        "{e}"
    );
    // Resuming the SFT stage while GRPO checkpoints exist would retrain GRPO's start: refused.
    write_run(&dir, "full", &[LORA, SFT, GRPO, REWARD]);
    let e = err(&babelrl(&["train", full.to_str().unwrap(), "--resume", ck.to_str().unwrap()], &[]));
    assert!(e.contains("[grpo] stage's") && e.contains("--resume"), "{e}");
}

#[test]
fn a_two_stage_run_checks_its_grpo_stage_before_training_sft() {
    let Some(plugin) = length_guard() else { return };
    let dir = setup("preflight", &plugin);
    let absent = REWARD.replace("plugins/length_guard", "plugins/absent");
    let run = write_run(&dir, "plugin", &[LORA, SFT, GRPO, &absent]);
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("absent.wasm") && e.contains("before the [sft] stage"), "{e}");
    assert!(!dir.join("out-plugin").exists(), "a refused run created its output");
    // GRPO prompts without the `reference` length-guard needs.
    std::fs::write(dir.join("grpo.jsonl"), "{\"prompt\": \"sky is\", \"answer\": \"blue\"}\n").unwrap();
    let run = write_run(&dir, "column", &[LORA, SFT, GRPO, REWARD]);
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("`length`") && e.contains("reference"), "{e}");
    assert!(!dir.join("out-column").exists());
}
