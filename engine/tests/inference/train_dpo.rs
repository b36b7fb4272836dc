//! DPO: the loss, TRL's metrics and every LoRA gradient of one micro-batch against torch + PEFT on the tiny
//! Qwen2 (tests/fixtures/tiny-qwen2/lora/dpo-expected.safetensors, scripts/fixtures_dpo.py); DPO on the tiny
//! Llama raises the chosen-vs-rejected margin of its pairs; `babelrl train` with `[dpo]`: TRL's metric names
//! in metrics.jsonl, a killed run resumed equals the uninterrupted one bit for bit, on-policy pairs ranked by
//! a reward model, and bad inputs as clear errors.
//!
//! Tolerance of the fixture check: as tests/inference/train_lora.rs (f16-exact weights, f32 on both sides,
//! only the summation order differs): |got − want| ≤ 1e-4 · max|want| + 1e-3 · |want|.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

use crate::common::{Scratch, assert_close_by, gpu, repo_root, scratch};
use crate::decoder_tiny::{floats, ids};
use crate::train_cli::{babelrl, err, ok, tiny_model};

use babelrl::lora::{Adapter, LoraConfig, Target, peft_tensor_name};
use babelrl::model::load_language_model;
use babelrl::train::dpo::{DpoLossConfig, DpoOptions, DpoPair, DpoTrainer, pair_batch, pair_pass};
use babelrl::train::{AdamWConfig, LoraGrads, Schedule, SchedulerType, TrainSequence};

fn close(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close_by(what, got, want, |i| 1e-4 * scale + 1e-3 * want[i].abs());
}

#[test]
fn dpo_loss_metrics_and_gradients_match_trl_on_tiny_qwen2() {
    let root = repo_root().join("tests/fixtures/tiny-qwen2");
    let lm = load_language_model(gpu(), &root).unwrap();
    let dec = &lm.decoder;
    let adapter = Adapter::load_peft(gpu(), &root.join("lora"), dec.config()).unwrap();
    let bytes = std::fs::read(root.join("lora/dpo-expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (all, lengths, prompts) = (ids(&st, "input_ids"), ids(&st, "lengths"), ids(&st, "prompt_lengths"));
    let mut at = 0;
    let seqs: Vec<TrainSequence> = lengths
        .iter()
        .zip(&prompts)
        .map(|(&n, &p)| {
            let s = TrainSequence { tokens: all[at..at + n as usize].to_vec(), prompt_len: p as usize };
            at += n as usize;
            s
        })
        .collect();
    let p = seqs.len() / 2;
    let pairs: Vec<(TrainSequence, TrainSequence)> =
        (0..p).map(|i| (seqs[i].clone(), seqs[p + i].clone())).collect();
    let batch = pair_batch(&pairs, dec).unwrap();
    let grads = LoraGrads::new(&gpu(), &adapter).unwrap();
    let g = gpu();
    let mut z = g.batch();
    grads.zero(&mut z);
    z.submit().unwrap();
    let config = DpoLossConfig { beta: f64::from(floats(&st, "beta")[0]), ..Default::default() };
    let mut buffers = None;
    let pass = pair_pass(dec, &adapter, &grads, &mut buffers, &batch, None, &config, false).unwrap();
    close("loss", &[pass.loss.loss as f32], &floats(&st, "loss"));
    let want = floats(&st, "logps");
    let got: Vec<f32> =
        [&pass.reference[0], &pass.reference[1]].iter().flat_map(|v| v.iter().map(|&x| x as f32)).collect();
    close("reference logps", &got, &want[2 * p..]);
    let m = pass.loss.metrics;
    close(
        "rewards/chosen, rejected, accuracies, margins",
        &[m.rewards_chosen, m.rewards_rejected, m.rewards_accuracies, m.rewards_margins].map(|v| v as f32),
        &floats(&st, "metrics"),
    );
    close(
        "logps/chosen, rejected",
        &[m.logps_chosen as f32, m.logps_rejected as f32],
        &[want[..p].iter().sum::<f32>() / p as f32, want[p..2 * p].iter().sum::<f32>() / p as f32],
    );
    let mut count = 0;
    for layer in 0..adapter.layers() {
        for &target in &adapter.config().targets {
            let g = grads.pair(layer, target).unwrap();
            for (ab, t) in [('A', &g.da), ('B', &g.db)] {
                let name = peft_tensor_name(layer, target, ab);
                close(
                    &format!("grad.{name}"),
                    &gpu().read_f32(t).unwrap(),
                    &floats(&st, &format!("grad.{name}")),
                );
                count += 1;
            }
        }
    }
    assert_eq!(count, 28);
    // The same pass given the reference log-probs it computed: the same loss exactly.
    let again =
        pair_pass(dec, &adapter, &grads, &mut buffers, &batch, Some(pass.reference.clone()), &config, false);
    assert_eq!(again.unwrap().loss, pass.loss);
}

/// Pairs of random ids on the tiny Llama: a shared prompt, two different completions.
fn random_pairs(n: usize, vocab: u32) -> Vec<DpoPair> {
    let mut x = 12345u64;
    let mut next = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        3 + ((x >> 33) as u32 % (vocab - 3))
    };
    (0..n)
        .map(|i| DpoPair {
            prompt: (0..3 + i % 3).map(|_| next()).collect(),
            chosen: (0..2 + i % 2).map(|_| next()).collect(),
            rejected: (0..3).map(|_| next()).collect(),
        })
        .collect()
}

#[test]
fn dpo_raises_the_chosen_vs_rejected_margin() {
    let lm = load_language_model(gpu(), &tiny_model()).unwrap();
    let dec = &lm.decoder;
    let adapter =
        Adapter::init(gpu(), LoraConfig::new(4, 8.0, &Target::ALL).unwrap(), dec.config(), 5).unwrap();
    let pairs = random_pairs(4, dec.config().vocab as u32);
    let options =
        DpoOptions { batch_size: 2, max_length: Some(64), shuffle: true, seed: 3, ..Default::default() };
    let options =
        DpoOptions { loss: DpoLossConfig { gradient_accumulation_steps: 2, ..options.loss }, ..options };
    let optim = AdamWConfig { learning_rate: 2e-2, ..Default::default() };
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, 30).unwrap();
    let mut t = DpoTrainer::new(dec, adapter, &pairs, optim, schedule, options.clone()).unwrap();
    let first = t.step().unwrap();
    // B = 0 at the start: the policy is the reference, z = 0, the loss is ln 2.
    assert!((first.loss - std::f64::consts::LN_2).abs() < 1e-6, "{first:?}");
    assert_eq!(first.dpo.rewards_margins, 0.0);
    let mut last = first;
    for _ in 0..14 {
        last = t.step().unwrap();
    }
    assert!(last.dpo.rewards_margins > 0.5, "the margin did not grow: {last:?}");
    assert_eq!(last.dpo.rewards_accuracies, 1.0, "{last:?}");
    assert!(last.loss < 0.5 * first.loss, "{last:?}");
    // Precomputed reference log-probs (once, up front) train exactly the same run.
    let adapter =
        Adapter::init(gpu(), LoraConfig::new(4, 8.0, &Target::ALL).unwrap(), dec.config(), 5).unwrap();
    let pre = DpoOptions { precompute_ref_log_probs: true, ..options };
    let mut t2 = DpoTrainer::new(dec, adapter, &pairs, optim, schedule, pre).unwrap();
    let mut last2 = t2.step().unwrap();
    for _ in 0..14 {
        last2 = t2.step().unwrap();
    }
    assert_eq!((last2.loss, last2.dpo), (last.loss, last.dpo));
}

#[test]
fn dpo_trainer_refuses_bad_pairs() {
    let lm = load_language_model(gpu(), &tiny_model()).unwrap();
    let dec = &lm.decoder;
    let adapter =
        || Adapter::init(gpu(), LoraConfig::new(2, 4.0, &Target::ALL).unwrap(), dec.config(), 1).unwrap();
    let optim = AdamWConfig::default();
    let schedule = Schedule::new(SchedulerType::Constant, 0.0, 1).unwrap();
    let mut pairs = random_pairs(2, dec.config().vocab as u32);
    pairs[1].rejected = pairs[1].chosen.clone();
    let e = DpoTrainer::new(dec, adapter(), &pairs, optim, schedule, DpoOptions::default()).err().unwrap();
    assert!(e.to_string().contains("dpo pair 1: chosen and rejected are the same"), "{e}");
    // max_length cuts both sides to the same tokens: named as such.
    let mut pairs = random_pairs(1, dec.config().vocab as u32);
    pairs[0].rejected = [pairs[0].chosen.as_slice(), &[7]].concat();
    let cut =
        DpoOptions { max_length: Some(pairs[0].prompt.len() + pairs[0].chosen.len()), ..Default::default() };
    let e = DpoTrainer::new(dec, adapter(), &pairs, optim, schedule, cut).err().unwrap().to_string();
    assert!(e.contains("after max_length truncation"), "{e}");
    // Every prompt fills max_length: nothing to train on.
    let short = DpoOptions { max_length: Some(2), ..Default::default() };
    let e = DpoTrainer::new(dec, adapter(), &pairs, optim, schedule, short).err().unwrap().to_string();
    assert!(e.contains("no pairs to train on"), "{e}");
}

fn temp(name: &str) -> Scratch {
    scratch(&format!("dpo-{name}"))
}

/// Preference pairs in TRL's text format: the right colour is chosen.
fn write_pairs(dir: &Path) {
    let rows = [
        ("sky is", " blue.", " green."),
        ("grass is", " green.", " red."),
        ("snow is", " white.", " black."),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|(p, c, r)| serde_json::json!({"prompt": p, "chosen": c, "rejected": r}).to_string())
        .collect();
    std::fs::write(dir.join("pairs.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn write_run(dir: &Path, name: &str, dpo: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[model]\npath = {model:?}\n\n[lora]\nr = 4\nalpha = 8.0\ndropout = 0.1\nseed = 3\n\n\
         [optimizer]\nlearning_rate = 1e-2\n\n\
         [schedule]\nlr_scheduler_type = \"cosine\"\nwarmup_steps = 1\n\n\
         [dpo]\n{dpo}\n\n{extra}\n[output]\ndir = \"out-{name}\"\nsave_steps = 1\nsave_total_limit = 2\n",
        model = tiny_model().to_str().unwrap(),
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
            for k in ["seconds", "reference_seconds"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const DPO: &str = "data = \"pairs.jsonl\"\nmax_steps = 5\nper_device_train_batch_size = 2\n\
                   gradient_accumulation_steps = 2\nbeta = 0.5\nseed = 4";

#[test]
fn train_dpo_logs_trl_metrics_and_resumes_bit_for_bit() {
    let dir = temp("resume");
    write_pairs(&dir);
    let full = write_run(&dir, "full", DPO, "");
    let cut = write_run(&dir, "cut", DPO, "");
    let text = ok(&babelrl(&["train", full.to_str().unwrap()], &[]));
    assert!(text.contains("trained to step 5") && text.contains("rewards/margins"), "{text}");
    let lines = metrics(&dir.join("out-full"));
    assert_eq!(lines.len(), 5);
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
    ] {
        assert!(lines.iter().all(|l| l[key].is_f64()), "{key} missing: {}", lines[0]);
    }
    assert_eq!(lines[0]["stage"], "dpo");
    assert!(lines[4]["rewards/margins"].as_f64().unwrap() > 0.0, "{}", lines[4]);
    let killed = babelrl(&["train", cut.to_str().unwrap()], &[("BABELRL_TEST_KILL_AT_STEP", "3")]);
    assert!(!killed.status.success(), "the run was not stopped");
    let out_cut = dir.join("out-cut");
    assert!(out_cut.join("checkpoint-2").is_dir() && !out_cut.join("checkpoint-3").exists());
    ok(&babelrl(&["train", cut.to_str().unwrap(), "--resume"], &[]));
    for file in ["adapter/adapter_model.safetensors", "checkpoint-5/adapter_model.safetensors"] {
        assert!(read(&dir.join("out-full").join(file)) == read(&out_cut.join(file)), "{file} differs");
    }
    assert_eq!(metrics(&dir.join("out-full")), metrics(&out_cut), "metrics differ after the resume");
}

#[test]
fn train_dpo_on_policy_pairs_ranked_by_a_reward_model() {
    let dir = temp("on-policy");
    let prompts: Vec<String> =
        ["sky is", "grass is"].iter().map(|p| serde_json::json!({"prompt": p}).to_string()).collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts.join("\n") + "\n").unwrap();
    let rm = repo_root().join("tests/fixtures/tiny-rm-llama");
    let dpo = "data = \"prompts.jsonl\"\npairs = \"on_policy\"\nmax_steps = 2\n\
               per_device_train_batch_size = 2\nnum_generations = 4\nmax_completion_length = 6\n\
               temperature = 1.0\nseed = 1";
    let run = write_run(&dir, "op", dpo, &format!("[reward_model]\npath = {:?}\n", rm.to_str().unwrap()));
    ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    let lines = metrics(&dir.join("out-op"));
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert!(l["reward_mean"].is_f64() && l["pairs"].as_u64().unwrap() >= 1, "{l}");
        assert!(l["rewards/margins"].is_f64(), "{l}");
    }
    // The same run again samples the same pairs: the same metrics.
    let again = write_run(&dir, "op2", dpo, &format!("[reward_model]\npath = {:?}\n", rm.to_str().unwrap()));
    ok(&babelrl(&["train", again.to_str().unwrap()], &[]));
    assert_eq!(metrics(&dir.join("out-op2")), lines);
}

#[test]
fn train_dpo_on_policy_pairs_ranked_by_reward_plugins() {
    let Some(plugin) = crate::train_cli_grpo::length_guard() else { return };
    let dir = temp("on-policy-plugins");
    std::fs::copy(plugin, dir.join("length_guard.wasm")).unwrap();
    let prompts: Vec<String> = [("sky is", "blue sky"), ("grass is", "green")]
        .iter()
        .map(|(p, r)| serde_json::json!({"prompt": p, "reference": r}).to_string())
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts.join("\n") + "\n").unwrap();
    let dpo = "data = \"prompts.jsonl\"\npairs = \"on_policy\"\nmax_steps = 2\n\
               per_device_train_batch_size = 2\nnum_generations = 4\nmax_completion_length = 8\nseed = 2";
    let reward = "[[reward]]\nname = \"length\"\npath = \"length_guard.wasm\"\n";
    let run = write_run(&dir, "plugins", dpo, reward);
    ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    let lines = metrics(&dir.join("out-plugins"));
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let r = l["reward_mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r) && l["pairs"].as_u64().unwrap() >= 1, "{l}");
    }
}

#[test]
fn train_dpo_bad_inputs_are_clear_errors() {
    let dir = temp("bad");
    write_pairs(&dir);
    let e = err(&babelrl(
        &[
            "train",
            write_run(&dir, "op", "data = \"p.jsonl\"\npairs = \"on_policy\"\nmax_steps = 1", "")
                .to_str()
                .unwrap(),
        ],
        &[],
    ));
    assert!(e.contains("[dpo] pairs = \"on_policy\" needs a judge"), "{e}");
    std::fs::write(dir.join("missing.jsonl"), "{\"prompt\": \"a\", \"chosen\": \"b\"}\n").unwrap();
    let run = write_run(&dir, "missing", "data = \"missing.jsonl\"\nmax_steps = 1", "");
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("missing.jsonl") && e.contains("line 1") && e.contains("rejected"), "{e}");
    std::fs::write(dir.join("same.jsonl"), "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"b\"}\n")
        .unwrap();
    let run = write_run(&dir, "same", "data = \"same.jsonl\"\nmax_steps = 1", "");
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("same.jsonl") && e.contains("line 1"), "{e}");
    let run = write_run(&dir, "ls", "data = \"pairs.jsonl\"\nmax_steps = 1\nlabel_smoothing = 0.1", "");
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("label_smoothing") && e.contains("robust"), "{e}");
    let run = write_run(
        &dir,
        "both",
        "data = \"pairs.jsonl\"\nmax_steps = 1",
        "[grpo]\ndata = \"p.jsonl\"\nmax_steps = 1\n",
    );
    let e = err(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(e.contains("[grpo] and [dpo] are both set"), "{e}");
    assert!(!dir.join("out-same").exists() && !dir.join("out-ls").exists(), "a failed run wrote output");
}

#[test]
fn sft_then_dpo_trains_two_stages_from_the_sft_adapter() {
    let dir = temp("two-stage");
    write_pairs(&dir);
    let sft: Vec<String> = [("sky is", " blue."), ("grass is", " green.")]
        .iter()
        .map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string())
        .collect();
    std::fs::write(dir.join("sft.jsonl"), sft.join("\n") + "\n").unwrap();
    let dpo = "data = \"pairs.jsonl\"\nmax_steps = 2\nper_device_train_batch_size = 2\nlearning_rate = 5e-3";
    let run = write_run(&dir, "two", dpo, "[sft]\ndata = \"sft.jsonl\"\nmax_steps = 2\nbatch_size = 2\n");
    let text = ok(&babelrl(&["train", run.to_str().unwrap()], &[]));
    assert!(text.contains("[dpo] trained to step 2"), "{text}");
    let out = dir.join("out-two");
    for p in ["sft/checkpoint-2", "sft-adapter", "dpo/checkpoint-2", "adapter"] {
        assert!(out.join(p).is_dir(), "{p} missing");
    }
    let stages: Vec<String> =
        metrics(&out).iter().map(|l| format!("{}:{}", l["stage"].as_str().unwrap(), l["step"])).collect();
    assert_eq!(stages, ["sft:1", "sft:2", "dpo:1", "dpo:2"]);
    // DPO starts from the SFT adapter: its first step's policy is not the base model, and its reference
    // (adapter off) is, so the first step's log-ratios are not all zero.
    let first_dpo = &metrics(&out)[2];
    assert!(first_dpo["rewards/chosen"].as_f64().unwrap() != 0.0, "{first_dpo}");
}
