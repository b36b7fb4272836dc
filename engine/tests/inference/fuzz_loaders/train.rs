//! Fuzzing of the files `babelrl train` reads: run files (`RunFile::from_toml`, then what the command
//! derives from one: the `[sft]` section, the LoRA config, the schedule), SFT data (`load_sft_jsonl` on
//! lines of each of TRL's formats, with the tiny Llama GGUF's tokenizer and chat template) and
//! checkpoints (`load_checkpoint` on a real checkpoint's trainer_state.json and optimizer.safetensors,
//! then the optimizer state restored into an AdamW of the same adapter). Same property as the other
//! targets. Run: `cargo test -p babelrl --test inference fuzz_loaders::train::`.

use std::path::Path;

use babelrl::gpu::Gpu;
use babelrl::lora::{Adapter, LoraConfig, Target};
use babelrl::model::DecoderConfig;
use babelrl::model::gguf::Gguf;
use babelrl::text::Tokenizer;
use babelrl::train::{
    AdamW, AdamWConfig, AdamWState, CHECKPOINT_FORMAT, LoraGrads, ParamState, RunFile, Schedule,
    SchedulerType, TrainerState, load_checkpoint, load_sft_jsonl, save_checkpoint,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use super::{DICT, fixture, mutate_json, mutate_safetensors, read, write_dir};
use crate::common::{gpu, random, repo_root};
use crate::fuzz_support::{Case, Edit, JsonEdit, apply, apply_json, edit, fuzz, json_edits};

/// Tokens of run files, SFT data and checkpoints, besides the shared dictionary's.
const TRAIN_TOKENS: &[&str] = &[
    "[model]",
    "[lora]",
    "[optimizer]",
    "[schedule]",
    "[sft]",
    "[output]",
    "r",
    "alpha",
    "dropout",
    "use_rslora",
    "target_modules",
    "\"all-linear\"",
    "init_from",
    "seed",
    "learning_rate",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "\"cosine\"",
    "\"constant_with_warmup\"",
    "warmup_steps",
    "data",
    "max_steps",
    "epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "shuffle",
    "gradient_checkpointing",
    "dir",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "9223372036854775807",
    "-0.0",
    "1e-320",
    "0.9999999999999999",
    "messages",
    "role",
    "content",
    "\"assistant\"",
    "\"user\"",
    "\"system\"",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "format",
    "babelrl-checkpoint-1",
    "babelrl-adamw-1",
    "step",
    "params",
    ".exp_avg",
    ".exp_avg_sq",
    "__metadata__",
    "data_offsets",
    "dtype",
    "shape",
    "examples_seen",
    "metrics",
    "total_steps",
];

fn train_dict() -> Vec<&'static str> {
    DICT.iter().chain(TRAIN_TOKENS).copied().collect()
}

// ---------------------------------------------------------------------------------------------------
// Run files.
// ---------------------------------------------------------------------------------------------------

/// A run file setting every key of every section (but `[lora] init_from` and `[sft] max_steps`, which
/// exclude others: `ALTERNATIVES` sets those).
const EVERY_KEY: &str = r#"
[model]
path = "../models/tiny.gguf"

[lora]
r = 8
alpha = 16.0
dropout = 0.05
use_rslora = true
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
seed = 3

[optimizer]
learning_rate = 2e-4
adam_beta1 = 0.9
adam_beta2 = 0.999
adam_epsilon = 1e-8
weight_decay = 0.01
max_grad_norm = 1.0

[schedule]
lr_scheduler_type = "cosine"
warmup_steps = 0.1

[sft]
data = "data/train.jsonl"
epochs = 2.5
batch_size = 4
gradient_accumulation_steps = 2
max_length = 512
seed = 7
shuffle = false
gradient_checkpointing = true

[output]
dir = "runs/full"
save_steps = 10
save_total_limit = 3
logging_steps = 5
"#;

/// The keys `EVERY_KEY` cannot set beside the others.
const ALTERNATIVES: &str = r#"
[model]
path = "/models/folder"

[lora]
init_from = "adapters/start"

[schedule]
lr_scheduler_type = "constant_with_warmup"
warmup_steps = 30

[sft]
data = "/data/train.jsonl"
max_steps = 100
"#;

/// TOML text of a JSON tree (the run file after tree edits): top-level tables as `[section]`s, everything
/// else inline; numbers as serde_json writes them (a u64 above i64::MAX stays, and TOML refuses it), a
/// `null` table entry left out (so a key is dropped), a `null` elsewhere written as `{}`.
fn toml_text(v: &Value) -> String {
    fn key(k: &str) -> String {
        serde_json::to_string(k).unwrap()
    }
    fn inline(v: &Value) -> String {
        match v {
            Value::Null => "{}".into(),
            Value::Array(a) => format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", ")),
            Value::Object(o) => {
                let kv = o
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("{} = {}", key(k), inline(v)));
                format!("{{{}}}", kv.collect::<Vec<_>>().join(", "))
            }
            scalar => scalar.to_string(),
        }
    }
    let Value::Object(root) = v else { return inline(v) };
    let mut out = String::new();
    for (k, v) in root.iter().filter(|(_, v)| !v.is_object() && !v.is_null()) {
        out += &format!("{} = {}\n", key(k), inline(v));
    }
    for (k, v) in root {
        if let Value::Object(table) = v {
            out += &format!("\n[{}]\n", key(k));
            for (k, v) in table.iter().filter(|(_, v)| !v.is_null()) {
                out += &format!("{} = {}\n", key(k), inline(v));
            }
        }
    }
    out
}

/// A run file edited key by key (through its tree: values set to edge values, removed, copied), then
/// byte by byte.
fn mutate_toml(seed: &str, tree: Option<&[JsonEdit]>, text: &[Edit], dict: &[&str]) -> Vec<u8> {
    let mut out = match tree {
        Some(tree) => {
            let table: toml::Table = toml::from_str(seed).expect("seed run files parse");
            let mut v = serde_json::to_value(table).unwrap();
            apply_json(&mut v, tree);
            toml_text(&v).into_bytes()
        }
        None => seed.as_bytes().to_vec(),
    };
    apply(&mut out, text, &[], dict);
    out
}

#[test]
fn run_files() {
    let example = String::from_utf8(read(&repo_root().join("examples/sft/babelrl_facts.toml"))).unwrap();
    let seeds = [example.as_str(), EVERY_KEY, ALTERNATIVES];
    for s in seeds {
        RunFile::from_toml(s, Path::new("seed.toml")).unwrap_or_else(|e| panic!("a seed is refused: {e}"));
    }
    let dict = train_dict();
    let path = Path::new("fuzz/train.toml");
    let strategy =
        (any::<Index>(), proptest::option::of(json_edits(3)), proptest::collection::vec(edit(), 0..4));
    fuzz("run-file", 1000, strategy, |(which, tree, text)| {
        let bytes = mutate_toml(seeds[which.index(seeds.len())], tree.as_deref(), text, &dict);
        let text = String::from_utf8_lossy(&bytes);
        let mut case = Case::new("fuzz/train.toml");
        // What `babelrl train` derives from the run file before it loads the model.
        if let Some(rf) = case.step("RunFile::from_toml", || RunFile::from_toml(&text, path)) {
            case.step("RunFile::lora_config", || rf.lora_config());
            if let Some(sft) = case.step("RunFile::sft", || rf.sft()) {
                for examples in [1, 9, 1 << 20] {
                    let total = sft.total_steps(examples);
                    if let Some(s) = case.step("RunFile::schedule", || rf.schedule(total)) {
                        for step in [0, 1, total / 2, total.saturating_sub(1), total, u64::MAX] {
                            let m = s.multiplier(step);
                            if !(0.0..=1.0).contains(&m) {
                                case.problems.push(format!("{s:?}: multiplier {m} at step {step}"));
                            }
                        }
                    }
                }
            }
        }
        (case, bytes.len())
    });
}

// ---------------------------------------------------------------------------------------------------
// SFT data.
// ---------------------------------------------------------------------------------------------------

/// Lines of each of TRL's formats (text prompt-completion, conversational, conversational
/// prompt-completion), a blank line, a text completion that ends with EOS, non-ASCII text.
const SFT_SEED: &str = concat!(
    r#"{"prompt": "Translate to French: Good morning.", "completion": " Bonjour.", "language": "fr"}"#,
    "\n",
    r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, "#,
    r#"{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again?"}, "#,
    r#"{"role": "assistant", "content": "Hallo!"}]}"#,
    "\n\n",
    r#"{"prompt": [{"role": "user", "content": "2 + 2 ="}], "#,
    r#""completion": [{"role": "assistant", "content": "4"}]}"#,
    "\n",
    r#"{"prompt": "Écris « merci » en tibétain :", "completion": " ཐུགས་རྗེ་ཆེ།</s>", "id": 4}"#,
    "\n",
);

/// One line of `text` (picked by `which`) edited node by node, then the whole file byte by byte.
fn mutate_jsonl(
    text: &str,
    which: Index,
    tree: Option<&[JsonEdit]>,
    edits: &[Edit],
    dict: &[&str],
) -> Vec<u8> {
    let mut lines: Vec<String> = text.split('\n').map(String::from).collect();
    if let Some(tree) = tree {
        let i = which.index(lines.len());
        if let Ok(mut v) = serde_json::from_str::<Value>(&lines[i]) {
            apply_json(&mut v, tree);
            lines[i] = v.to_string();
        }
    }
    let mut out = lines.join("\n").into_bytes();
    apply(&mut out, edits, &[], dict);
    out
}

#[test]
fn sft_data() {
    let gguf = fixture("tiny-llama-gguf/tiny-llama.gguf");
    let tok = Tokenizer::from_gguf(&Gguf::open(&gguf).unwrap()).unwrap();
    assert!(tok.chat_template().is_some(), "the seed's chat lines need a chat template");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, SFT_SEED).unwrap();
    let seed = load_sft_jsonl(&path, &tok, 4096).unwrap_or_else(|e| panic!("the seed is refused: {e}"));
    assert_eq!(seed.len(), 4, "every seed line is an example");
    let longest = seed.iter().map(|e| e.len()).max().unwrap();
    let dict = train_dict();
    let strategy = (
        any::<Index>(),
        proptest::option::of(json_edits(3)),
        proptest::collection::vec(edit(), 0..5),
        // max_length: below every seed line, about the longest, no limit to speak of.
        prop::sample::select(vec![2, longest, longest, 1 << 20]),
    );
    fuzz("sft-data", 500, strategy, |(which, tree, edits, max_length)| {
        let bytes = mutate_jsonl(SFT_SEED, *which, tree.as_deref(), edits, &dict);
        std::fs::write(&path, &bytes).unwrap();
        let mut case = Case::new(path.display().to_string());
        if let Some(examples) = case.step("load_sft_jsonl", || load_sft_jsonl(&path, &tok, *max_length)) {
            // What the trainer relies on.
            let mut last = 0;
            for e in &examples {
                if e.prompt.is_empty() || e.completion.is_empty() || e.len() > *max_length || e.line <= last {
                    case.problems.push(format!("a bad example was loaded (max_length {max_length}): {e:?}"));
                }
                last = e.line;
            }
            if examples.is_empty() {
                case.problems.push("an empty data set was loaded".into());
            }
        }
        (case, bytes.len())
    });
}

// ---------------------------------------------------------------------------------------------------
// Checkpoints.
// ---------------------------------------------------------------------------------------------------

/// A real checkpoint (adapter, optimizer moments, trainer state with metrics) of a rank-2 adapter on the
/// tiny Qwen2, written by `save_checkpoint` into `out`; returns its folder and an AdamW over the same
/// parameters (what a resumed run restores the optimizer state into).
fn seed_checkpoint(gpu: &std::sync::Arc<Gpu>, out: &Path) -> (std::path::PathBuf, AdamW) {
    let model = DecoderConfig::from_hf_file(&fixture("tiny-qwen2/config.json")).unwrap();
    let cfg = LoraConfig::new(2, 4.0, &[Target::Q, Target::V]).unwrap();
    let adapter = Adapter::init(gpu.clone(), cfg, &model, 1).unwrap();
    let specs = LoraGrads::param_specs(&adapter);
    let optim = AdamWState {
        step: 7,
        params: specs
            .iter()
            .enumerate()
            .map(|(i, s)| ParamState {
                name: s.name.clone(),
                exp_avg: random(s.len, 1e-3, i as u64),
                exp_avg_sq: random(s.len, 1e-6, 100 + i as u64).iter().map(|x| x.abs()).collect(),
            })
            .collect(),
    };
    let state = TrainerState {
        format: CHECKPOINT_FORMAT.into(),
        step: 7,
        schedule: Schedule::new(SchedulerType::Cosine, 2.0, 20).unwrap(),
        seed: 1,
        data_seed: 2,
        examples_seen: 28,
        epoch: 1,
        run_file_sha256: "ab".repeat(32),
        base_model: "tiny-qwen2".into(),
        stage: None,
        stages: Vec::new(),
        metrics: serde_json::json!({"loss": 2.5, "grad_norm": 0.75, "lr": 1e-4}).as_object().unwrap().clone(),
    };
    let dir = save_checkpoint(out, &adapter, &optim, &state).unwrap();
    let ck = load_checkpoint(&dir).unwrap_or_else(|e| panic!("the seed is refused: {e}"));
    assert_eq!((ck.state, &ck.optimizer), (state, &optim));
    let mut adamw = AdamW::new(gpu, AdamWConfig::default(), specs).unwrap();
    adamw.load_state(gpu, &optim).unwrap();
    (dir, adamw)
}

/// optimizer.safetensors with the parameter list in its metadata (a JSON list inside a JSON string)
/// changed by `f`.
fn edit_params(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let params = &mut header["__metadata__"]["params"];
    let mut list: Value = serde_json::from_str(params.as_str().expect("a params list")).unwrap();
    f(&mut list);
    *params = list.to_string().into();
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&bytes[8 + n..]);
    out
}

#[test]
fn checkpoints() {
    let gpu = gpu();
    let out = tempfile::tempdir().unwrap();
    let (seed_dir, mut adamw) = seed_checkpoint(&gpu, out.path());
    // The two files `load_checkpoint` reads first; the adapter's are the caller's (`Adapter::load_peft`).
    let names =
        ["trainer_state.json", "optimizer.safetensors", "adapter_config.json", "adapter_model.safetensors"];
    let files: Vec<(&'static str, Vec<u8>)> = names.iter().map(|n| (*n, read(&seed_dir.join(n)))).collect();
    let dict = train_dict();
    let dir = tempfile::tempdir().unwrap();
    // What to edit: the trainer state, the optimizer state's header or its parameter list.
    let strategy = (0..3usize, json_edits(4), proptest::collection::vec(edit(), 0..3));
    fuzz("checkpoint", 500, strategy, |(what, tree, text)| {
        let mut files = files.clone();
        match what {
            0 => files[0].1 = mutate_json(&files[0].1, tree, text, &dict),
            1 => files[1].1 = mutate_safetensors(&files[1].1, tree, text, &dict),
            _ => {
                // The parameter list edited node by node: names dropped, reordered, duplicated, replaced.
                let edited = edit_params(&files[1].1, |list| apply_json(list, tree));
                files[1].1 = mutate_safetensors(&edited, &[], text, &dict);
            }
        }
        write_dir(dir.path(), &files);
        let mut case = Case::new(dir.path().display().to_string());
        if let Some(ck) = case.step("load_checkpoint", || load_checkpoint(dir.path())) {
            if ck.state.format != CHECKPOINT_FORMAT || ck.optimizer.step != ck.state.step {
                case.problems.push(format!("an inconsistent checkpoint was loaded: {:?}", ck.state));
            }
            let s = ck.state.schedule;
            case.step_any("Schedule::lr", || Ok::<_, ()>(s.lr(1e-3, ck.state.step)));
            // A resume restores the moments into the run's optimizer: a mismatch is refused there.
            case.step_any("AdamW::load_state", || adamw.load_state(&gpu, &ck.optimizer));
        }
        (case, files.iter().map(|f| f.1.len()).sum())
    });
}

// ---------------------------------------------------------------------------------------------------
// Regression tests for what these targets (or reading the loaders for them) found; each failed before
// its fix.
// ---------------------------------------------------------------------------------------------------

/// An optimizer state whose parameter list names one parameter many times: each mention copied the
/// parameter's moments again, so a small file could ask for any amount of memory (25 million mentions
/// fit in the 100 MB header safetensors allows).
#[test]
fn optimizer_state_naming_a_parameter_twice_is_refused() {
    let state = AdamWState {
        step: 1,
        params: vec![ParamState { name: "w".into(), exp_avg: vec![0.5; 1024], exp_avg_sq: vec![0.25; 1024] }],
    };
    let bytes = edit_params(&state.to_safetensors().unwrap(), |list| *list = Value::from(vec!["w"; 64]));
    let path = Path::new("ck/optimizer.safetensors");
    let err = match AdamWState::from_safetensors(&bytes, path) {
        Ok(s) => panic!("accepted, with {} parameters", s.params.len()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("ck/optimizer.safetensors") && err.contains("`w` twice"), "{err}");
}
