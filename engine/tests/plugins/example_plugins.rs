//! The example plugins, built as components by plugins/build.sh (scripts/test.sh runs it first), loaded
//! through the engine's sandboxed host and checked against their formulas — including `embed` served by
//! the real GPU encoder, so a plugin sees the vectors the engine computes directly, and the Python
//! plugin built with componentize-py.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use babelrl::model::Encoder;
use babelrl::plugin::{
    Capabilities, ChooseRequest, EncoderServices, Feedback, NoServices, PluginLimits, RewardPlugin,
    RouterPlugin, Sample,
};
use common::{gpu, model_dir, repo_root};

fn component(file: &str) -> Option<PathBuf> {
    let path = repo_root().join(file);
    if path.exists() {
        Some(path)
    } else {
        common::skip(format!("{} not built; run plugins/build.sh", path.display()))
    }
}

fn rust_plugin(name: &str) -> Option<PathBuf> {
    component(&format!("plugins/target/wasm32-wasip2/release/{name}.wasm"))
}

fn sample(completion: &str, reference: Option<&str>, language: &str) -> Sample {
    Sample {
        prompt: "q".into(),
        completion: completion.into(),
        reference: reference.map(String::from),
        language: Some(language.into()),
        fields: Vec::new(),
    }
}

fn reward(path: &Path, name: &str, config: &str) -> RewardPlugin {
    RewardPlugin::load(
        path,
        name,
        config,
        &PluginLimits::default(),
        &Capabilities::default(),
        Arc::new(NoServices),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn exact_match_compares_the_last_number() {
    let Some(path) = rust_plugin("exact_match") else { return };
    let mut p = reward(&path, "exact-match", "{}");
    let group = [
        sample("3 + 4 = 7, so she has 1,234 apples.", Some("1234"), "en"),
        sample("The answer is 12.", Some("1234"), "en"),
        sample("no number here", Some("5"), "en"),
    ];
    assert_eq!(p.score(&group).unwrap(), vec![Some(1.0), Some(0.0), Some(0.0)]);
}

#[test]
fn language_consistency_gates_on_the_target_script() {
    let Some(path) = rust_plugin("language_consistency") else { return };
    let mut p = reward(&path, "language-consistency", r#"{"mode": "gate", "threshold": 0.8}"#);
    let group = [
        sample("བཀྲ་ཤིས་བདེ་ལེགས།", None, "bod_Tibt"),
        sample("Hello, how are you?", None, "bod_Tibt"),
        sample("你好，世界", None, "zho_Hans"),
    ];
    assert_eq!(p.score(&group).unwrap(), vec![Some(1.0), Some(0.0), Some(1.0)]);
}

#[test]
fn semantic_similarity_sees_the_engines_own_embeddings() {
    let Some(path) = rust_plugin("semantic_similarity") else { return };
    let Some(dir) = model_dir("all-minilm-l6-v2") else { return };
    let encoder = Arc::new(Encoder::load(gpu(), &dir).unwrap());
    let tau = 0.3f32;
    let mut p = RewardPlugin::load(
        &path,
        "semantic-similarity",
        &format!(r#"{{"mode": "threshold", "tau": {tau}}}"#),
        &PluginLimits::default(),
        &Capabilities::default(),
        Arc::new(EncoderServices::new(encoder.clone())),
    )
    .unwrap();
    let reference = "The cat sleeps on the sofa.";
    let hyps = ["A cat is sleeping on the couch.", "Stock markets fell sharply today.", reference];
    let group: Vec<Sample> = hyps.iter().map(|h| sample(h, Some(reference), "en")).collect();
    let got = p.score(&group).unwrap();

    // The same formula on embeddings the engine computes directly.
    let mut texts: Vec<String> = hyps.iter().map(|h| h.to_string()).collect();
    texts.push(reference.into());
    let e = encoder.embed(&texts).unwrap();
    for (i, g) in got.iter().enumerate() {
        let s: f32 = e[i].iter().zip(&e[3]).map(|(a, b)| a * b).sum();
        let want = if s < tau { 0.0 } else { (s - tau) / (1.0 - tau) };
        let g = g.expect("scored");
        assert!((g - want).abs() < 1e-5, "sample {i}: plugin {g}, engine {want} (cos {s})");
    }
    assert!(got[0].unwrap() > got[1].unwrap() && (got[2].unwrap() - 1.0).abs() < 1e-5, "{got:?}");
}

#[test]
fn lrpo_router_keeps_first_rollouts_and_round_trips_its_state() {
    let Some(path) = rust_plugin("lrpo_softmax") else { return };
    let langs: Vec<String> = ["en", "zh", "bo", "fr"].iter().map(|s| s.to_string()).collect();
    let load = || {
        RouterPlugin::load(
            &path,
            "lrpo-softmax",
            r#"{"seed": 3}"#,
            &langs,
            &PluginLimits::default(),
            &Capabilities::default(),
            Arc::new(NoServices),
        )
        .unwrap()
    };
    let mut r = load();
    let req = |id: &str, step| ChooseRequest {
        question_id: id.into(),
        topic: Some("math".into()),
        question_language: "zh".into(),
        k: 6,
        step,
    };
    let picks = r.choose(&req("q1", 0)).unwrap();
    assert_eq!(picks.len(), 6);
    assert_eq!(&picks[..2], &["zh".to_string(), "zh".to_string()], "{picks:?}");
    for step in 0..5 {
        let fb: Vec<Feedback> = langs
            .iter()
            .map(|l| Feedback {
                topic: "math".into(),
                language: l.clone(),
                reward: if l == "fr" { 1.0 } else { 0.0 },
            })
            .collect();
        r.update(step, &fb).unwrap();
    }
    let state = r.save_state().unwrap();
    let mut fresh = load();
    fresh.load_state(&state).unwrap();
    assert_eq!(fresh.save_state().unwrap(), state);
    assert_eq!(fresh.choose(&req("q2", 6)).unwrap(), r.choose(&req("q2", 6)).unwrap());
    assert!(fresh.load_state(b"not a state").is_err());
}

#[test]
fn python_plugin_scores_word_f1_in_the_sandbox() {
    let Some(path) = component("plugins/python-word-f1/word_f1.wasm") else { return };
    let mut p = reward(&path, "python-word-f1", r#"{"unit": "words"}"#);
    let group = [
        sample("the cat sat", Some("the cat sat"), "en"),
        sample("the dog", Some("the cat sat"), "en"), // P = 1/2, R = 1/3, F1 = 0.4
        sample("nothing alike", Some("the cat sat"), "en"),
    ];
    let got = p.score(&group).unwrap();
    let want = [1.0, 0.4, 0.0];
    for (g, w) in got.iter().zip(want) {
        assert!((g.unwrap() - w).abs() < 1e-6, "{got:?}");
    }
}
