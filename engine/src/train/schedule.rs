//! Learning-rate schedules exactly as transformers' `get_scheduler` lambdas (constant,
//! constant_with_warmup, linear, cosine with half a cycle): pure functions of the optimizer step.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// transformers' `lr_scheduler_type` (the subset babelrl implements), spelled as in TrainingArguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    /// Warmup, then linear decay to 0 at the last step (transformers' default).
    #[default]
    Linear,
    /// Warmup, then half a cosine down to 0 at the last step.
    Cosine,
    /// The learning rate throughout; warmup is ignored, as transformers' `get_constant_schedule`.
    Constant,
    /// Warmup, then the learning rate.
    ConstantWithWarmup,
}

/// A schedule resolved for one run: the multiplier of the learning rate at each optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: SchedulerType,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// A schedule over `total_steps` optimizer steps. `warmup_steps` as TrainingArguments takes it: at
    /// least 1 is a number of steps (truncated), below 1 a ratio of `total_steps` (rounded up).
    pub fn new(kind: SchedulerType, warmup_steps: f64, total_steps: u64) -> Result<Self> {
        if !(warmup_steps >= 0.0 && warmup_steps.is_finite()) {
            return Err(Error::Input(format!(
                "warmup_steps must be a number of steps (≥ 1) or a ratio in [0, 1), got {warmup_steps}"
            )));
        }
        Ok(Self { kind, warmup_steps: resolve_warmup(warmup_steps, total_steps), total_steps })
    }

    /// The multiplier of the base learning rate for optimizer step `step` (0-based: the first
    /// `optimizer.step()` uses step 0, as a LambdaLR stepped after each optimizer step).
    pub fn multiplier(&self, step: u64) -> f64 {
        lr_lambda(self.kind, step, self.warmup_steps, self.total_steps)
    }

    /// The learning rate of optimizer step `step` for a base learning rate `base`.
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        base * self.multiplier(step)
    }
}

/// transformers' `TrainingArguments.get_warmup_steps`: `int(w)` if w ≥ 1 else `ceil(total · w)`.
pub fn resolve_warmup(warmup_steps: f64, total_steps: u64) -> u64 {
    if warmup_steps >= 1.0 { warmup_steps as u64 } else { (total_steps as f64 * warmup_steps).ceil() as u64 }
}

/// The lambda of transformers' schedule `kind` at `step` (`_get_linear_schedule_with_warmup_lr_lambda`,
/// `_get_cosine_schedule_with_warmup_lr_lambda` with num_cycles 0.5, …), in f64 as Python computes it.
/// Past `total` the cosine rises again, as transformers' does.
pub fn lr_lambda(kind: SchedulerType, step: u64, warmup: u64, total: u64) -> f64 {
    let warming = |step: u64| step as f64 / warmup.max(1) as f64;
    match kind {
        SchedulerType::Constant => 1.0,
        SchedulerType::ConstantWithWarmup if step < warmup => warming(step),
        SchedulerType::ConstantWithWarmup => 1.0,
        _ if step < warmup => warming(step),
        SchedulerType::Linear => {
            let left = total as f64 - step as f64;
            (left / total.saturating_sub(warmup).max(1) as f64).max(0.0)
        }
        SchedulerType::Cosine => {
            let num_cycles = 0.5;
            let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (warmup, total, linear, cosine, constant_with_warmup) for steps 0, 1, 2, …
    type Case = (u64, u64, &'static [f64], &'static [f64], &'static [f64]);

    /// Values printed by transformers 5.24 (`transformers.optimization._get_*_lr_lambda`) for
    /// steps 0, 1, 2, … of each (warmup, total) case.
    const CASES: &[Case] = &[
        (
            3,
            10,
            &[
                0.0,
                0.3333333333333333,
                0.6666666666666666,
                1.0,
                0.8571428571428571,
                0.7142857142857143,
                0.5714285714285714,
                0.42857142857142855,
                0.2857142857142857,
                0.14285714285714285,
                0.0,
                0.0,
                0.0,
            ],
            &[
                0.0,
                0.3333333333333333,
                0.6666666666666666,
                1.0,
                0.9504844339512095,
                0.8117449009293668,
                0.6112604669781572,
                0.38873953302184283,
                0.18825509907063326,
                0.04951556604879048,
                0.0,
                0.04951556604879043,
                0.18825509907063315,
            ],
            &[0.0, 0.3333333333333333, 0.6666666666666666, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        ),
        (
            0,
            7,
            &[
                1.0,
                0.8571428571428571,
                0.7142857142857143,
                0.5714285714285714,
                0.42857142857142855,
                0.2857142857142857,
                0.14285714285714285,
                0.0,
                0.0,
                0.0,
            ],
            &[
                1.0,
                0.9504844339512095,
                0.8117449009293668,
                0.6112604669781572,
                0.38873953302184283,
                0.18825509907063326,
                0.04951556604879048,
                0.0,
                0.04951556604879043,
                0.18825509907063315,
            ],
            &[1.0; 10],
        ),
        (
            5,
            5,
            &[0.0, 0.2, 0.4, 0.6, 0.8, 0.0, 0.0, 0.0],
            &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.0, 1.0],
            &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0],
        ),
        (
            4,
            3,
            &[0.0, 0.25, 0.5, 0.75, 0.0, 0.0],
            &[0.0, 0.25, 0.5, 0.75, 1.0, 0.0],
            &[0.0, 0.25, 0.5, 0.75, 1.0, 1.0],
        ),
    ];

    fn check(kind: SchedulerType, warmup: u64, total: u64, want: &[f64]) {
        for (step, &w) in want.iter().enumerate() {
            let got = lr_lambda(kind, step as u64, warmup, total);
            // The same f64 formula; only libm's cos may differ from Python's by an ulp or two.
            assert!(
                (got - w).abs() <= 4.0 * f64::EPSILON,
                "{kind:?} warmup={warmup} total={total} step={step}: got {got}, transformers {w}"
            );
        }
    }

    #[test]
    fn lambdas_match_transformers() {
        for &(warmup, total, linear, cosine, constant_warmup) in CASES {
            check(SchedulerType::Linear, warmup, total, linear);
            check(SchedulerType::Cosine, warmup, total, cosine);
            check(SchedulerType::ConstantWithWarmup, warmup, total, constant_warmup);
            check(SchedulerType::Constant, warmup, total, &vec![1.0; linear.len()]);
        }
    }

    #[test]
    fn warmup_is_steps_from_one_and_a_ratio_below() {
        assert_eq!(resolve_warmup(3.0, 100), 3);
        assert_eq!(resolve_warmup(2.7, 100), 2);
        assert_eq!(resolve_warmup(0.1, 95), 10); // ceil(9.5)
        assert_eq!(resolve_warmup(0.0, 95), 0);
        let s = Schedule::new(SchedulerType::Cosine, 2.0, 5).unwrap();
        assert_eq!(s.lr(1e-3, 1), 5e-4);
        assert!(Schedule::new(SchedulerType::Linear, -1.0, 5).is_err());
        assert!(Schedule::new(SchedulerType::Linear, f64::NAN, 5).is_err());
    }

    #[test]
    fn scheduler_names_are_transformers_names() {
        #[derive(Deserialize)]
        struct Row {
            lr_scheduler_type: SchedulerType,
        }
        for (name, kind) in [
            ("linear", SchedulerType::Linear),
            ("cosine", SchedulerType::Cosine),
            ("constant", SchedulerType::Constant),
            ("constant_with_warmup", SchedulerType::ConstantWithWarmup),
        ] {
            let row: Row = toml::from_str(&format!("lr_scheduler_type = \"{name}\"")).unwrap();
            assert_eq!(row.lr_scheduler_type, kind);
        }
        assert!(toml::from_str::<Row>("lr_scheduler_type = \"polynomial\"").is_err());
    }
}
