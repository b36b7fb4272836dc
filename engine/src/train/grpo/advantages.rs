//! Group-relative advantages: each completion's reward against its group's mean, scaled as TRL 1.16's
//! `GRPOTrainer._generate_and_score_completions` does (`multi_objective_aggregation = "sum_then_normalize"`).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Added to the standard deviation (not the variance) before dividing, as TRL does.
pub const STD_EPSILON: f64 = 1e-4;

/// What the centred rewards are divided by (TRL's `scale_rewards`; its `true` is `group`, `false` is
/// `none`). The mean is always the group's; only the standard deviation changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// `A_i = (R_i − mean_g R) / (std_g R + 1e-4)`, std over the completion's own group (TRL's default).
    #[default]
    Group,
    /// `A_i = (R_i − mean_g R) / (std R + 1e-4)`, the group's mean but the std of every reward of the
    /// generation batch (PPO-Lite).
    Batch,
    /// `A_i = R_i − mean_g R`, no division (Dr. GRPO recommends this; TRL does not switch to it for
    /// `loss_type = "dr_grpo"`, and neither does babelrl).
    None,
}

/// The advantage of each completion from its (already weighted and summed) reward.
///
/// `rewards` (B) hold the generation batch, every process's, grouped: completions `g·G .. (g+1)·G` are the
/// `group_size` = G completions of prompt g. A NaN reward marks an unscorable completion (every reward
/// function declined it): it is left out of the means and standard deviations and gets advantage 0.
///
/// Standard deviations are TRL's `nanstd`: **unbiased** (Bessel's n − 1), over the non-NaN rewards, NaN
/// when fewer than two remain (which makes the advantages of that group, or of the whole batch with
/// `batch`, NaN and so 0). With `group_size = 1` the group std is 0 (TRL's special case), so `group`
/// gives 0 everywhere; `batch` with a single reward likewise. Computed in f64, returned as f32.
///
/// Errors: `group_size` 0, or `rewards` not a whole number of groups.
pub fn advantages(rewards: &[f64], group_size: usize, scale: ScaleRewards) -> Result<Vec<f32>> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(Error::Input(format!(
            "grpo advantages: {} rewards do not make whole groups of {group_size} completions \
             (give every generation of every prompt, grouped by prompt)",
            rewards.len()
        )));
    }
    let groups = rewards.len() / group_size;
    let std = match scale {
        ScaleRewards::Batch if rewards.len() > 1 => vec![nan_std(rewards); groups],
        ScaleRewards::Group | ScaleRewards::None if group_size > 1 => {
            rewards.chunks(group_size).map(nan_std).collect()
        }
        _ => vec![0.0; groups],
    };
    let mut out = Vec::with_capacity(rewards.len());
    for (group, std) in rewards.chunks(group_size).zip(std) {
        let mean = nan_mean(group);
        for &r in group {
            let mut a = r - mean;
            if scale != ScaleRewards::None {
                a /= std + STD_EPSILON;
            }
            out.push(if a.is_nan() { 0.0 } else { a as f32 });
        }
    }
    Ok(out)
}

/// Mean of the non-NaN values (NaN if there are none), as `torch.nanmean`.
fn nan_mean(x: &[f64]) -> f64 {
    let (sum, n) = x.iter().filter(|v| !v.is_nan()).fold((0.0, 0usize), |(s, n), &v| (s + v, n + 1));
    sum / n as f64
}

/// TRL's `nanstd` (trl/trainer/utils.py): `sqrt(nanmean((x − nanmean x)²) · n / (n − 1))` over the n
/// non-NaN values; NaN when n ≤ 1.
fn nan_std(x: &[f64]) -> f64 {
    let mean = nan_mean(x);
    let n = x.iter().filter(|v| !v.is_nan()).count();
    if n <= 1 {
        return f64::NAN;
    }
    let squares: Vec<f64> = x.iter().map(|&v| (v - mean) * (v - mean)).collect();
    (nan_mean(&squares) * (n as f64 / (n - 1) as f64)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_scaling_uses_the_unbiased_std_plus_epsilon() {
        // Group [1, 3]: mean 2, unbiased std √2.
        let a = advantages(&[1.0, 3.0, 5.0, 5.0], 2, ScaleRewards::Group).unwrap();
        let want = 1.0 / (2f64.sqrt() + 1e-4);
        assert!((a[0] as f64 + want).abs() < 1e-7 && (a[1] as f64 - want).abs() < 1e-7, "{a:?}");
        assert_eq!(&a[2..], &[0.0, 0.0], "a group of equal rewards has zero advantages");
        assert_eq!(advantages(&[1.0, 3.0], 2, ScaleRewards::None).unwrap(), vec![-1.0, 1.0]);
    }

    #[test]
    fn unscorable_and_single_completions_get_zero() {
        let a = advantages(&[f64::NAN, 2.0, 4.0, 1.0], 2, ScaleRewards::Group).unwrap();
        assert_eq!(&a[..2], &[0.0, 0.0], "one scorable reward: std NaN, so advantage 0");
        assert_eq!(advantages(&[3.0, 7.0], 1, ScaleRewards::Group).unwrap(), vec![0.0, 0.0]);
        assert_eq!(advantages(&[3.0], 1, ScaleRewards::Batch).unwrap(), vec![0.0]);
    }

    #[test]
    fn ragged_groups_are_refused() {
        let err = advantages(&[1.0, 2.0, 3.0], 2, ScaleRewards::Group).unwrap_err().to_string();
        assert!(err.contains("3 rewards do not make whole groups of 2"), "{err}");
        assert!(advantages(&[1.0], 0, ScaleRewards::Group).is_err());
    }

    #[test]
    fn serde_names_are_trl_s() {
        for (s, want) in
            [("group", ScaleRewards::Group), ("batch", ScaleRewards::Batch), ("none", ScaleRewards::None)]
        {
            assert_eq!(serde_json::from_str::<ScaleRewards>(&format!("\"{s}\"")).unwrap(), want);
        }
    }
}
