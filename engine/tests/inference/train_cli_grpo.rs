//! `babelrl train RUN.toml` with a `[grpo]` job on the tiny Llama and the length-guard reward plugin
//! (built by plugins/build.sh): a short run writes metrics and an adapter, a run killed in the middle and
//! resumed equals the uninterrupted one bit for bit, and bad run files or data are clear errors that
//! create nothing.

use crate::common::{self, Scratch, repo_root, scratch};
use crate::train_cli::{babelrl, err, ok, tiny_model};
use std::path::{Path, PathBuf};

/// The built plugins `names` (file stems), or `None` (skipped) when plugins/build.sh has not run.
pub(crate) fn built_plugins(names: &[&str]) -> Option<Vec<PathBuf>> {
    let dir = repo_root().join("plugins/target/wasm32-wasip2/release");
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(format!("{n}.wasm"))).collect();
    match paths.iter().find(|p| !p.exists()) {
        Some(p) => common::skip(format!("{} not built; run plugins/build.sh", p.display())),
        None => Some(paths),
    }
}

/// The built length-guard plugin, or `None` (skipped).
pub(crate) fn length_guard() -> Option<PathBuf> {
    built_plugins(&["length_guard"]).map(|mut p| p.remove(0))
}

/// A fresh folder holding the prompts (with a `reference` column length-guard measures against) and a
/// copy of the plugin, which run files name by a path relative to themselves.
fn setup(name: &str, plugin: &Path) -> Scratch {
    let dir = scratch(&format!("grpo-{name}"));
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(plugin, dir.join("plugins/length_guard.wasm")).unwrap();
    let rows =
        [("sky is", "blue sky"), ("grass is", "green grass"), ("snow is", "white"), ("coal is", "black")];
    let lines: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, (p, r))| serde_json::json!({"prompt": p, "reference": r, "id": i}).to_string())
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    dir
}

const REWARD: &str =
    "[[reward]]\nname = \"length\"\npath = \"plugins/length_guard.wasm\"\nconfig = { lo = 0.8, hi = 1.2 }\n";

/// A GRPO run file `name.toml` in `dir`: `grpo` is appended to the [grpo] section, `rest` after it.
fn write_run(dir: &Path, name: &str, grpo: &str, rest: &str) -> PathBuf {
    let text = format!(
        "[model]\npath = {model:?}\n\n[lora]\nr = 4\nalpha = 8.0\nseed = 3\n\n[optimizer]\nlearning_rate = 1e-2\n\n\
         [grpo]\ndata = \"prompts.jsonl\"\nnum_generations = 4\nprompts_per_step = 2\nmax_steps = 5\n\
         max_completion_length = 10\ntemperature = 0.9\nseed = 11\n{grpo}\n\n{rest}\n\n\
         [output]\ndir = \"out-{name}\"\nsave_steps = 1\nsave_total_limit = 2\n",
        model = tiny_model().to_str().unwrap(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Metrics lines without the timing fields.
pub(crate) fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["rollout_seconds", "reward_seconds", "reference_seconds", "update_seconds"] {
                assert!(v[k].as_f64().is_some_and(|s| s >= 0.0), "{k} in {l}");
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

pub(crate) fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_grpo_run_writes_metrics_and_an_adapter_and_resumes_bit_for_bit() {
    let Some(plugin) = length_guard() else { return };
    let dir = setup("resume", &plugin);
    let full = write_run(&dir, "full", "", REWARD);
    let cut = write_run(&dir, "cut", "", REWARD);
    let text = ok(&babelrl(&["train", full.to_str().unwrap()], &[]));
    assert!(text.contains("trained to step 5 of 5"), "{text}");
    let out_full = dir.join("out-full");
    let lines = metrics(&out_full);
    assert_eq!(lines.len(), 5);
    for (i, m) in lines.iter().enumerate() {
        assert_eq!(m["step"], i as u64 + 1);
        let reward = m["reward"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&reward), "{m}");
        assert_eq!(m["rewards"]["length"].as_f64(), Some(reward), "one plugin of weight 1: {m}");
        for k in ["loss", "reward_std", "grad_norm", "learning_rate", "clip_ratio"] {
            assert!(m[k].as_f64().is_some_and(f64::is_finite), "{k} in {m}");
        }
        let tokens = m["completion_tokens"].as_u64().unwrap();
        assert!(tokens > 0 && tokens <= 8 * 10, "{m}");
    }
    assert!(lines.iter().any(|m| m["grad_norm"].as_f64().unwrap() > 0.0), "no step moved the adapter");
    let adapter = out_full.join("adapter/adapter_model.safetensors");
    assert!(read(&adapter).len() > 1000);
    let state: serde_json::Value =
        serde_json::from_slice(&read(&out_full.join("checkpoint-5/trainer_state.json"))).unwrap();
    assert_eq!(
        (state["step"].as_u64(), state["examples_seen"].as_u64(), state["data_seed"].as_u64()),
        (Some(5), Some(10), Some(11))
    );

    // Killed (abort, as a crash) right after step 3's update, before its checkpoint; then resumed.
    let killed = babelrl(&["train", cut.to_str().unwrap()], &[("BABELRL_TEST_KILL_AT_STEP", "3")]);
    assert!(!killed.status.success(), "the run was not stopped");
    let out_cut = dir.join("out-cut");
    assert!(out_cut.join("checkpoint-2").is_dir() && !out_cut.join("checkpoint-3").exists());
    let text = ok(&babelrl(&["train", cut.to_str().unwrap(), "--resume"], &[]));
    assert!(text.contains("trained to step 5"), "{text}");
    for file in ["adapter/adapter_model.safetensors", "checkpoint-5/adapter_model.safetensors"] {
        assert!(read(&out_full.join(file)) == read(&out_cut.join(file)), "{file} differs after the resume");
    }
    let optimizer = |out: &Path| {
        let path = out.join("checkpoint-5/optimizer.safetensors");
        babelrl::train::AdamWState::from_safetensors(&read(&path), &path).unwrap()
    };
    assert!(optimizer(&out_full) == optimizer(&out_cut), "the optimizer's moments differ after the resume");
    assert_eq!(metrics(&out_full), metrics(&out_cut), "metrics differ after the resume");

    // A resume with another data order is refused.
    let other = write_run(&dir, "cut", "prompts_per_step = 1", REWARD);
    let text = std::fs::read_to_string(&other).unwrap().replace("prompts_per_step = 2\n", "");
    std::fs::write(&other, text).unwrap();
    let e = err(&babelrl(&["train", other.to_str().unwrap(), "--resume"], &[]));
    assert!(e.contains("checkpoint-5") && e.contains("prompts a step"), "{e}");
}

/// `num_iterations = 2` with 2 micro-batches per step: every other step reuses the rollouts (no tokens
/// generated), checkpoints fall between generation batches only, and a run killed in the middle of one
/// (step 3) resumes from the last boundary (step 2) to the same adapter, optimizer and metrics.
#[test]
fn a_grpo_run_with_two_iterations_and_accumulation_resumes_bit_for_bit() {
    let Some(plugin) = length_guard() else { return };
    let dir = setup("iterations", &plugin);
    let extra = "num_iterations = 2\ngradient_accumulation_steps = 2";
    let runs = ["full", "cut"].map(|name| {
        let path = write_run(&dir, name, extra, REWARD);
        let text = std::fs::read_to_string(&path).unwrap().replace("max_steps = 5", "max_steps = 6");
        std::fs::write(&path, text).unwrap();
        path
    });
    ok(&babelrl(&["train", runs[0].to_str().unwrap()], &[]));
    let out_full = dir.join("out-full");
    let lines = metrics(&out_full);
    assert_eq!(lines.len(), 6);
    for (i, m) in lines.iter().enumerate() {
        assert_eq!(m["iteration"].as_u64(), Some(i as u64 % 2), "{m}");
        assert_eq!(m["generated_tokens"].as_u64().unwrap() > 0, i % 2 == 0, "{m}");
    }
    assert!(out_full.join("checkpoint-6").is_dir() && out_full.join("checkpoint-4").is_dir());
    assert!(!out_full.join("checkpoint-5").exists(), "a checkpoint inside a generation batch");

    let killed = babelrl(&["train", runs[1].to_str().unwrap()], &[("BABELRL_TEST_KILL_AT_STEP", "3")]);
    assert!(!killed.status.success(), "the run was not stopped");
    let out_cut = dir.join("out-cut");
    assert!(out_cut.join("checkpoint-2").is_dir() && !out_cut.join("checkpoint-3").exists());
    ok(&babelrl(&["train", runs[1].to_str().unwrap(), "--resume"], &[]));
    for file in ["adapter/adapter_model.safetensors", "checkpoint-6/adapter_model.safetensors"] {
        assert!(read(&out_full.join(file)) == read(&out_cut.join(file)), "{file} differs after the resume");
    }
    assert_eq!(metrics(&out_full), metrics(&out_cut), "metrics differ after the resume");
}

#[test]
fn bad_grpo_run_files_and_data_are_clear_errors_that_create_nothing() {
    let Some(plugin) = length_guard() else { return };
    let dir = setup("bad", &plugin);
    let cases = [
        ("typo", "learning_rat = 1", REWARD.to_string(), vec!["learning_rat", "typo.toml"]),
        ("noreward", "", String::new(), vec!["[grpo] needs at least one [[reward]]", "noreward.toml"]),
        ("beta", "beta = -0.04", REWARD.to_string(), vec!["[grpo] beta = -0.04", "≥ 0"]),
        ("plugin", "", REWARD.replace("plugins/length_guard", "plugins/absent"), vec!["absent.wasm"]),
    ];
    for (name, grpo, rest, want) in cases {
        let run = write_run(&dir, name, grpo, &rest);
        let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
        assert!(want.iter().all(|w| e.contains(w)), "{name}: {e}");
        assert!(!dir.join(format!("out-{name}")).exists(), "{name}: a refused run created its output");
    }
    // Data without the column the plugin needs: no `reference`, so length-guard scores nothing.
    let data = dir.join("prompts.jsonl");
    std::fs::write(&data, "{\"prompt\": \"sky is\", \"answer\": \"blue\"}\n").unwrap();
    let run = write_run(&dir, "column", "", REWARD);
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("`length`") && e.contains("reference") && e.contains("answer"), "{e}");
    assert!(!dir.join("out-column").exists());
    // A line without a prompt, and a prompt past max_prompt_length, named by line.
    for (lines, want) in [
        ("{\"prompt\": \"sky is\", \"reference\": \"a\"}\n{\"question\": \"x\"}\n", "line 2: no `prompt`"),
        (
            "{\"prompt\": \"sky is blue and the grass is green\", \"reference\": \"a\"}\n",
            "line 1: the prompt has 29 tokens; max_prompt_length is 16",
        ),
    ] {
        std::fs::write(&data, lines).unwrap();
        let run = write_run(&dir, "data", "max_prompt_length = 16", REWARD);
        let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
        assert!(e.contains("prompts.jsonl") && e.contains(want), "{want}: {e}");
        assert!(!dir.join("out-data").exists());
    }
}

#[test]
fn a_plugin_failing_mid_run_stops_it_with_fail_and_is_skipped_and_counted_with_skip() {
    let Some([plugin, exact]) =
        built_plugins(&["length_guard", "exact_match"]).map(|p| <[PathBuf; 2]>::try_from(p).unwrap())
    else {
        return;
    };
    let dir = setup("onerror", &plugin);
    std::fs::copy(&exact, dir.join("plugins/exact_match.wasm")).unwrap();
    // The first four prompts (those checked before training) have numeric references; the fifth's has
    // no number, which exact-match refuses with an error when it meets it in a rollout group.
    let rows = ["1", "2", "3", "4", "none"];
    let lines: Vec<String> = rows
        .iter()
        .map(|r| serde_json::json!({"prompt": format!("{r} is"), "reference": r}).to_string())
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    let reward = "[[reward]]\nname = \"exact\"\npath = \"plugins/exact_match.wasm\"\n";
    // `on_error` is a top-level key: before the first table.
    let write = |name: &str| {
        let run = write_run(&dir, name, "", reward);
        let text = std::fs::read_to_string(&run).unwrap();
        std::fs::write(&run, format!("on_error = \"{name}\"\n{text}")).unwrap();
        run
    };
    // Five steps of two prompts go through the data twice: the bad prompt comes up.
    let run = write("fail");
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    let step: u64 = e
        .split("step ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the error names no step: {e}"));
    assert!(e.contains("exact") && e.contains("no number") && e.contains("checkpoint is intact"), "{e}");
    let out = dir.join("out-fail");
    assert!(!out.join(format!("checkpoint-{step}")).exists());
    if step > 1 {
        assert!(out.join(format!("checkpoint-{}", step - 1)).join("adapter_model.safetensors").is_file());
        assert_eq!(metrics(&out).len() as u64, step - 1);
    }
    // With `skip`, the failing group's completions get no reward and are counted.
    let run = write("skip");
    let text = ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(text.contains("trained to step 5"), "{text}");
    let lines = metrics(&dir.join("out-skip"));
    let unscored: Vec<u64> = lines.iter().map(|m| m["unscored"].as_u64().unwrap()).collect();
    assert!(unscored.iter().all(|&u| u == 0 || u == 4) && unscored.contains(&4), "{unscored:?}");
    // The failing plugin is the only one: its group has no reward at all, so it is skipped and counted.
    for (m, u) in lines.iter().zip(&unscored) {
        assert_eq!(m["skipped_groups"].as_u64(), Some(u / 4), "{m}");
    }
}
