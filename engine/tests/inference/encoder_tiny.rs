//! The GPU sentence encoder on the committed tiny random encoders (tests/fixtures/tiny-bert, tiny-xlmr,
//! from scripts/make_encoder_fixtures.py with transformers), and its refusals of bad folders.

use crate::common;

use std::path::{Path, PathBuf};

use babelrl::Error;
use babelrl::model::{Encoder, EncoderOptions};
use common::{Scratch, gpu, repo_root, scratch};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Token ids equal the reference's and embeddings match transformers (cosine ≥ 0.999999, |Δ| ≤ 1e-5).
/// The fixtures' 2-D weights are f16-representable, so this measures kernel error only: 1.5e-7 at most
/// on lavapipe (it was 2e-3 against unrounded f32 weights).
fn check_against_expected(name: &str) {
    let dir = fixture(name);
    let enc = Encoder::load(gpu(), &dir).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let rows = expected["texts"].as_array().unwrap();
    let texts: Vec<String> = rows.iter().map(|r| r["text"].as_str().unwrap().to_string()).collect();
    for (row, text) in rows.iter().zip(&texts) {
        let want: Vec<u32> =
            row["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(enc.token_ids(text).unwrap(), want, "{name}: token ids of {text:?}");
    }
    let got = enc.embed(&texts).unwrap();
    assert_eq!(got.len(), texts.len());
    for ((row, text), emb) in rows.iter().zip(&texts).zip(&got) {
        let want: Vec<f32> =
            row["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(emb.len(), enc.dim());
        let cos = cosine(emb, &want);
        let max_diff = emb.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{name} {text:?}: cosine {cos:.6}, max |diff| {max_diff:.2e}");
        assert!(cos >= 0.999_999 && max_diff <= 1e-5, "{name} {text:?}: cosine {cos}, max |diff| {max_diff}");
        let norm: f32 = emb.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{name} {text:?}: norm {norm}");
    }
    // One text alone gives the same embedding as inside the batch (no leakage between sequences).
    let alone = enc.embed(&texts[1..2]).unwrap();
    assert!(cosine(&alone[0], &got[1]) > 0.999_999, "{name}: batching changed an embedding");
}

#[test]
fn tiny_bert_matches_transformers() {
    check_against_expected("tiny-bert");
}

#[test]
fn tiny_xlmr_matches_transformers() {
    check_against_expected("tiny-xlmr");
}

#[test]
fn options_come_from_babelrl_json_and_can_be_overridden() {
    let enc = Encoder::load(gpu(), &fixture("tiny-xlmr")).unwrap();
    assert_eq!(enc.prefix(), "query: ");
    // XLM-R: 42 position rows minus the offset of pad_token_id + 1 = 2.
    assert_eq!(enc.max_tokens(), 40);
    let bert = Encoder::load(gpu(), &fixture("tiny-bert")).unwrap();
    assert_eq!((bert.prefix(), bert.max_tokens(), bert.dim()), ("", 12, 32));

    let plain = EncoderOptions { prefix: None, max_tokens: Some(4) };
    let enc = Encoder::load_with(gpu(), &fixture("tiny-xlmr"), plain).unwrap();
    assert_eq!(enc.token_ids("the cat sits on").unwrap(), vec![0, 5, 6, 2], "no prefix, truncated to 4");
    assert!(enc.embed(&[]).unwrap().is_empty(), "no texts → no embeddings");
}

/// A copy of tiny-bert with `edit` applied to its config.json.
fn edited_copy(tag: &str, edit: impl FnOnce(&mut Value)) -> Scratch {
    let src = fixture("tiny-bert");
    let dir = scratch(&format!("encoder-{tag}"));
    for f in ["model.safetensors", "tokenizer.json", "babelrl.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> Error {
    let err = Encoder::load(gpu(), dir).expect_err("load should fail");
    eprintln!("{err}");
    err
}

#[test]
fn refuses_unsupported_settings_naming_them() {
    let cases: [(&str, &str, Value); 4] = [
        ("act", "hidden_act", Value::from("gelu_new")),
        ("pos", "position_embedding_type", Value::from("relative_key")),
        ("type", "model_type", Value::from("deberta-v2")),
        ("decoder", "is_decoder", Value::from(true)),
    ];
    for (tag, key, value) in cases {
        let dir = edited_copy(tag, |c| c[key] = value.clone());
        match load_err(&dir) {
            Error::Unsupported { what, detail, path } => {
                assert_eq!(what, key);
                assert!(detail.contains(value.as_str().unwrap_or("true")), "{detail}");
                assert!(path.ends_with("config.json"), "{}", path.display());
            }
            other => panic!("{key}: expected Unsupported, got {other:?}"),
        }
    }
}

#[test]
fn missing_corrupt_or_mismatched_weights_are_clear_errors() {
    let dir = edited_copy("weights", |_| {});
    let st = dir.join("model.safetensors");

    std::fs::remove_file(&st).unwrap();
    let msg = load_err(&dir).to_string();
    assert!(msg.contains("model.safetensors") && msg.contains(&dir.display().to_string()), "{msg}");

    std::fs::write(&st, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    assert!(matches!(load_err(&dir), Error::Format { ref path, .. } if path == &st));

    // Weights of another shape than config.json says: the tensor is named.
    std::fs::copy(fixture("tiny-bert/model.safetensors"), &st).unwrap();
    let cfg = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["intermediate_size"] = Value::from(48);
    std::fs::write(&cfg, v.to_string()).unwrap();
    match load_err(&dir) {
        Error::TensorShape { name, .. } => assert_eq!(name, "bert.encoder.layer.0.intermediate.dense.weight"),
        other => panic!("expected TensorShape, got {other:?}"),
    }

    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let msg = load_err(&dir).to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
}
