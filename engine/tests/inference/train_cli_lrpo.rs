//! `babelrl train RUN.toml` with a `[grpo]` job and a `[router]` (LRPO) on the tiny Llama, with the
//! language-consistency reward and the router plugins (built by plugins/build.sh): the router's share
//! moves to the language whose rollouts earn more, a run killed and resumed equals the uninterrupted one
//! bit for bit (router state included), a router state that does not load is a clear error at resume,
//! and data the router cannot use is a clear error before any rollout.

use crate::common::{Scratch, scratch};
use crate::train_cli::{babelrl, err, ok, tiny_model};
use crate::train_cli_grpo::{built_plugins as plugins, metrics, read};
use std::path::{Path, PathBuf};

/// A fresh folder with copies of `plugins` in plugins/ and French text prompts with `language` and
/// `id` columns (a row's columns are `extra` merged in, where given).
fn setup(name: &str, plugins: &[PathBuf], extra: serde_json::Value) -> Scratch {
    let dir = scratch(&format!("lrpo-{name}"));
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    for p in plugins {
        std::fs::copy(p, dir.join("plugins").join(p.file_name().unwrap())).unwrap();
    }
    let lines: Vec<String> = ["le ciel est", "l'herbe est", "la neige est", "le charbon est"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut row = serde_json::json!({"prompt": p, "language": "fr", "id": format!("q{i}")});
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    row.as_object_mut().unwrap().remove(k);
                } else {
                    row[k] = v.clone();
                }
            }
            row.to_string()
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    dir
}

/// The language-consistency reward: the share of a completion's letters in its target language's script
/// (the tiny model writes mostly Latin letters, so `en` earns more than `zh` or `ru`).
const REWARD: &str = "[[reward]]\nname = \"script\"\npath = \"plugins/language_consistency.wasm\"\n\
                      config = { mode = \"reward\" }\n";

/// A run file `name.toml` in `dir` with `steps` steps and `router` as its [router] table's body.
fn write_run(dir: &Path, name: &str, steps: u64, router: &str) -> PathBuf {
    let text = format!(
        "[model]\npath = {model:?}\n\n[lora]\nr = 4\nalpha = 8.0\nseed = 3\n\n[optimizer]\nlearning_rate = 1e-2\n\n\
         [grpo]\ndata = \"prompts.jsonl\"\nnum_generations = 4\nprompts_per_step = 2\nmax_steps = {steps}\n\
         max_completion_length = 8\ntemperature = 0.9\nseed = 11\n\n{REWARD}\n[router]\n{router}\n\n\
         [output]\ndir = \"out-{name}\"\nsave_steps = 1\nsave_total_limit = 2\n",
        model = tiny_model().to_str().unwrap(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The share of the router's choices that went to `language` at each step.
fn shares(lines: &[serde_json::Value], language: &str) -> Vec<f64> {
    lines.iter().map(|m| m["router_shares"][language].as_f64().unwrap()).collect()
}

#[test]
fn the_routers_share_moves_to_the_language_whose_rollouts_earn_more() {
    let Some(p) = plugins(&["language_consistency", "thompson"]) else { return };
    let dir = setup("learn", &p, serde_json::json!({}));
    let router = "name = \"ts\"\npath = \"plugins/thompson.wasm\"\nlanguages = [\"en\", \"zh\", \"ru\"]\n\
                  config = { seed = 5 }";
    let run = write_run(&dir, "learn", 10, router);
    let text = ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(text.contains("trained to step 10 of 10"), "{text}");
    let lines = metrics(&dir.join("out-learn"));
    for m in &lines {
        let total: f64 = ["en", "zh", "ru"].iter().map(|l| m["router_shares"][l].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-12, "shares sum to {total}: {m}");
        // The kept rollouts are in the question's language, French: rewarded for its Latin letters too.
        assert!(m["reward_by_language"]["fr"].as_f64().is_some(), "{m}");
    }
    // Before any feedback the router has no reason to prefer en; after it, it does.
    let en = shares(&lines, "en");
    let late = (en[7] + en[8] + en[9]) / 3.0;
    eprintln!("share of en per step: {en:?}");
    assert!(en[0] <= 0.5 && late >= 0.8, "the share of en did not rise: {en:?}");
    // What it learned from: en's rollouts earned more than zh's and ru's.
    let mean = |l: &str| {
        let v: Vec<f64> = lines.iter().filter_map(|m| m["reward_by_language"][l].as_f64()).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(mean("en") > mean("zh") + 0.2 && mean("en") > mean("ru") + 0.2, "{lines:?}");
}

const LRPO: &str = "name = \"lrpo\"\npath = \"plugins/lrpo_softmax.wasm\"\nlanguages = [\"en\", \"fr\", \"zh\"]\n\
                    keep_original = 1\nconfig = { seed = 9 }";

#[test]
fn an_lrpo_run_killed_and_resumed_equals_the_uninterrupted_one_router_state_included() {
    let Some(p) = plugins(&["language_consistency", "lrpo_softmax"]) else { return };
    let dir = setup("resume", &p, serde_json::json!({}));
    // Six steps: the router's Q update at step 5 uses rewards from before and after the kill.
    let full = write_run(&dir, "full", 6, LRPO);
    let cut = write_run(&dir, "cut", 6, LRPO);
    ok(&babelrl(&["train", full.to_str().unwrap()], &[]));
    let killed = babelrl(&["train", cut.to_str().unwrap()], &[("BABELRL_TEST_KILL_AT_STEP", "3")]);
    assert!(!killed.status.success(), "the run was not stopped");
    let (out_full, out_cut) = (dir.join("out-full"), dir.join("out-cut"));
    assert!(
        out_cut.join("checkpoint-2/router_state.bin").is_file() && !out_cut.join("checkpoint-3").exists()
    );
    let text = ok(&babelrl(&["train", cut.to_str().unwrap(), "--resume"], &[]));
    assert!(text.contains("trained to step 6"), "{text}");
    for file in ["adapter/adapter_model.safetensors", "checkpoint-6/router_state.bin"] {
        assert!(read(&out_full.join(file)) == read(&out_cut.join(file)), "{file} differs after the resume");
    }
    let optimizer = |out: &Path| {
        let path = out.join("checkpoint-6/optimizer.safetensors");
        babelrl::train::AdamWState::from_safetensors(&read(&path), &path).unwrap()
    };
    assert!(optimizer(&out_full) == optimizer(&out_cut), "the optimizer's moments differ after the resume");
    let (a, b) = (metrics(&out_full), metrics(&out_cut));
    assert_eq!(a, b, "metrics differ after the resume");
    // Every step routed three of four rollouts per question: shares in sixths.
    for m in &a {
        for l in ["en", "fr", "zh"] {
            let share = m["router_shares"][l].as_f64().unwrap();
            assert!((share * 6.0 - (share * 6.0).round()).abs() < 1e-9, "{m}");
        }
    }
}

#[test]
fn a_router_state_that_does_not_load_is_a_clear_error_at_resume() {
    let Some(p) = plugins(&["language_consistency", "lrpo_softmax"]) else { return };
    let dir = setup("state", &p, serde_json::json!({}));
    let run = write_run(&dir, "state", 2, LRPO);
    ok(&babelrl(&["train", run.to_str().unwrap(), "--stop-at", "1"], &[]));
    let state = dir.join("out-state/checkpoint-1/router_state.bin");
    let good = read(&state);
    std::fs::write(&state, b"not a router state").unwrap();
    let e = err(&babelrl(&["train", run.to_str().unwrap(), "--resume"], &[]));
    assert!(
        e.contains("checkpoint-1/router_state.bin") && e.contains("`lrpo`") && e.contains("refused"),
        "{e}"
    );
    // A router with other languages refuses the state too.
    std::fs::write(&state, &good).unwrap();
    let other = write_run(&dir, "state", 2, &LRPO.replace("\"zh\"", "\"ru\""));
    let e = err(&babelrl(&["train", other.to_str().unwrap(), "--resume"], &[]));
    assert!(e.contains("router_state.bin") && e.contains("refused"), "{e}");
    // No state at all, and a state without [router] in the run file.
    let run = write_run(&dir, "state", 2, LRPO);
    std::fs::remove_file(&state).unwrap();
    let e = err(&babelrl(&["train", run.to_str().unwrap(), "--resume"], &[]));
    assert!(e.contains("checkpoint-1") && e.contains("no router state"), "{e}");
    std::fs::write(&state, &good).unwrap();
    let text = std::fs::read_to_string(&run).unwrap();
    let (before, after) = text.split_once("[router]").unwrap();
    let plain = dir.join("state-plain.toml");
    std::fs::write(&plain, format!("{before}{}", &after[after.find("[output]").unwrap()..])).unwrap();
    let e = err(&babelrl(
        &["train", plain.to_str().unwrap(), "--resume", dir.join("out-state/checkpoint-1").to_str().unwrap()],
        &[],
    ));
    assert!(e.contains("holds a router state") && e.contains("no [router]"), "{e}");
    // The good state still resumes.
    let text = ok(&babelrl(&["train", run.to_str().unwrap(), "--resume"], &[]));
    assert!(text.contains("trained to step 2"), "{text}");
}

#[test]
fn data_and_languages_the_router_cannot_use_are_clear_errors_before_any_rollout() {
    let Some(p) = plugins(&["language_consistency", "lrpo_softmax"]) else { return };
    let cases = [
        ("nolang", serde_json::json!({"language": null}), LRPO.to_string(), "line 1: no `language`"),
        ("noid", serde_json::json!({"id": null}), LRPO.to_string(), "line 1: no `id`"),
        // The reward plugin does not know `xx`: found by trying it before training.
        (
            "unknown",
            serde_json::json!({}),
            LRPO.replace("\"zh\"", "\"xx\"") + "\n[router.language_names]\nxx = \"Xish\"",
            "unknown language code `xx`",
        ),
    ];
    for (name, extra, router, want) in cases {
        let dir = setup(name, &p, extra);
        let run = write_run(&dir, name, 2, &router);
        let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
        assert!(e.contains(want), "{name}: {e}");
        assert!(!dir.join(format!("out-{name}")).exists(), "{name}: a refused run created its output");
    }
    // A prompt that fits as it is but not with the template.
    let dir = setup("long", &p, serde_json::json!({}));
    let run = write_run(&dir, "long", 2, LRPO);
    let text =
        std::fs::read_to_string(&run).unwrap().replace("seed = 11\n", "seed = 11\nmax_prompt_length = 14\n");
    std::fs::write(&run, text).unwrap();
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(
        e.contains("prompts.jsonl") && e.contains("line 1: asked in en through [router] template"),
        "{e}"
    );
    assert!(!dir.join("out-long").exists());
}
