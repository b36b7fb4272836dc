//! Picks the next token from a row of logits: greedy, or temperature, top-k and top-p sampling from a
//! seeded generator. Reports the chosen token's log-probability under the unmodified distribution.

use rand::Rng;

/// How to choose tokens. Temperature 0 means greedy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0: all).
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
    let scaled: Vec<f32> = logits.iter().map(|&x| x / cfg.temperature).collect();
    let lp = log_softmax(&scaled);
    // Candidates: the whole vocabulary, cut to the k best by a partial selection (no full sort), then
    // sorted only when top-p needs the order. Sampling below does not depend on their order.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let by_prob = |a: &usize, b: &usize| lp[*b].total_cmp(&lp[*a]);
    if cfg.top_k > 0 && cfg.top_k < order.len() {
        order.select_nth_unstable_by(cfg.top_k - 1, by_prob);
        order.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        order.sort_by(by_prob);
        let mut mass = 0.0;
        let mut keep = 0;
        for &i in &order {
            mass += lp[i].exp();
            keep += 1;
            if mass >= cfg.top_p as f64 {
                break;
            }
        }
        order.truncate(keep.max(1));
    }
    let total: f64 = order.iter().map(|&i| lp[i].exp()).sum();
    let mut u = rng.random::<f64>() * total;
    for &i in &order {
        u -= lp[i].exp();
        if u <= 0.0 {
            return (i as u32, logp[i] as f32);
        }
    }
    let last = *order.last().expect("at least one token kept");
    (last as u32, logp[last] as f32)
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
