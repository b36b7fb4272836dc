//! Small pieces shared by bandit routers: softmax, z-scores, reward rescaling, topic keys, and a
//! simulated Bernoulli bandit to test a router on.

use crate::rng::SplitMix64;
use crate::router::Router;
use crate::{ChooseRequest, Feedback};

/// The topic key for a request or feedback: the topic, or `"_"` for questions without one.
pub fn topic_key(topic: Option<&str>) -> String {
    match topic {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => "_".to_string(),
    }
}

/// `softmax(logits / temperature)`, computed stably (max subtracted). `temperature > 0`.
pub fn softmax(logits: &[f64], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|&l| ((l - max) / temperature).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// z-scores `(x − mean) / std` with the population standard deviation; all zeros when the values do
/// not vary (std < 1e-12) or there are fewer than two.
pub fn zscores(values: &[f64]) -> Vec<f64> {
    let n = values.len() as f64;
    if values.len() < 2 {
        return vec![0.0; values.len()];
    }
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    if std < 1e-12 {
        return vec![0.0; values.len()];
    }
    values.iter().map(|v| (v - mean) / std).collect()
}

/// Maps a reward from `[lo, hi]` to `[0, 1]`, clipping outside values. `Err` on a non-finite reward.
pub fn unit_reward(reward: f32, lo: f64, hi: f64) -> Result<f64, String> {
    if !reward.is_finite() {
        return Err(format!("reward {reward} is not a finite number"));
    }
    Ok(((f64::from(reward) - lo) / (hi - lo)).clamp(0.0, 1.0))
}

/// Checks a `[lo, hi]` reward range from a router config.
pub fn check_range(lo: f64, hi: f64) -> Result<(), String> {
    if lo.is_finite() && hi.is_finite() && lo < hi {
        Ok(())
    } else {
        Err(format!("reward range [{lo}, {hi}] must be finite with reward_min < reward_max"))
    }
}

/// Arm names `arm0`, `arm1`, ... for [`simulate_bernoulli`].
pub fn arm_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("arm{i}")).collect()
}

/// Plays `router` (built with the languages [`arm_names`]`(means.len())`) against a Bernoulli bandit:
/// each round it chooses one language (k = 1, step = round, no topic), earns 1 with probability
/// `means[arm]` (drawn from a generator seeded with `seed`) and gets that feedback. Returns the pulls
/// per arm. For testing routers natively.
pub fn simulate_bernoulli<R: Router>(
    router: &mut R,
    means: &[f64],
    rounds: u64,
    seed: u64,
) -> Result<Vec<usize>, String> {
    let names = arm_names(means.len());
    let mut env = SplitMix64::new(seed);
    let mut pulls = vec![0; means.len()];
    for step in 0..rounds {
        let request = ChooseRequest {
            question_id: format!("q{step}"),
            topic: None,
            question_language: names[0].clone(),
            k: 1,
            step,
        };
        let chosen = router.choose(&request)?;
        let arm =
            names.iter().position(|n| *n == chosen[0]).ok_or_else(|| format!("chose unknown {chosen:?}"))?;
        pulls[arm] += 1;
        let reward = if env.bernoulli(means[arm]) { 1.0 } else { 0.0 };
        router.update(step, &[Feedback { topic: topic_key(None), language: chosen[0].clone(), reward }])?;
    }
    Ok(pulls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_known_values() {
        let p = softmax(&[0.0, (2f64).ln()], 1.0);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-12 && (p[1] - 2.0 / 3.0).abs() < 1e-12);
        // Temperature 0.5 squares the ratio: weights 1 : 4.
        let p = softmax(&[0.0, (2f64).ln()], 0.5);
        assert!((p[1] - 0.8).abs() < 1e-12);
        let p = softmax(&[1000.0, 1000.0], 0.3);
        assert_eq!(p, [0.5, 0.5]);
    }

    #[test]
    fn zscores_known_values() {
        // mean 0.5, population std sqrt(1/6)
        let z = zscores(&[1.0, 0.5, 0.0]);
        let s = (1.0f64 / 6.0).sqrt();
        assert!((z[0] - 0.5 / s).abs() < 1e-12 && z[1].abs() < 1e-12 && (z[2] + 0.5 / s).abs() < 1e-12);
        assert_eq!(zscores(&[0.3, 0.3]), [0.0, 0.0]);
        assert_eq!(zscores(&[0.3]), [0.0]);
    }

    #[test]
    fn rewards_and_topics() {
        assert_eq!(unit_reward(0.5, 0.0, 1.0).unwrap(), 0.5);
        assert_eq!(unit_reward(3.0, -1.0, 1.0).unwrap(), 1.0);
        assert_eq!(unit_reward(0.0, -1.0, 1.0).unwrap(), 0.5);
        assert!(unit_reward(f32::NAN, 0.0, 1.0).is_err());
        assert!(check_range(1.0, 1.0).is_err());
        assert_eq!(topic_key(None), "_");
        assert_eq!(topic_key(Some("math")), "math");
    }
}
