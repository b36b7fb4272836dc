//! `babelrl train RUN.toml` end to end on the tiny Llama (GGUF with its tokenizer): a run killed in the
//! middle and resumed equals an uninterrupted run bit for bit; SFT learns a small task and the trained
//! adapter changes greedy output the intended way; bad inputs are clear errors that change nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{Scratch, repo_root, scratch};

pub(crate) fn tiny_model() -> PathBuf {
    repo_root().join("tests/fixtures/tiny-llama-gguf/tiny-llama.gguf")
}

pub(crate) fn babelrl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_babelrl"));
    cmd.args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the babelrl binary")
}

pub(crate) fn ok(out: &Output) -> String {
    assert!(out.status.success(), "babelrl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn err(out: &Output) -> String {
    assert!(!out.status.success(), "babelrl succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp(name: &str) -> Scratch {
    scratch(&format!("train-{name}"))
}

/// Prompt/completion pairs: each prompt names a colour, the completion is a fixed answer per colour.
const PAIRS: [(&str, &str); 4] =
    [("sky is", " blue."), ("grass is", " green."), ("snow is", " white."), ("coal is", " black.")];

fn write_data(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let lines: Vec<String> =
        PAIRS.iter().map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A run file in `dir` training the tiny model; `extra` is appended to the [sft] section's keys.
fn write_run(dir: &Path, name: &str, lora: &str, sft: &str) -> PathBuf {
    write_run_at(dir, name, lora, sft, 1e-2)
}

fn write_run_at(dir: &Path, name: &str, lora: &str, sft: &str, lr: f64) -> PathBuf {
    let text = format!(
        "[model]\npath = {model:?}\n\n[lora]\n{lora}\n\n[optimizer]\nlearning_rate = {lr:e}\nweight_decay = 0.01\n\n\
         [schedule]\nlr_scheduler_type = \"cosine\"\nwarmup_steps = 1\n\n\
         [sft]\ndata = \"data.jsonl\"\nbatch_size = 2\ngradient_accumulation_steps = 2\n{sft}\n\n\
         [output]\ndir = \"out-{name}\"\nsave_steps = 1\nsave_total_limit = 2\n",
        model = tiny_model().to_str().unwrap(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

const LORA: &str = "r = 4\nalpha = 8.0\ndropout = 0.1\nseed = 3";

/// Metrics lines without the timing fields.
fn losses(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["seconds", "tokens_per_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn resume_after_a_kill_equals_the_uninterrupted_run_bit_for_bit() {
    let dir = temp("resume");
    write_data(&dir);
    let full = write_run(&dir, "full", LORA, "max_steps = 6");
    let cut = write_run(&dir, "cut", LORA, "max_steps = 6");
    ok(&babelrl(&["train", full.to_str().unwrap()], &[]));
    // Killed (abort, as a crash) right after step 4's update, before its checkpoint.
    let killed = babelrl(&["train", cut.to_str().unwrap()], &[("BABELRL_TEST_KILL_AT_STEP", "4")]);
    assert!(!killed.status.success(), "the run was not stopped");
    let out_cut = dir.join("out-cut");
    assert!(out_cut.join("checkpoint-3").is_dir() && !out_cut.join("checkpoint-4").exists());
    assert!(!out_cut.join("checkpoint-1").exists(), "save_total_limit = 2 keeps the newest two");
    // A fresh start over it is refused and changes nothing.
    let before = read(&out_cut.join("checkpoint-3/adapter_model.safetensors"));
    let e = err(&babelrl(&["train", cut.to_str().unwrap()], &[]));
    assert!(e.contains("already holds a run") && e.contains("--resume"), "{e}");
    assert_eq!(read(&out_cut.join("checkpoint-3/adapter_model.safetensors")), before);
    let text = ok(&babelrl(&["train", cut.to_str().unwrap(), "--resume"], &[]));
    assert!(text.contains("trained to step 6"), "{text}");
    let out_full = dir.join("out-full");
    for file in ["adapter/adapter_model.safetensors", "checkpoint-6/adapter_model.safetensors"] {
        assert!(read(&out_full.join(file)) == read(&out_cut.join(file)), "{file} differs after the resume");
    }
    // The optimizer file's metadata is a map written in no fixed order: compare what it holds.
    let optimizer = |out: &Path| {
        let path = out.join("checkpoint-6/optimizer.safetensors");
        babelrl::train::AdamWState::from_safetensors(&read(&path), &path).unwrap()
    };
    assert!(optimizer(&out_full) == optimizer(&out_cut), "the optimizer's moments differ after the resume");
    assert_eq!(losses(&out_full), losses(&out_cut), "metrics differ after the resume");
    assert_eq!(losses(&out_cut).len(), 6);
}

#[test]
fn sft_learns_a_small_task_and_the_adapter_changes_greedy_output() {
    let dir = temp("learn");
    write_data(&dir);
    let run = write_run_at(&dir, "learn", "r = 8\nalpha = 16.0", "max_steps = 60\nshuffle = true", 3e-2);
    ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    let metrics = losses(&dir.join("out-learn"));
    let (first, last) =
        (metrics[0]["loss"].as_f64().unwrap(), metrics.last().unwrap()["loss"].as_f64().unwrap());
    eprintln!("loss {first:.4} → {last:.4}");
    // From about ln(300) (uniform over the vocabulary) to a tenth of it. It cannot go to 0: the tiny
    // random model's tied embedding rows are small and its final norm fixes the hidden state's scale,
    // so its logits span little more than ±1.5 and even a token it always predicts keeps p ≈ 0.6
    // (measured: the loss settles at 0.536 after 300 steps, every greedy continuation right).
    assert!(first > 5.0 && last < 0.6, "loss {first} → {last}");
    let adapter = dir.join("out-learn/adapter");
    let model = tiny_model();
    for (prompt, completion) in PAIRS {
        let generate = |with: bool| {
            let mut args =
                vec!["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--max-tokens", "8"];
            if with {
                args.extend(["--adapter", adapter.to_str().unwrap()]);
            }
            let text = ok(&babelrl(&args, &[]));
            text.lines().next().unwrap_or_default().to_string()
        };
        let (base, tuned) = (generate(false), generate(true));
        assert!(tuned.starts_with(completion), "{prompt:?}: the trained adapter generates {tuned:?}");
        assert!(!base.starts_with(completion), "{prompt:?}: the base model already generates {base:?}");
    }
}

#[test]
fn bad_inputs_are_clear_errors_and_change_nothing() {
    let dir = temp("bad");
    let data = write_data(&dir);
    // An unknown key in the run file, named with the file.
    let run = write_run(&dir, "typo", LORA, "max_steps = 2\nlearning_rat = 1");
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("learning_rat") && e.contains("typo.toml"), "{e}");
    assert!(!dir.join("out-typo").exists(), "a refused run created its output folder");
    // Data: a line without a completion, a completion past max_length, an empty file.
    for (lines, max_length, want) in [
        (vec![r#"{"prompt": "sky is", "completion": " blue."}"#, r#"{"prompt": "sky is"}"#], 64, "2"),
        (
            vec![r#"{"prompt": "sky is", "completion": " blue blue blue blue blue blue blue blue."}"#],
            8,
            "max_length",
        ),
        (vec![], 64, "empty"),
    ] {
        std::fs::write(&data, lines.join("\n")).unwrap();
        let run = write_run(&dir, "data", LORA, &format!("max_steps = 2\nmax_length = {max_length}"));
        let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
        assert!(e.contains("data.jsonl") && e.contains(want), "{want}: {e}");
        assert!(!dir.join("out-data").exists());
    }
    write_data(&dir);
    // A checkpoint folder that is not one.
    let run = write_run(&dir, "ok", LORA, "max_steps = 2");
    let e = err(&babelrl(&["train", run.to_str().unwrap(), "--resume", dir.to_str().unwrap()], &[]));
    assert!(e.contains("not a babelrl checkpoint"), "{e}");
    // Resuming with an adapter of another rank, other modules, or another base model.
    ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    let out = dir.join("out-ok");
    let before = read(&out.join("checkpoint-2/adapter_model.safetensors"));
    let more = |lora: &str, model: Option<&Path>| {
        let run = write_run(&dir, "ok", lora, "max_steps = 4");
        if let Some(m) = model {
            let text = std::fs::read_to_string(&run)
                .unwrap()
                .replace(tiny_model().to_str().unwrap(), m.to_str().unwrap());
            std::fs::write(&run, text).unwrap();
        }
        err(&babelrl(&["train", run.to_str().unwrap(), "--resume"], &[]))
    };
    let e = more("r = 8\nalpha = 8.0\ndropout = 0.1\nseed = 3", None);
    assert!(e.contains("rank 4") && e.contains("rank 8"), "{e}");
    let e = more(&format!("{LORA}\ntarget_modules = [\"q_proj\", \"v_proj\"]"), None);
    assert!(e.contains("rank 4") && e.contains("Q"), "{e}");
    // Other weights of the same shapes: the tiny model with its last weight byte changed.
    let other = dir.join("tiny-llama.gguf");
    let mut bytes = read(&tiny_model());
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&other, bytes).unwrap();
    let e = more(LORA, Some(&other));
    assert!(e.contains("trained on") && e.contains("sha256"), "{e}");
    // A checkpoint whose optimizer state lacks a parameter (load_checkpoint accepts it; the optimizer
    // refuses it): the error names the checkpoint (it did not, found by fuzz_loaders::train).
    let opt = out.join("checkpoint-2/optimizer.safetensors");
    let saved = read(&opt);
    let mut state = babelrl::train::AdamWState::from_safetensors(&saved, &opt).unwrap();
    state.params.pop();
    std::fs::write(&opt, state.to_safetensors().unwrap()).unwrap();
    let e = more(LORA, None);
    assert!(e.contains("checkpoint-2") && e.contains("parameters"), "{e}");
    std::fs::write(&opt, saved).unwrap();
    // A trainer state counting more examples than any run sees: the count overflowed a step later.
    let path = out.join("checkpoint-2/trainer_state.json");
    let saved = read(&path);
    let mut state: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    state["examples_seen"] = u64::MAX.into();
    std::fs::write(&path, state.to_string()).unwrap();
    let e = more(LORA, None);
    assert!(e.contains("checkpoint-2") && e.contains("examples_seen"), "{e}");
    std::fs::write(&path, saved).unwrap();
    assert_eq!(
        read(&out.join("checkpoint-2/adapter_model.safetensors")),
        before,
        "a refused resume changed the checkpoint"
    );
}
