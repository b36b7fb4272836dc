//! Picks the next token from a row of logits: greedy, or temperature, top-k and top-p sampling from a
//! seeded generator, filtering as Hugging Face's warpers do (see [`candidates`]). Reports the chosen
//! token's log-probability under the unmodified distribution.

use rand::Rng;

/// How to choose tokens. Temperature 0 means greedy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all; tokens tied with the k-th are kept too, as in
    /// Hugging Face).
    pub top_k: usize,
    /// Then drop the least likely tokens while their total probability, renormalised over what top-k
    /// kept, stays ≤ 1 − p (1.0: keep all; the most likely token always stays), as Hugging Face does.
    pub top_p: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Extra stop token ids, besides the tokenizer's end-of-sequence tokens.
    pub stop_tokens: Vec<u32>,
    /// Generation stops when the completion text contains one of these (it is cut before it).
    pub stop_strings: Vec<String>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            max_new_tokens: 64,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

impl SamplingConfig {
    /// Checks the options, naming the one that is out of range.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::Error::Input(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad(
                "stop strings must not be empty (an empty one would stop every sequence at once)".into()
            );
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// log_softmax of a row, in f64 for stability.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z = logits.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    logits.iter().map(|&x| x as f64 - m - z).collect()
}

/// The tokens sampling may choose (by id, or most likely first when top-p applies; the vocabulary is
/// sorted only then) with their probabilities (summing to 1), as Hugging Face's warpers leave them, in
/// its order: logits divided by the temperature; top-k (`TopKLogitsWarper`: every token scoring below
/// the k-th largest score is dropped, ties with it are kept); top-p (`TopPLogitsWarper`: a softmax over the tokens top-k left, so their probabilities are
/// renormalised first; sorted ascending, the tokens whose cumulative probability is ≤ 1 − top_p are
/// dropped, the most likely token always kept); then a softmax over what is left. Needs a
/// temperature above 0 (0 is greedy, see [`sample`]).
pub fn candidates(logits: &[f32], cfg: &SamplingConfig) -> Vec<(u32, f64)> {
    let scaled: Vec<f32> = logits.iter().map(|&x| x / cfg.temperature).collect();
    let mut kept: Vec<usize> = (0..scaled.len()).collect();
    if cfg.top_k > 0 && cfg.top_k < scaled.len() {
        // The k-th largest score by a partial selection (no full sort of the vocabulary).
        let mut scores = scaled.clone();
        let (_, &mut kth, _) = scores.select_nth_unstable_by(cfg.top_k - 1, |a, b| b.total_cmp(a));
        kept.retain(|&i| scaled[i] >= kth);
    }
    if cfg.top_p < 1.0 {
        // Most likely first; equal scores highest id first, the reverse of the ascending order
        // torch.sort gives them on CPU, so top-p drops tied tokens in the same order as Hugging Face.
        kept.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]).then(b.cmp(&a)));
        let probs = softmax_of(&scaled, &kept);
        // Ascending cumulative sums from the least likely end; drop while they stay ≤ 1 − top_p.
        let limit = 1.0 - cfg.top_p as f64;
        let mut cumulative = 0.0;
        let mut dropped = 0;
        for &p in probs.iter().rev().take(probs.len().saturating_sub(1)) {
            cumulative += p;
            if cumulative > limit {
                break;
            }
            dropped += 1;
        }
        kept.truncate(kept.len() - dropped);
    }
    let probs = softmax_of(&scaled, &kept);
    kept.into_iter().map(|i| i as u32).zip(probs).collect()
}

/// Softmax of `scores` restricted to the tokens `ids` (in their order), in f64.
fn softmax_of(scores: &[f32], ids: &[usize]) -> Vec<f64> {
    let m = ids.iter().map(|&i| scores[i]).fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = ids.iter().map(|&i| (scores[i] as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Chooses a token from `logits`; returns it with its log-probability under the raw logits.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut impl Rng) -> (u32, f32) {
    let logp = log_softmax(logits);
    if cfg.temperature == 0.0 {
        // Greedy; ties go to the lowest id, as torch.argmax does.
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return (best as u32, logp[best] as f32);
    }
    let choices = candidates(logits, cfg);
    let mut u = rng.random::<f64>();
    for &(i, p) in &choices {
        u -= p;
        if u <= 0.0 {
            return (i, logp[i as usize] as f32);
        }
    }
    let (last, _) = *choices.last().expect("at least one token kept");
    (last, logp[last as usize] as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn greedy_takes_the_argmax_and_reports_its_logprob() {
        let logits = [1.0f32, 3.0, 2.0];
        let (t, lp) =
            sample(&logits, &SamplingConfig::default(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
        assert_eq!(t, 1);
        let z = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert!((lp as f64 - (3.0 - z)).abs() < 1e-6);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support_and_frequencies_follow_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), (4.0f32).ln()]; // p ∝ 1, 2, 3, 4
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let cfg = SamplingConfig { temperature: 1.0, top_k: 2, ..Default::default() };
        let mut counts = [0usize; 4];
        for _ in 0..20000 {
            counts[sample(&logits, &cfg, &mut rng).0 as usize] += 1;
        }
        assert_eq!(counts[0] + counts[1], 0, "top-k 2 keeps only tokens 2 and 3: {counts:?}");
        let share = counts[3] as f64 / 20000.0; // 4 / (3 + 4)
        assert!((share - 4.0 / 7.0).abs() < 0.02, "share {share}");

        // top-p 0.5: sorted probabilities 0.4, 0.3 reach 0.7 ≥ 0.5 after two tokens.
        let cfg = SamplingConfig { temperature: 1.0, top_p: 0.5, ..Default::default() };
        let mut counts = [0usize; 4];
        for _ in 0..5000 {
            counts[sample(&logits, &cfg, &mut rng).0 as usize] += 1;
        }
        assert_eq!(counts[0] + counts[1], 0, "{counts:?}");
    }

    /// Top-p after top-k sums probabilities renormalised over the top-k tokens, as Hugging Face does:
    /// p ∝ 1, 2, 3, 4 cut to the top 2 gives 3/7, 4/7, and 3/7 ≤ 1 − 0.5 drops token 2. Summing the
    /// unrenormalised 0.4 + 0.3 (the old rule) would keep token 2 as well.
    #[test]
    fn top_p_after_top_k_uses_probabilities_renormalised_over_the_top_k() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln(), (4.0f32).ln()];
        let cfg = SamplingConfig { temperature: 1.0, top_k: 2, top_p: 0.5, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let drawn: Vec<u32> = (0..2000).map(|_| sample(&logits, &cfg, &mut rng).0).collect();
        assert!(drawn.iter().all(|&t| t == 3), "only token 3 survives: {:?}", &drawn[..20]);
        // With top_p 0.6 the cut is above 3/7 and both stay, in the top-k proportions 3 : 4.
        let cfg = SamplingConfig { top_p: 0.6, ..cfg };
        assert_eq!(candidates(&logits, &cfg).iter().map(|c| c.0).collect::<Vec<_>>(), [3, 2]);
    }

    /// Tokens tied with the k-th score stay (Hugging Face drops only scores below it).
    #[test]
    fn top_k_keeps_tokens_tied_with_the_kth() {
        let logits = [1.0f32, 2.0, 2.0, 0.0, 2.0, -1.0];
        let cfg = SamplingConfig { temperature: 1.0, top_k: 1, ..Default::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let mut counts = [0usize; 6];
        for _ in 0..3000 {
            counts[sample(&logits, &cfg, &mut rng).0 as usize] += 1;
        }
        assert_eq!(counts[0] + counts[3] + counts[5], 0, "{counts:?}");
        assert!([1, 2, 4].iter().all(|&i| counts[i] > 800), "each tied token about a third: {counts:?}");
    }

    /// The kept tokens and their probabilities equal those of transformers' Temperature, TopK and TopP
    /// warpers (tests/fixtures/sampler-warpers.json, from scripts/sampler_fixture.py), including cases
    /// where the unrenormalised rule keeps another set.
    #[test]
    fn filtering_matches_hugging_face_warpers() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sampler-warpers.json");
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("sampler fixture")).unwrap();
        let rows: Vec<Vec<f32>> = serde_json::from_value(fixture["rows"].clone()).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for case in cases {
            let cfg = SamplingConfig {
                temperature: case["temperature"].as_f64().unwrap() as f32,
                top_k: case["top_k"].as_u64().unwrap() as usize,
                top_p: case["top_p"].as_f64().unwrap() as f32,
                ..Default::default()
            };
            let logits = &rows[case["row"].as_u64().unwrap() as usize];
            let want_ids: Vec<u32> = serde_json::from_value(case["kept"].clone()).unwrap();
            let want_probs: Vec<f64> = serde_json::from_value(case["probs"].clone()).unwrap();
            let mut got = candidates(logits, &cfg);
            got.sort_by_key(|c| c.0);
            let ids: Vec<u32> = got.iter().map(|c| c.0).collect();
            assert_eq!(ids, want_ids, "kept tokens for {case}");
            for ((_, p), q) in got.iter().zip(&want_probs) {
                assert!((p - q).abs() < 1e-6, "probability {p} vs {q} for {case}");
            }
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let cfg = SamplingConfig { temperature: 0.8, ..Default::default() };
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..20).map(|_| sample(&logits, &cfg, &mut rng).0).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
