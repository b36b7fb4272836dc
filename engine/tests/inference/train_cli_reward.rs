//! `babelrl train` with `[reward_model_training]` and `babelrl eval --reward-model` end to end on the tiny
//! Llama reward-model fixture: a run killed in the middle and resumed equals an uninterrupted one bit for
//! bit; the trained model ranks held-out pairs of the same kind, per language; bad inputs are clear
//! errors.

use std::path::{Path, PathBuf};

use crate::common::{Scratch, repo_root, scratch};
use crate::train_cli::{babelrl, err, ok};

fn temp(name: &str) -> Scratch {
    scratch(&format!("rm-cli-{name}"))
}

/// Separable pairs: chosen answers use one set of words, rejected another; languages alternate.
fn write_pairs(path: &Path, n: usize, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let words = |rng: &mut rand_chacha::ChaCha8Rng, set: &[&str]| -> String {
        (0..rng.random_range(2..5)).map(|_| format!(" {}", set[rng.random_range(0..set.len())])).collect()
    };
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let prompt = ["hello", "hi", "the quick", "theory of"][rng.random_range(0..4)];
            let chosen = words(&mut rng, &["the", "thing", "in", "rain"]);
            let rejected = words(&mut rng, &["123", "!", "fox", "dog"]);
            let lang = if i % 2 == 0 { "en" } else { "bo" };
            serde_json::json!({"prompt": prompt, "chosen": chosen, "rejected": rejected, "language": lang})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn write_run(dir: &Path, name: &str, steps: u64) -> PathBuf {
    let text = format!(
        "[model]\npath = {model:?}\n\n[lora]\nr = 4\nalpha = 8.0\nseed = 3\n\n[optimizer]\nlearning_rate = 1e-2\n\
         weight_decay = 0.01\n\n[schedule]\nlr_scheduler_type = \"cosine\"\nwarmup_steps = 1\n\n\
         [reward_model_training]\ndata = \"train.jsonl\"\nper_device_train_batch_size = 4\n\
         gradient_accumulation_steps = 2\nmax_steps = {steps}\ncenter_rewards_coefficient = 0.01\n\n\
         [output]\ndir = \"out-{name}\"\nsave_steps = 1\nsave_total_limit = 2\n",
        model = repo_root().join("tests/fixtures/tiny-rm-llama").to_str().unwrap(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
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

#[test]
fn a_reward_model_run_resumes_bit_for_bit_and_ranks_held_out_pairs_per_language() {
    let dir = temp("run");
    write_pairs(&dir.join("train.jsonl"), 32, 1);
    write_pairs(&dir.join("heldout.jsonl"), 16, 2);
    let steps = 16;
    let full = write_run(&dir, "full", steps);
    ok(&babelrl(&["train", full.to_str().unwrap()], &[]));
    let killed = write_run(&dir, "killed", steps);
    let out = babelrl(&["train", killed.to_str().unwrap()], &[("BABELRL_TEST_KILL_AT_STEP", "7")]);
    assert!(!out.status.success(), "the kill hook did not stop the run");
    ok(&babelrl(&["train", killed.to_str().unwrap(), "--resume"], &[]));
    let (a, b) = (dir.join("out-full"), dir.join("out-killed"));
    assert_eq!(metrics(&a), metrics(&b), "metrics of the resumed run differ");
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        let read = |d: &Path| std::fs::read(d.join("reward-model").join(f)).unwrap();
        assert!(read(&a) == read(&b), "reward-model/{f} differs after the resume");
    }
    let m = metrics(&a);
    assert_eq!(m.len() as u64, steps);
    assert_eq!(m[0]["stage"], "reward_model_training");
    for k in ["loss", "accuracy", "margin", "grad_norm"] {
        assert!(m[0][k].is_number(), "metrics line without {k}: {}", m[0]);
    }
    assert!(m[steps as usize - 1]["loss"].as_f64() < m[0]["loss"].as_f64(), "{m:?}");
    // Held-out pairs of the same kind, per language.
    let json = dir.join("eval.json");
    let rm = a.join("reward-model");
    let data = dir.join("heldout.jsonl");
    let table = ok(&babelrl(
        &[
            "eval",
            "--reward-model",
            rm.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(table.contains("accuracy") && table.contains("bo") && table.contains("all"), "{table}");
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rep["overall"]["pairs"], 16);
    assert_eq!(rep["per_language"]["en"]["pairs"], 8);
    assert_eq!(rep["per_language"]["bo"]["pairs"], 8);
    let acc = rep["overall"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.9, "held-out pairwise accuracy {acc}: {}", rep["overall"]);
    let q = &rep["overall"]["margin"];
    assert!(q["q05"].as_f64() <= q["median"].as_f64() && q["median"].as_f64() <= q["q95"].as_f64());
}

#[test]
fn reward_model_bad_inputs_are_clear_errors() {
    let dir = temp("bad");
    std::fs::write(dir.join("train.jsonl"), "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n{\"prompt\": \"a\", \"rejected\": \" c\"}\n").unwrap();
    let run = write_run(&dir, "bad", 2);
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("train.jsonl") && e.contains("line 2") && e.contains("no `chosen`"), "{e}");
    std::fs::write(
        dir.join("train.jsonl"),
        "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" b\"}\n",
    )
    .unwrap();
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("line 1") && e.contains("the same"), "{e}");
    // [reward_model_training] with [sft]: one job per run file.
    let text = std::fs::read_to_string(&run).unwrap() + "\n[sft]\ndata = \"x.jsonl\"\nmax_steps = 1\n";
    std::fs::write(&run, text).unwrap();
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("[reward_model_training]") && e.contains("remove [sft]"), "{e}");
    // An adapter without a score head is not a reward model.
    std::fs::write(dir.join("p.jsonl"), "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n")
        .unwrap();
    let lm_adapter = repo_root().join("tests/fixtures/tiny-llama/lora");
    let p = dir.join("p.jsonl");
    let e = err(&babelrl(
        &["eval", "--reward-model", lm_adapter.to_str().unwrap(), "--data", p.to_str().unwrap()],
        &[],
    ));
    assert!(e.contains("SEQ_CLS") && e.contains("adapter_config.json"), "{e}");
}
