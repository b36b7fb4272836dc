//! Native tests of the semantic reward against its formulas, with a fake embedder.

use super::*;

/// "s=0.8" embeds to a unit vector at cosine 0.8 from [1, 0]; anything else (the reference) to [1, 0].
fn fake_embed(texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
    Ok(texts
        .iter()
        .map(|t| match t.strip_prefix("s=").and_then(|v| v.parse::<f32>().ok()) {
            Some(s) => vec![s, (1.0 - s * s).max(0.0).sqrt()],
            None => vec![1.0, 0.0],
        })
        .collect())
}

fn reward(json: &str) -> SemanticSimilarity {
    SemanticSimilarity::new(babelrl_sdk::reward::parse_config(json).unwrap()).unwrap()
}

fn sample(s: f32) -> Sample {
    Sample::new("translate", format!("s={s}")).with_reference("the reference").with_language("bod_Tibt")
}

fn close(got: &[Option<f32>], want: &[Option<f32>]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        match (g, w) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}"),
            _ => assert_eq!(g, w, "{got:?} vs {want:?}"),
        }
    }
}

#[test]
fn threshold_mode_at_and_above_tau() {
    let r = reward(r#"{"mode": "threshold", "tau": 0.6}"#);
    let group: Vec<Sample> = [0.5, 0.6, 0.8, 0.9, 1.0].iter().map(|&s| sample(s)).collect();
    // r = (s − 0.6) / 0.4 above τ, 0 below.
    let got = r.score_with(&group, fake_embed).unwrap();
    close(&got, &[Some(0.0), Some(0.0), Some(0.5), Some(0.75), Some(1.0)]);
}

#[test]
fn calibrated_mode_uses_the_pair_table() {
    let r = reward(
        r#"{"mode": "calibrated", "mu_ref": 0.6, "source_language": "eng_Latn",
            "mu_pair": {"eng_Latn": {"bod_Tibt": 0.8, "zho_Hans": 0.5}}}"#,
    );
    let bo = sample(0.7);
    let zh = sample(0.7).with_language("zho_Hans");
    let from_zh = sample(0.7).with_field("source_language", "zho_Hans");
    // bo: s' = 0.7 − (0.8 − 0.6) = 0.5 → 0.75; zh: s' = 0.7 − (0.5 − 0.6) = 0.8 → 0.9.
    close(&r.score_with(&[bo, zh], fake_embed).unwrap(), &[Some(0.75), Some(0.9)]);
    let err = r.score_with(&[from_zh], fake_embed).unwrap_err();
    assert!(err.contains("zho_Hans -> bod_Tibt"), "{err}");
}

#[test]
fn language_gate_zeroes_wrong_script() {
    let r = reward(r#"{"mode": "threshold", "tau": 0.0, "language_gate": 0.5}"#);
    // The fake completion "s=0.8" is Latin letters; as Tibetan it fails the gate, as English it passes.
    let bo = sample(0.8);
    let en = sample(0.8).with_language("en");
    close(&r.score_with(&[bo, en], fake_embed).unwrap(), &[Some(0.0), Some(0.8)]);
}

#[test]
fn one_embed_call_with_deduplicated_texts_and_none_without_reference() {
    let r = reward(r#"{"mode": "threshold", "tau": 0.5}"#);
    let group = [sample(0.9), sample(0.9), Sample::new("p", "no ref")];
    let mut calls = 0;
    let got = r
        .score_with(&group, |t| {
            calls += 1;
            assert_eq!(t, ["s=0.9", "the reference"]);
            fake_embed(t)
        })
        .unwrap();
    assert_eq!(calls, 1);
    close(&got, &[Some(0.8), Some(0.8), None]);
    let bad = r.score_with(&group, |_| Ok(vec![vec![1.0]])).unwrap_err();
    assert!(bad.contains("1 vectors for 2 texts"), "{bad}");
    assert!(r.score_with(&group, |_| Err("encoder down".into())).unwrap_err().contains("encoder down"));
}

#[test]
fn bad_configs_are_clear_errors() {
    let new = |j: &str| SemanticSimilarity::new(babelrl_sdk::reward::parse_config(j)?).map(|_| ());
    assert!(new(r#"{"mode": "threshold"}"#).unwrap_err().contains("tau"));
    assert!(new(r#"{"mode": "threshold", "tau": 1.0}"#).unwrap_err().contains("[-1, 1)"));
    assert!(new(r#"{"mode": "calibrated"}"#).unwrap_err().contains("mu_ref"));
    assert!(new(r#"{"mode": "cosine", "tau": 0.5}"#).unwrap_err().contains("cosine"));
    assert!(new(r#"{"mode": "threshold", "tau": 0.5, "tua": 1}"#).unwrap_err().contains("tua"));
}
