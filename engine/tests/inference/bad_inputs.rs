//! Bad inputs give clear errors that name the file, setting or value — never a panic: truncated and
//! corrupt weight files, an unknown architecture, an unsupported setting, a tokenizer that does not fit
//! the model, an empty prompt, a prompt longer than the context, token ids outside the vocabulary.

use crate::common;

use std::path::{Path, PathBuf};

use babelrl::Error;
use babelrl::generate::{SamplingConfig, completion_logprobs, generate};
use babelrl::gpu::cpu_ref::TokenInfo;
use babelrl::model::load_language_model;
use common::{gpu, repo_root};

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// A writable copy of a fixture folder's files (not its subfolders, such as `lora/`).
fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            continue;
        }
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn load_err(path: &Path) -> String {
    match load_language_model(gpu(), path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn truncated_and_corrupt_safetensors_are_refused_with_the_file_named() {
    let dir = copy_dir(&fixture("tiny-llama"));
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors") && msg.contains("truncated or corrupt"), "{msg}");

    let mut garbage = bytes.clone();
    garbage[..8].copy_from_slice(&u64::MAX.to_le_bytes()); // header length past the end of the file
    std::fs::write(&weights, &garbage).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn truncated_gguf_is_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let bytes = std::fs::read(fixture("tiny-llama-gguf/tiny-llama.gguf")).unwrap();
    for len in [3, 40, bytes.len() / 3, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let msg = load_err(&path);
        assert!(msg.contains("cut.gguf"), "length {len}: {msg}");
    }
}

#[test]
fn unknown_architecture_and_unsupported_settings_are_named() {
    let dir = copy_dir(&fixture("tiny-llama"));
    edit_config(dir.path(), |v| v["model_type"] = "mamba".into());
    let msg = load_err(dir.path());
    assert!(msg.contains("architecture") && msg.contains("mamba"), "{msg}");

    let dir = copy_dir(&fixture("tiny-llama"));
    edit_config(dir.path(), |v| {
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0})
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("rope_scaling") && msg.contains("llama3"), "{msg}");

    let dir = copy_dir(&fixture("tiny-llama"));
    edit_config(dir.path(), |v| v["hidden_act"] = "gelu".into());
    assert!(load_err(dir.path()).contains("hidden_act"));

    let dir = copy_dir(&fixture("tiny-llama"));
    edit_config(dir.path(), |v| v["num_key_value_heads"] = 3.into());
    assert!(load_err(dir.path()).contains("num_key_value_heads"));
}

#[test]
fn missing_tensor_and_wrong_shape_are_named() {
    let dir = copy_dir(&fixture("tiny-llama"));
    edit_config(dir.path(), |v| v["num_hidden_layers"] = 3.into());
    let msg = load_err(dir.path());
    assert!(msg.contains("model.layers.2."), "{msg}");

    let dir = copy_dir(&fixture("tiny-llama"));
    edit_config(dir.path(), |v| v["intermediate_size"] = 128.into());
    let msg = load_err(dir.path());
    assert!(msg.contains("mlp.gate_proj.weight") && msg.contains("[128, 64]"), "{msg}");
}

#[test]
fn tokenizer_larger_than_the_model_vocabulary_is_refused() {
    let dir = copy_dir(&fixture("tiny-llama"));
    // A word-level tokenizer of 400 tokens for a model with 300 embedding rows.
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..400).map(|i| (format!("w{i}"), i.into())).collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("400") && msg.contains("300") && msg.contains("does not belong"), "{msg}");
}

#[test]
fn empty_and_overlong_prompts_and_bad_token_ids_are_input_errors() {
    let lm = load_language_model(gpu(), &fixture("tiny-llama-gguf/tiny-llama.gguf")).unwrap();
    let tok = lm.tokenizer().unwrap();
    let model = &lm.decoder;
    let cfg = SamplingConfig { max_new_tokens: 4, ..Default::default() };

    let err = generate(model, tok, &[vec![5, 6], vec![]], &cfg, |_| {}).unwrap_err();
    assert!(matches!(err, Error::Input(_)) && err.to_string().contains("prompt 1 is empty"), "{err}");

    let long = vec![5u32; model.max_context() + 10];
    let err = generate(model, tok, std::slice::from_ref(&long), &cfg, |_| {}).unwrap_err();
    assert!(err.to_string().contains("does not fit the model's context"), "{err}");
    let err = completion_logprobs(model, &[(long, vec![1])]).unwrap_err();
    assert!(err.to_string().contains("exceed the model's context"), "{err}");

    let err = generate(model, tok, &[vec![5, 100_000]], &cfg, |_| {}).unwrap_err();
    assert!(err.to_string().contains("token id 100000 is outside the model's vocabulary"), "{err}");

    let cache = model.new_cache(1, 8).unwrap();
    let err = model.forward(&cache, &[1], &[TokenInfo { pos: 9, slot: 0, n_keys: 10 }], &[0]).unwrap_err();
    assert!(err.to_string().contains("does not fit a cache"), "{err}");

    let bad = SamplingConfig { top_p: 0.0, ..cfg };
    assert!(generate(model, tok, &[vec![5]], &bad, |_| {}).unwrap_err().to_string().contains("top_p"));
}
