//! DPO's loss of one micro-batch of preference pairs and its gradient with respect to each sequence's
//! summed log-prob, as TRL 1.16's `DPOTrainer._compute_loss` computes them, plus the metrics it logs.
//! Pure functions of per-pair sums, computed in f64.
//!
//! Per pair i: `z_i = (c_i − c_ref_i) − (r_i − r_ref_i)`, where `c` and `r` are the policy's summed
//! log-probs of the chosen and rejected completion tokens and `*_ref` the reference's (adapter off).
//! `sigmoid`: `ℓ_i = −log σ(β z_i)`; `robust` (with `label_smoothing = ε`):
//! `ℓ_i = (−(1 − ε) log σ(β z_i) + ε log σ(−β z_i)) / (1 − 2ε)`. The loss is `mean_i ℓ_i / GA`, and
//! `dL/dc_i = −dL/dr_i = ℓ'(z_i) / (P · GA)` with `ℓ'(z) = −β σ(−β z)` for sigmoid (every completion
//! token of a sequence gets its sequence's coefficient, as the sum's gradient).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// TRL's `loss_type` (the ones babelrl implements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// `−log σ(β z)` (the DPO paper; TRL's default).
    #[default]
    Sigmoid,
    /// Robust DPO: preferences flipped with probability `label_smoothing`.
    Robust,
}

/// The loss's options, named and defaulted as TRL's `DPOConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoLossConfig {
    /// Strength of the implicit KL to the reference (TRL: 0.1).
    pub beta: f64,
    pub loss_type: DpoLossType,
    /// `robust` only: the probability a preference label is flipped, in [0, 0.5).
    pub label_smoothing: f64,
    /// Micro-batches per optimizer step: each micro-batch's mean is divided by it.
    pub gradient_accumulation_steps: usize,
}

impl Default for DpoLossConfig {
    fn default() -> Self {
        DpoLossConfig {
            beta: 0.1,
            loss_type: DpoLossType::Sigmoid,
            label_smoothing: 0.0,
            gradient_accumulation_steps: 1,
        }
    }
}

impl DpoLossConfig {
    /// Refuses values TRL refuses or that make the loss meaningless, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::Input(format!("dpo: `{field}` {why}")));
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad("beta", format!("= {}: must be a finite number above 0", self.beta));
        }
        let ls = self.label_smoothing;
        match self.loss_type {
            DpoLossType::Robust if !(0.0..0.5).contains(&ls) => {
                return bad("label_smoothing", format!("= {ls}: the robust loss needs it in [0, 0.5)"));
            }
            DpoLossType::Sigmoid if ls != 0.0 => {
                return bad(
                    "label_smoothing",
                    format!(
                        "= {ls}: the sigmoid loss ignores it (as TRL 1.16); set loss_type = \"robust\" for \
                         flipped-label smoothing"
                    ),
                );
            }
            _ => {}
        }
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps", "must be at least 1".into());
        }
        Ok(())
    }
}

/// One micro-batch's summed completion log-probs, one entry per pair (P).
#[derive(Debug, Clone, Copy)]
pub struct DpoLossInputs<'a> {
    pub chosen_logp: &'a [f64],
    pub rejected_logp: &'a [f64],
    pub ref_chosen_logp: &'a [f64],
    pub ref_rejected_logp: &'a [f64],
}

/// TRL's logged DPO metrics of a micro-batch (means over its pairs).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct DpoMetrics {
    /// `β (c − c_ref)`.
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    /// `β (r − r_ref)`.
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    /// Share of pairs whose chosen reward exceeds the rejected one.
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    /// `rewards/chosen − rewards/rejected`.
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    /// The policy's summed log-probs.
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

impl DpoMetrics {
    /// The mean of `parts` (each a micro-batch's, all weighted alike, as TRL averages logged values).
    pub fn mean(parts: &[DpoMetrics]) -> DpoMetrics {
        let n = parts.len().max(1) as f64;
        let sum = |f: fn(&DpoMetrics) -> f64| parts.iter().map(f).sum::<f64>() / n;
        DpoMetrics {
            rewards_chosen: sum(|m| m.rewards_chosen),
            rewards_rejected: sum(|m| m.rewards_rejected),
            rewards_accuracies: sum(|m| m.rewards_accuracies),
            rewards_margins: sum(|m| m.rewards_margins),
            logps_chosen: sum(|m| m.logps_chosen),
            logps_rejected: sum(|m| m.logps_rejected),
        }
    }
}

/// The loss of a micro-batch, its gradient with respect to each sequence's summed log-prob, and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct DpoLossOutput {
    /// Already divided by the gradient-accumulation steps.
    pub loss: f64,
    /// (P) `dL / d chosen_logp[i]`.
    pub dchosen: Vec<f64>,
    /// (P) `dL / d rejected_logp[i]` (= −dchosen).
    pub drejected: Vec<f64>,
    pub metrics: DpoMetrics,
}

/// `log σ(x)`, stable for large |x|.
pub fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// `σ(x)`, stable for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The per-pair loss `ℓ(z)` and `dℓ/dz`.
pub fn pair_loss(z: f64, config: &DpoLossConfig) -> (f64, f64) {
    let b = config.beta;
    match config.loss_type {
        DpoLossType::Sigmoid => (-log_sigmoid(b * z), -b * sigmoid(-b * z)),
        DpoLossType::Robust => {
            let e = config.label_smoothing;
            let value = (-(1.0 - e) * log_sigmoid(b * z) + e * log_sigmoid(-b * z)) / (1.0 - 2.0 * e);
            let grad = (-(1.0 - e) * b * sigmoid(-b * z) - e * b * sigmoid(b * z)) / (1.0 - 2.0 * e);
            (value, grad)
        }
    }
}

/// The DPO loss of one micro-batch. Errors name the array that does not fit or the pair with a
/// non-finite log-prob.
pub fn dpo_loss(inputs: &DpoLossInputs, config: &DpoLossConfig) -> Result<DpoLossOutput> {
    config.validate()?;
    let p = inputs.chosen_logp.len();
    if p == 0 {
        return Err(Error::Input("dpo loss: no pairs in the micro-batch".into()));
    }
    let arrays = [
        ("chosen_logp", inputs.chosen_logp),
        ("rejected_logp", inputs.rejected_logp),
        ("ref_chosen_logp", inputs.ref_chosen_logp),
        ("ref_rejected_logp", inputs.ref_rejected_logp),
    ];
    for (name, a) in arrays {
        if a.len() != p {
            return Err(Error::Input(format!("dpo loss: {name} has {} entries for {p} pairs", a.len())));
        }
        if let Some(i) = a.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!("dpo loss: {name}[{i}] (pair {i}) is {}", a[i])));
        }
    }
    let scale = 1.0 / (p as f64 * config.gradient_accumulation_steps as f64);
    let (mut loss, mut m) = (0.0, DpoMetrics::default());
    let (mut dchosen, mut drejected) = (Vec::with_capacity(p), Vec::with_capacity(p));
    for i in 0..p {
        let chosen = inputs.chosen_logp[i] - inputs.ref_chosen_logp[i];
        let rejected = inputs.rejected_logp[i] - inputs.ref_rejected_logp[i];
        let (value, grad) = pair_loss(chosen - rejected, config);
        loss += value * scale;
        dchosen.push(grad * scale);
        drejected.push(-grad * scale);
        let (rc, rr) = (config.beta * chosen, config.beta * rejected);
        m.rewards_chosen += rc;
        m.rewards_rejected += rr;
        m.rewards_accuracies += f64::from(u8::from(rc > rr));
        m.rewards_margins += rc - rr;
        m.logps_chosen += inputs.chosen_logp[i];
        m.logps_rejected += inputs.rejected_logp[i];
    }
    let n = p as f64;
    let metrics = DpoMetrics {
        rewards_chosen: m.rewards_chosen / n,
        rewards_rejected: m.rewards_rejected / n,
        rewards_accuracies: m.rewards_accuracies / n,
        rewards_margins: m.rewards_margins / n,
        logps_chosen: m.logps_chosen / n,
        logps_rejected: m.logps_rejected / n,
    };
    Ok(DpoLossOutput { loss, dchosen, drejected, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gradient_matches_finite_differences() {
        for loss_type in [DpoLossType::Sigmoid, DpoLossType::Robust] {
            let label_smoothing = if loss_type == DpoLossType::Robust { 0.1 } else { 0.0 };
            let cfg = DpoLossConfig { beta: 0.3, loss_type, label_smoothing, gradient_accumulation_steps: 2 };
            let c = [-3.0, -10.0];
            let r = [-4.0, -2.0];
            let (rc, rr) = ([-3.5, -9.0], [-3.0, -2.5]);
            let at = |c: &[f64], r: &[f64]| {
                let inputs = DpoLossInputs {
                    chosen_logp: c,
                    rejected_logp: r,
                    ref_chosen_logp: &rc,
                    ref_rejected_logp: &rr,
                };
                dpo_loss(&inputs, &cfg).unwrap()
            };
            let out = at(&c, &r);
            let h = 1e-6;
            for i in 0..2 {
                let (mut cp, mut cm) = (c, c);
                cp[i] += h;
                cm[i] -= h;
                let fd = (at(&cp, &r).loss - at(&cm, &r).loss) / (2.0 * h);
                assert!(
                    (fd - out.dchosen[i]).abs() < 1e-8,
                    "{loss_type:?} pair {i}: {fd} vs {}",
                    out.dchosen[i]
                );
                assert_eq!(out.drejected[i], -out.dchosen[i]);
            }
            assert_eq!(out.metrics.rewards_accuracies, 0.5);
        }
    }

    #[test]
    fn extreme_margins_stay_finite() {
        let cfg = DpoLossConfig::default();
        for z in [-1e5, 1e5] {
            let (v, g) = pair_loss(z, &cfg);
            assert!(v.is_finite() && g.is_finite(), "z = {z}: {v} {g}");
        }
        assert!((log_sigmoid(0.0) + std::f64::consts::LN_2).abs() < 1e-15);
    }

    #[test]
    fn bad_configs_and_inputs_name_the_field() {
        let err = |cfg: DpoLossConfig| cfg.validate().unwrap_err().to_string();
        assert!(err(DpoLossConfig { beta: 0.0, ..Default::default() }).contains("`beta`"));
        assert!(err(DpoLossConfig { label_smoothing: 0.1, ..Default::default() }).contains("robust"));
        let robust =
            DpoLossConfig { loss_type: DpoLossType::Robust, label_smoothing: 0.5, ..Default::default() };
        assert!(err(robust).contains("[0, 0.5)"));
        let one = [0.0];
        let inputs = DpoLossInputs {
            chosen_logp: &one,
            rejected_logp: &[],
            ref_chosen_logp: &one,
            ref_rejected_logp: &one,
        };
        let e = dpo_loss(&inputs, &DpoLossConfig::default()).unwrap_err().to_string();
        assert!(e.contains("rejected_logp has 0 entries for 1 pairs"), "{e}");
    }
}
