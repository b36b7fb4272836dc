//! Real GGUF decoders against transformers loading the same file (fixtures from scripts/make_fixtures.py):
//! SmolLM2-135M-Instruct (llama; Q4_1 with Q8_0 embeddings; tests/fixtures/smollm2-reference.json) and
//! Qwen2.5-Coder-0.5B-Instruct (qwen2 with q/k/v biases; mostly Q5_0/Q8_0/Q6_K/Q4_K; its 272 MB embedding
//! is split across storage bindings on lavapipe; tests/fixtures/qwen25-reference.json): tokenization,
//! greedy continuations generated as one batch of prompts of different lengths, and log-probs.
//!
//! Tolerance on log-probs: transformers dequantizes to f32; babelrl stores the dequantized weights at
//! f16 (DESIGN.md: base weights at 16 bits), a relative rounding of ≤ 2⁻¹¹ per weight that, through 30
//! layers, moves log-probs by a few 1e-3 (measured on lavapipe: SmolLM2 7.0e-3 greedy and teacher-forced; Qwen2.5 1.0e-3).
//! 0.03 leaves 4× headroom and stays far below a real defect (a wrong token or layer moves them by
//! ≥ 0.3; lavapipe's truncated 16384-iteration loops once moved them by 0.28).

use crate::common;

use babelrl::generate::{SamplingConfig, completion_logprobs, generate};
use babelrl::model::load_language_model;
use common::{gpu, model_dir, repo_root};
use serde_json::Value;

const LOGPROB_TOL: f32 = 0.03;

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn smollm2_gguf_matches_transformers() {
    check("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-reference.json");
}

#[test]
fn qwen25_gguf_matches_transformers() {
    check("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q.gguf", "qwen25-reference.json");
}

fn check(model: &str, file: &str, fixture: &str) {
    let Some(dir) = model_dir(model) else { return };
    let lm = load_language_model(gpu(), &dir.join(file)).unwrap();
    let tokenizer = lm.tokenizer().unwrap();
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures").join(fixture)).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let prompts = reference["prompts"].as_array().unwrap();

    // Our tokenizer, rebuilt from the GGUF metadata, gives transformers' prompt ids.
    let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| u32s(&p["prompt_ids"])).collect();
    for (p, want) in prompts.iter().zip(&prompt_ids) {
        let got = tokenizer.encode(p["text"].as_str().unwrap(), false).unwrap();
        assert_eq!(&got, want, "tokenization of {:?}", p["text"]);
    }

    // Greedy continuations of all prompts at once (different lengths share one batch and cache).
    let max_new = prompts.iter().map(|p| p["greedy_ids"].as_array().unwrap().len()).max().unwrap();
    let cfg = SamplingConfig { max_new_tokens: max_new, ..Default::default() };
    let done = generate(&lm.decoder, tokenizer, &prompt_ids, &cfg, |_| {}).unwrap();
    let mut worst = 0.0f32;
    for (p, got) in prompts.iter().zip(&done) {
        let want = u32s(&p["greedy_ids"]);
        let n = want.len();
        // Stopping at EOS keeps the EOS token as the last completion token, as the reference does.
        assert_eq!(&got.tokens[..], &want[..], "greedy continuation of {:?}", p["text"]);
        let d = max_diff(&got.logprobs[..n], &f32s(&p["greedy_logprobs"]));
        assert!(d < LOGPROB_TOL, "greedy log-probs of {:?} differ by {d}", p["text"]);
        worst = worst.max(d);
        assert_eq!(got.text, p["greedy_text"].as_str().unwrap().trim_end_matches("<|im_end|>"));
    }
    eprintln!("{model}: greedy log-probs: max abs diff {worst:.2e}");

    // Teacher-forced log-probs of fixed completions.
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        prompts.iter().zip(&prompt_ids).map(|(p, ids)| (ids.clone(), u32s(&p["completion_ids"]))).collect();
    let lps = completion_logprobs(&lm.decoder, &pairs).unwrap();
    let mut worst = 0.0f32;
    for (p, got) in prompts.iter().zip(&lps) {
        let d = max_diff(got, &f32s(&p["completion_logprobs"]));
        assert!(d < LOGPROB_TOL, "completion log-probs of {:?} differ by {d}", p["text"]);
        worst = worst.max(d);
    }
    eprintln!("{model}: teacher-forced log-probs: max abs diff {worst:.2e}");
}
