//! The metrics TRL 1.16 logs for a GRPO micro-batch (`_compute_loss`, its "Log the metrics" block): the
//! mean KL and the clip ratios, over this micro-batch's active tokens (one process: TRL's all-reduce of
//! sums and counts is the identity).

/// What the loss recorded about one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TokenFlags {
    /// In the loss mask.
    pub active: bool,
    /// `c1 < 1 − ε` with `A < 0`: the lower clip holds the ratio.
    pub low_clipped: bool,
    /// `c1 > 1 + ε_high` with `A > 0`: the upper clip holds it.
    pub high_clipped: bool,
    /// The KL term `K` (with the ratio factor when bias-corrected), when `beta ≠ 0`.
    pub kl: Option<f64>,
}

impl TokenFlags {
    pub const MASKED: TokenFlags =
        TokenFlags { active: false, low_clipped: false, high_clipped: false, kl: None };
}

/// TRL's logged metrics of one micro-batch (names in [`LossMetrics::trl_named`]). Means are over active
/// tokens (0 when there are none, as TRL's `clamp(min=1)`); `*_min` / `*_max` are over the sequences that
/// have active tokens (`None` if none has: TRL logs NaN). TRL computes the clip ratios in float32.
#[derive(Debug, Clone, PartialEq)]
pub struct LossMetrics {
    /// Tokens in the loss mask.
    pub active_tokens: usize,
    /// `kl`: mean of the KL term `K` (ratio-weighted when bias-corrected); `None` when `beta = 0`.
    pub kl: Option<f64>,
    /// `clip_ratio/low_mean`: share of tokens the lower clip holds (`r < 1 − ε`, `A < 0`).
    pub clip_ratio_low_mean: f64,
    /// `clip_ratio/high_mean`: share the upper clip holds (`r > 1 + ε_high`, `A > 0`).
    pub clip_ratio_high_mean: f64,
    /// `clip_ratio/region_mean`: share held by either.
    pub clip_ratio_region_mean: f64,
    /// `clip_ratio/low_min`: the smallest per-sequence share of low-clipped tokens.
    pub clip_ratio_low_min: Option<f64>,
    /// `clip_ratio/high_max`: the largest per-sequence share of high-clipped tokens.
    pub clip_ratio_high_max: Option<f64>,
}

impl LossMetrics {
    /// The metrics under TRL's log names (those it would log: `kl` only with `beta ≠ 0`; a `None` min or
    /// max left out, as TRL's logger drops NaN).
    pub fn trl_named(&self) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        if let Some(kl) = self.kl {
            out.push(("kl", kl));
        }
        out.push(("clip_ratio/low_mean", self.clip_ratio_low_mean));
        out.push(("clip_ratio/high_mean", self.clip_ratio_high_mean));
        out.push(("clip_ratio/region_mean", self.clip_ratio_region_mean));
        if let Some(v) = self.clip_ratio_low_min {
            out.push(("clip_ratio/low_min", v));
        }
        if let Some(v) = self.clip_ratio_high_max {
            out.push(("clip_ratio/high_max", v));
        }
        out
    }
}

/// The metrics from each token's flags (N) and the sequence lengths (S); `with_kl` when `beta ≠ 0`.
pub(super) fn metrics(flags: &[TokenFlags], lengths: &[usize], with_kl: bool) -> LossMetrics {
    let active = flags.iter().filter(|f| f.active).count();
    let mean = |pick: &dyn Fn(&TokenFlags) -> f64| -> f64 {
        flags.iter().filter(|f| f.active).map(pick).sum::<f64>() / active.max(1) as f64
    };
    let indicator = |b: bool| if b { 1.0 } else { 0.0 };
    let kl = with_kl.then(|| mean(&|f| f.kl.unwrap_or(0.0)));
    let mut low_min: Option<f64> = None;
    let mut high_max: Option<f64> = None;
    let mut start = 0;
    for &len in lengths {
        let seq = &flags[start..start + len];
        start += len;
        let n = seq.iter().filter(|f| f.active).count();
        if n == 0 {
            continue;
        }
        let share = |pick: fn(&TokenFlags) -> bool| {
            seq.iter().filter(|f| f.active && pick(f)).count() as f64 / n as f64
        };
        let low = share(|f| f.low_clipped);
        let high = share(|f| f.high_clipped);
        low_min = Some(low_min.map_or(low, |m| m.min(low)));
        high_max = Some(high_max.map_or(high, |m| m.max(high)));
    }
    LossMetrics {
        active_tokens: active,
        kl,
        clip_ratio_low_mean: mean(&|f| indicator(f.low_clipped)),
        clip_ratio_high_mean: mean(&|f| indicator(f.high_clipped)),
        clip_ratio_region_mean: mean(&|f| indicator(f.low_clipped || f.high_clipped)),
        clip_ratio_low_min: low_min,
        clip_ratio_high_max: high_max,
    }
}
