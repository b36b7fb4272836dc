//! Embedding similarity and the semantic reward shapes: threshold-and-rescale and LRPO's calibration.

/// Cosine similarity of two vectors (accumulated in f64). `Err` when the lengths differ or are zero;
/// `0.0` when either vector is all zeros.
pub fn cosine(a: &[f32], b: &[f32]) -> Result<f32, String> {
    if a.len() != b.len() || a.is_empty() {
        return Err(format!("cosine of vectors of lengths {} and {}", a.len(), b.len()));
    }
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return Ok(0.0);
    }
    Ok((ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0) as f32)
}

/// Threshold and rescale: `r = 0` if `s < τ`, else `(s − τ) / (1 − τ)`, so `r` runs from 0 at the
/// threshold to 1 at `s = 1`. Needs `τ < 1`; the result is clipped to at most 1 against rounding.
pub fn threshold_rescale(s: f32, tau: f32) -> f32 {
    if s < tau { 0.0 } else { ((s - tau) / (1.0 - tau)).min(1.0) }
}

/// LRPO's calibrated similarity `s' = clip(s − (μ_pair − μ_ref), −1, 1)`: removes the language pair's
/// bias (`μ_pair`: mean similarity of true translations for the pair, `μ_ref`: their mean over pairs).
pub fn calibrated_similarity(s: f32, mu_pair: f32, mu_ref: f32) -> f32 {
    (s - (mu_pair - mu_ref)).clamp(-1.0, 1.0)
}

/// LRPO's calibrated semantic reward `r = clip((s' + 1) / 2, 0, 1)` with `s'` from
/// [`calibrated_similarity`].
pub fn calibrated_reward(s: f32, mu_pair: f32, mu_ref: f32) -> f32 {
    ((calibrated_similarity(s, mu_pair, mu_ref) + 1.0) / 2.0).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cosine_known_values() {
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]).unwrap(), 0.0);
        assert_eq!(cosine(&[1.0, 1.0], &[2.0, 2.0]).unwrap(), 1.0);
        assert_eq!(cosine(&[1.0, 1.0], &[-3.0, -3.0]).unwrap(), -1.0);
        // (3,4)·(4,3) = 24, |.|=5 each → 0.96
        assert!((cosine(&[3.0, 4.0], &[4.0, 3.0]).unwrap() - 0.96).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]).unwrap(), 0.0);
        assert!(cosine(&[1.0], &[1.0, 2.0]).is_err());
        assert!(cosine(&[], &[]).is_err());
    }

    #[test]
    fn threshold_rescale_at_and_above_tau() {
        let tau = 0.6;
        assert_eq!(threshold_rescale(0.59, tau), 0.0);
        assert_eq!(threshold_rescale(-1.0, tau), 0.0);
        assert_eq!(threshold_rescale(0.6, tau), 0.0);
        // (0.8 − 0.6) / 0.4 = 0.5; (0.9 − 0.6) / 0.4 = 0.75
        assert!((threshold_rescale(0.8, tau) - 0.5).abs() < 1e-6);
        assert!((threshold_rescale(0.9, tau) - 0.75).abs() < 1e-6);
        assert_eq!(threshold_rescale(1.0, tau), 1.0);
        assert_eq!(threshold_rescale(0.3, 0.0), 0.3);
    }

    #[test]
    fn calibrated_hand_computed() {
        // s = 0.7, μ_pair = 0.8, μ_ref = 0.6: s' = 0.7 − 0.2 = 0.5, r = 0.75
        assert!((calibrated_similarity(0.7, 0.8, 0.6) - 0.5).abs() < 1e-6);
        assert!((calibrated_reward(0.7, 0.8, 0.6) - 0.75).abs() < 1e-6);
        // A pair with low typical similarity is lifted: s = 0.5, μ_pair = 0.4, μ_ref = 0.6 → s' = 0.7.
        assert!((calibrated_reward(0.5, 0.4, 0.6) - 0.85).abs() < 1e-6);
        // Clipping: s' = 0.95 + 0.5 → 1 → r = 1; s' = −0.9 − 0.5 → −1 → r = 0.
        assert_eq!(calibrated_reward(0.95, 0.1, 0.6), 1.0);
        assert_eq!(calibrated_reward(-0.9, 0.9, 0.4), 0.0);
    }

    proptest! {
        #[test]
        fn cosine_bounded_symmetric_scale_invariant(
            v in prop::collection::vec((-10f32..10.0, -10f32..10.0), 1..16), k in 0.1f32..10.0,
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = v.into_iter().unzip();
            let c = cosine(&a, &b).unwrap();
            prop_assert!((-1.0..=1.0).contains(&c));
            prop_assert_eq!(c, cosine(&b, &a).unwrap());
            let ka: Vec<f32> = a.iter().map(|x| x * k).collect();
            prop_assert!((cosine(&ka, &b).unwrap() - c).abs() < 1e-5);
        }

        #[test]
        fn threshold_rescale_monotone_in_unit(s1 in -1f32..=1.0, s2 in -1f32..=1.0, tau in -0.5f32..0.99) {
            let (lo, hi) = if s1 <= s2 { (s1, s2) } else { (s2, s1) };
            let (rl, rh) = (threshold_rescale(lo, tau), threshold_rescale(hi, tau));
            prop_assert!((0.0..=1.0).contains(&rl) && (0.0..=1.0).contains(&rh));
            prop_assert!(rl <= rh);
        }

        #[test]
        fn calibrated_reward_in_unit_and_shifts(s in -1f32..=1.0, mp in -1f32..=1.0, mr in -1f32..=1.0) {
            let r = calibrated_reward(s, mp, mr);
            prop_assert!((0.0..=1.0).contains(&r));
            // Without calibration bias (μ_pair = μ_ref) the reward is the plain (s + 1) / 2.
            prop_assert!((calibrated_reward(s, mr, mr) - (s + 1.0) / 2.0).abs() < 1e-6);
        }
    }
}
