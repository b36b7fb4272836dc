//! The GRPO loss of one micro-batch and its gradient with respect to each completion token's log-prob, as
//! TRL 1.16's `GRPOTrainer._compute_loss` computes them (token-level importance sampling; the loss types
//! `grpo`, `bnpo`, `dr_grpo`, `dapo`), plus the metrics it logs. Pure functions of per-token arrays,
//! computed in f64.
//!
//! Notation: sequence s of the micro-batch (S of them) owns tokens t; `lp` is the policy's log-prob of the
//! token (temperature-scaled), `old` the sampling policy's, `ref` the reference's, `m ∈ {0, 1}` the loss
//! mask, `A_s` the sequence's advantage, `GA` the gradient-accumulation steps.
//! Per token: `r = exp(lp − old)`, `ℓ = −min(c1·A, c2·A) + β·K` with `c1 = r` (capped at `delta` if set),
//! `c2 = clamp(r, 1 − ε, 1 + ε_high)`, and the k3 KL `D = exp(ref − lp) − (ref − lp) − 1`, `K = r·D` (TRL's
//! `use_bias_correction_kl`, the default) or `K = D`. The loss is `Σ w_t·ℓ_t` with the weights
//! [`LossType`] gives; the gradient flows through `lp` only (`old` and `ref` are constants), and where
//! `min` has a tie or `clamp` sits on a bound it follows torch's autograd (half to each branch; bounds
//! inclusive).

use serde::{Deserialize, Serialize};

use super::metrics::{LossMetrics, TokenFlags, metrics};
use crate::{Error, Result};

/// How the per-token losses of a micro-batch are weighted into its loss (TRL's `loss_type`). Each divides
/// by `GA` (or, for `dapo`, builds it into the denominator) so that summing the micro-batches' gradients
/// over an accumulation window gives the step's gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// `L = (1/S) Σ_s [ Σ_t m·ℓ / max(Σ_t m, 1) ] / GA`: each sequence's token mean, then the mean over the
    /// micro-batch's sequences (DeepSeekMath's 1/|o_i|; a fully masked sequence still counts in S).
    Grpo,
    /// `L = Σ m·ℓ / max(Σ m, 1) / GA`: the token mean over this micro-batch's active tokens.
    Bnpo,
    /// `L = Σ m·ℓ / (S · max_completion_length) / GA`: a constant denominator (Dr. GRPO).
    DrGrpo,
    /// `L = Σ m·ℓ / (max(num_items_in_batch, 1) / P · GA / steps_per_generation)` (TRL's default): the token
    /// mean over every active token of the generation batch, all processes (P) and micro-batches.
    #[default]
    Dapo,
}

/// The loss's options, named and defaulted as TRL's `GRPOConfig` (token-level importance sampling only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoLossConfig {
    pub loss_type: LossType,
    /// Weight of the KL term; 0 (TRL's default) skips it and needs no reference log-probs.
    pub beta: f64,
    /// Lower clip: `r` below `1 − epsilon` stops pulling when `A < 0`.
    pub epsilon: f64,
    /// Upper clip `1 + epsilon_high` (DAPO's clip-higher; `None` = `epsilon`).
    pub epsilon_high: Option<f64>,
    /// INTELLECT-2's cap on the unclipped branch: `c1 = min(r, delta)`. The KL uses the uncapped `r`.
    pub delta: Option<f64>,
    /// Multiply the k3 KL by the importance ratio (TRL's default, DeepSeek-V3.2's unbiased estimator).
    pub use_bias_correction_kl: bool,
    /// Used by `dr_grpo` only.
    pub max_completion_length: usize,
    /// Micro-batches per optimizer step (TRL's `current_gradient_accumulation_steps`).
    pub gradient_accumulation_steps: usize,
    /// Micro-batches one generation batch spans (`dapo` only); `None` = `gradient_accumulation_steps`, as
    /// TRL.
    pub steps_per_generation: Option<usize>,
    /// Data-parallel processes (`dapo` only): babelrl runs one.
    pub num_processes: usize,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        GrpoLossConfig {
            loss_type: LossType::Dapo,
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: None,
            delta: None,
            use_bias_correction_kl: true,
            max_completion_length: 512,
            gradient_accumulation_steps: 1,
            steps_per_generation: None,
            num_processes: 1,
        }
    }
}

impl GrpoLossConfig {
    /// Refuses values TRL would turn into NaN or a meaningless loss, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::Input(format!("grpo loss config: `{field}` {why}")));
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !self.beta.is_finite() {
            return bad("beta", "must be a finite number");
        }
        if !finite_nonneg(self.epsilon) || !self.epsilon_high.is_none_or(finite_nonneg) {
            return bad("epsilon / epsilon_high", "must be finite and ≥ 0");
        }
        if !self.delta.is_none_or(|d| d.is_finite() && d > 0.0) {
            return bad("delta", "must be a finite number > 0 (TRL recommends > 1 + epsilon_high)");
        }
        for (field, v) in [
            ("max_completion_length", self.max_completion_length),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("steps_per_generation", self.steps_per_generation.unwrap_or(1)),
            ("num_processes", self.num_processes),
        ] {
            if v == 0 {
                return bad(field, "must be ≥ 1");
            }
        }
        Ok(())
    }

    /// The upper clip's epsilon (`epsilon_high`, else `epsilon`).
    pub fn epsilon_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }
}

/// One micro-batch's per-token inputs. Sequences are laid end to end: sequence s owns the next
/// `lengths[s]` entries of every per-token array (N = Σ lengths): every completion token the policy was
/// scored on, masked or not, no padding.
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// (N) `log π_θ` of each completion token under the policy being trained, of the **temperature-scaled**
    /// logits (`log_softmax(z / temperature)`, as TRL); the gradient is taken with respect to these.
    pub logp: &'a [f32],
    /// (N) the sampling policy's log-probs, fixed at generation (`num_iterations > 1`, or generation not
    /// aligned with the optimizer step). `None`: TRL's `old = logp.detach()`, so `r = 1` in value but its
    /// gradient still flows (clipping never fires).
    pub old_logp: Option<&'a [f32]>,
    /// (N) the reference policy's log-probs (the base model, adapter off); required iff `beta ≠ 0`.
    pub ref_logp: Option<&'a [f32]>,
    /// (N) TRL's loss mask ([`super::completion_mask`]): false tokens contribute nothing.
    pub mask: &'a [bool],
    /// (S) tokens of each sequence.
    pub lengths: &'a [usize],
    /// (S) each sequence's advantage ([`super::advantages`]), broadcast over its tokens.
    pub advantages: &'a [f32],
    /// `dapo` only: TRL's `num_items_in_batch`, the active (mask true) tokens of the whole generation batch
    /// — every micro-batch of it and every process — so it is at least this micro-batch's count.
    pub num_items_in_batch: usize,
}

/// The loss of a micro-batch, its gradient and its metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOutput {
    /// The loss to back-propagate (TRL's `loss`, already divided for gradient accumulation).
    pub loss: f64,
    /// (N) `d loss / d logp` per token (0 where masked); the training walk's `token_grad` is its negation on
    /// the target rows ([`super::nll_grad`]).
    pub dlogp: Vec<f32>,
    pub metrics: LossMetrics,
}

/// The GRPO loss of one micro-batch, its gradient with respect to `inputs.logp` and TRL's metrics.
/// Errors name the array or field that does not fit: lengths that disagree, a missing reference with
/// `beta ≠ 0`, a non-finite value on an active token, a `num_items_in_batch` smaller than the micro-batch.
pub fn grpo_loss(inputs: &LossInputs, config: &GrpoLossConfig) -> Result<LossOutput> {
    config.validate()?;
    check_inputs(inputs, config)?;
    let weights = token_weights(inputs, config);
    let eps_low = config.epsilon;
    let eps_high = config.epsilon_high();
    let n = inputs.logp.len();
    let mut loss = 0.0f64;
    let mut dlogp = vec![0.0f32; n];
    let mut flags = Vec::with_capacity(n);
    for (t, (s, w)) in token_sequences(inputs.lengths).zip(&weights).enumerate() {
        if !inputs.mask[t] {
            flags.push(TokenFlags::MASKED);
            continue;
        }
        let lp = inputs.logp[t] as f64;
        let old = inputs.old_logp.map_or(lp, |o| o[t] as f64);
        let adv = inputs.advantages[s] as f64;
        let r = (lp - old).exp();
        let c1 = capped_ratio(r, config.delta);
        let (surrogate, dsurrogate_dr) = clipped_surrogate(r, adv, config.delta, eps_low, eps_high);
        let mut value = surrogate;
        let mut dvalue = dsurrogate_dr * r; // dr/dlp = r (old is a constant)
        let mut kl = None;
        if config.beta != 0.0 {
            let reference = inputs.ref_logp.expect("checked: beta ≠ 0 has ref_logp")[t] as f64;
            let (k, dk) = kl_term(lp, reference, r, config.use_bias_correction_kl);
            value += config.beta * k;
            dvalue += config.beta * dk;
            kl = Some(k);
        }
        loss += w * value;
        dlogp[t] = (w * dvalue) as f32;
        flags.push(TokenFlags {
            active: true,
            low_clipped: c1 < 1.0 - eps_low && adv < 0.0,
            high_clipped: c1 > 1.0 + eps_high && adv > 0.0,
            kl,
        });
    }
    Ok(LossOutput { loss, dlogp, metrics: metrics(&flags, inputs.lengths, config.beta != 0.0) })
}

/// `c1 = min(r, delta)`: the unclipped branch, capped when `delta` is set (`r` itself otherwise).
fn capped_ratio(r: f64, delta: Option<f64>) -> f64 {
    delta.map_or(r, |d| r.min(d))
}

/// The clipped surrogate `−min(c1·A, c2·A)` of one token and its derivative with respect to `r`, with
/// `c1 = min(r, delta)`, `c2 = clamp(r, 1 − eps_low, 1 + eps_high)`. Derivatives follow torch's autograd:
/// `clamp` passes the gradient where `r` lies within its bounds, bounds included; a tie in `min` (always the
/// case inside the clip window) sends half the gradient to each branch.
pub fn clipped_surrogate(r: f64, adv: f64, delta: Option<f64>, eps_low: f64, eps_high: f64) -> (f64, f64) {
    let c1 = capped_ratio(r, delta);
    let dc1 = if delta.is_none_or(|d| r <= d) { 1.0 } else { 0.0 };
    let (lo, hi) = (1.0 - eps_low, 1.0 + eps_high);
    let c2 = r.max(lo).min(hi);
    let dc2 = if (lo..=hi).contains(&r) { 1.0 } else { 0.0 };
    let (x1, x2) = (c1 * adv, c2 * adv);
    let dmin = if x1 < x2 {
        dc1 * adv
    } else if x1 > x2 {
        dc2 * adv
    } else {
        0.5 * (dc1 * adv + dc2 * adv)
    };
    (-x1.min(x2), -dmin)
}

/// The KL term of one token and its derivative with respect to `lp`: the k3 estimator
/// `D = exp(ref − lp) − (ref − lp) − 1` (`dD/dlp = 1 − exp(ref − lp)`), times the unclipped ratio `r` with
/// `bias_correction` (`d(r·D)/dlp = r·dD/dlp + r·D`, as `dr/dlp = r`).
pub fn kl_term(lp: f64, reference: f64, r: f64, bias_correction: bool) -> (f64, f64) {
    let e = (reference - lp).exp();
    let d = e - (reference - lp) - 1.0;
    let dd = 1.0 - e;
    if bias_correction { (r * d, r * dd + r * d) } else { (d, dd) }
}

/// Each token's weight in the loss (0 where masked), from [`LossType`]'s formula.
fn token_weights(inputs: &LossInputs, config: &GrpoLossConfig) -> Vec<f64> {
    let ga = config.gradient_accumulation_steps as f64;
    let seqs = inputs.lengths.len() as f64;
    let active = inputs.mask.iter().filter(|&&m| m).count() as f64;
    let per_batch = |denominator: f64| -> Vec<f64> {
        inputs.mask.iter().map(|&m| if m { 1.0 / denominator } else { 0.0 }).collect()
    };
    match config.loss_type {
        LossType::Grpo => {
            let mut w = Vec::with_capacity(inputs.mask.len());
            let mut start = 0;
            for &len in inputs.lengths {
                let mask = &inputs.mask[start..start + len];
                let count = mask.iter().filter(|&&m| m).count().max(1) as f64;
                w.extend(mask.iter().map(|&m| if m { 1.0 / (count * seqs * ga) } else { 0.0 }));
                start += len;
            }
            w
        }
        LossType::Bnpo => per_batch(active.max(1.0) * ga),
        LossType::DrGrpo => per_batch(seqs * config.max_completion_length as f64 * ga),
        LossType::Dapo => {
            let spg = config.steps_per_generation.unwrap_or(config.gradient_accumulation_steps) as f64;
            let items = (inputs.num_items_in_batch as f64).max(1.0);
            per_batch(items / config.num_processes as f64 * ga / spg)
        }
    }
}

/// The sequence index of each token, in order.
fn token_sequences(lengths: &[usize]) -> impl Iterator<Item = usize> + '_ {
    lengths.iter().enumerate().flat_map(|(s, &len)| std::iter::repeat_n(s, len))
}

fn check_inputs(inputs: &LossInputs, config: &GrpoLossConfig) -> Result<()> {
    let bad = |msg: String| Err(Error::Input(format!("grpo loss: {msg}")));
    let n: usize = inputs.lengths.iter().sum();
    if inputs.lengths.is_empty() {
        return bad("no sequences in the micro-batch".into());
    }
    for (name, len) in [
        ("logp", Some(inputs.logp.len())),
        ("mask", Some(inputs.mask.len())),
        ("old_logp", inputs.old_logp.map(<[f32]>::len)),
        ("ref_logp", inputs.ref_logp.map(<[f32]>::len)),
    ] {
        if let Some(len) = len.filter(|&len| len != n) {
            return bad(format!("{name} has {len} tokens, the sequence lengths add up to {n}"));
        }
    }
    if inputs.advantages.len() != inputs.lengths.len() {
        return bad(format!(
            "{} advantages for {} sequences (one per sequence)",
            inputs.advantages.len(),
            inputs.lengths.len()
        ));
    }
    if config.beta != 0.0 && inputs.ref_logp.is_none() {
        return bad(format!("beta = {} needs the reference log-probs (ref_logp)", config.beta));
    }
    if let Some(s) = inputs.advantages.iter().position(|a| !a.is_finite()) {
        return bad(format!("the advantage of sequence {s} is {}", inputs.advantages[s]));
    }
    let arrays = [("logp", Some(inputs.logp)), ("old_logp", inputs.old_logp), ("ref_logp", inputs.ref_logp)];
    for (t, s) in token_sequences(inputs.lengths).enumerate().filter(|&(t, _)| inputs.mask[t]) {
        for (name, values) in arrays {
            if let Some(v) = values.map(|v| v[t]).filter(|v| !v.is_finite()) {
                return bad(format!("{name}[{t}] (sequence {s}, an active token) is {v}"));
            }
        }
    }
    let active = inputs.mask.iter().filter(|&&m| m).count();
    if config.loss_type == LossType::Dapo && inputs.num_items_in_batch < active {
        return bad(format!(
            "num_items_in_batch = {} is less than this micro-batch's {active} active tokens: it counts the \
             active tokens of the whole generation batch (every micro-batch and process)",
            inputs.num_items_in_batch
        ));
    }
    Ok(())
}
