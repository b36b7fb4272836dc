//! GRPO's objective (`babelrl::train::grpo`) against TRL 1.16: tests/fixtures/grpo-loss-reference.json, made
//! by scripts/fixtures_grpo_loss.py running TRL's own `GRPOTrainer._compute_loss` with torch autograd in
//! float64. Every case's loss, per-token gradient and logged metrics; the advantages for each
//! `scale_rewards`; the loss mask; the gradient against finite differences (one case per loss type); and a
//! deliberately wrong normaliser, built here from the public per-token functions, shown to fail.

use std::collections::BTreeMap;

use babelrl::train::grpo::{
    GrpoLossConfig, LossInputs, LossOutput, LossType, ScaleRewards, advantages, clipped_surrogate,
    completion_mask, grpo_loss, kl_term,
};
use serde::Deserialize;

use crate::common::repo_root;

/// f32's unit roundoff: the f32 gradient is the f64 result rounded once.
const HALF_ULP: f64 = f32::EPSILON as f64 / 2.0;
/// The loss is a sum of ≤ 60 f64 terms of magnitude ≤ 1 computed in another order than torch's.
const LOSS_TOL: f64 = 1e-13;

#[derive(Deserialize)]
struct Fixture {
    group_size: usize,
    eos_ids: Vec<u32>,
    pad_id: u32,
    max_completion_length: usize,
    epsilon: f64,
    epsilon_high: f64,
    gradient_accumulation_steps: usize,
    steps_per_generation: usize,
    num_processes: usize,
    completions: Vec<Vec<u32>>,
    lengths: Vec<usize>,
    mask: BTreeMap<String, Vec<u8>>,
    num_items_in_batch: BTreeMap<String, usize>,
    rewards: Vec<Option<f64>>,
    advantages: BTreeMap<String, Vec<f64>>,
    advantages_f32: BTreeMap<String, Vec<f32>>,
    logp: Vec<f32>,
    old_logp: Vec<f32>,
    ref_logp: Vec<f32>,
    cases: Vec<Case>,
}

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    loss_type: LossType,
    scale_rewards: ScaleRewards,
    beta: f64,
    old: bool,
    mask_truncated_completions: bool,
    delta: Option<f64>,
    use_bias_correction_kl: bool,
    loss: f64,
    grad: Vec<f64>,
    metrics: BTreeMap<String, Option<f64>>,
}

fn fixture() -> Fixture {
    let path = repo_root().join("tests/fixtures/grpo-loss-reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn scale_key(scale: ScaleRewards) -> &'static str {
    match scale {
        ScaleRewards::Group => "group",
        ScaleRewards::Batch => "batch",
        ScaleRewards::None => "none",
    }
}

/// A case's mask, as bools.
fn mask_of(f: &Fixture, case: &Case) -> Vec<bool> {
    f.mask[&case.mask_truncated_completions.to_string()].iter().map(|&m| m == 1).collect()
}

fn config_of(f: &Fixture, case: &Case) -> GrpoLossConfig {
    GrpoLossConfig {
        loss_type: case.loss_type,
        beta: case.beta,
        epsilon: f.epsilon,
        epsilon_high: Some(f.epsilon_high),
        delta: case.delta,
        use_bias_correction_kl: case.use_bias_correction_kl,
        max_completion_length: f.max_completion_length,
        gradient_accumulation_steps: f.gradient_accumulation_steps,
        steps_per_generation: Some(f.steps_per_generation),
        num_processes: f.num_processes,
    }
}

/// The case's inputs, with `logp` given (the fixture's, or a perturbed copy).
fn inputs_of<'a>(f: &'a Fixture, case: &Case, logp: &'a [f32], mask: &'a [bool]) -> LossInputs<'a> {
    LossInputs {
        logp,
        old_logp: case.old.then_some(&f.old_logp[..]),
        ref_logp: (case.beta != 0.0).then_some(&f.ref_logp[..]),
        mask,
        lengths: &f.lengths,
        advantages: &f.advantages_f32[scale_key(case.scale_rewards)],
        num_items_in_batch: f.num_items_in_batch[&case.mask_truncated_completions.to_string()],
    }
}

fn run(f: &Fixture, case: &Case) -> LossOutput {
    let mask = mask_of(f, case);
    grpo_loss(&inputs_of(f, case, &f.logp, &mask), &config_of(f, case))
        .unwrap_or_else(|e| panic!("case {}: {e}", case.name))
}

/// Compares a result with TRL's for one case; the error names the case and the first quantity that differs.
fn compare(case: &Case, loss: f64, dlogp: &[f32], metrics: &[(&str, f64)]) -> Result<(), String> {
    let name = &case.name;
    if (loss - case.loss).abs() > LOSS_TOL * (1.0 + case.loss.abs()) {
        return Err(format!("case {name}: loss {loss:e}, TRL {:e}", case.loss));
    }
    if dlogp.len() != case.grad.len() {
        return Err(format!("case {name}: {} gradients, TRL {}", dlogp.len(), case.grad.len()));
    }
    for (t, (&got, &want)) in dlogp.iter().zip(&case.grad).enumerate() {
        let tol = HALF_ULP * want.abs() * (1.0 + 1e-9) + 1e-300;
        if (got as f64 - want).abs() > tol {
            return Err(format!("case {name}: d loss / d logp[{t}] = {got:e}, TRL {want:e} (tol {tol:.1e})"));
        }
    }
    let trl: BTreeMap<&str, f64> =
        case.metrics.iter().filter_map(|(k, v)| v.map(|v| (k.as_str(), v))).collect();
    let ours: BTreeMap<&str, f64> = metrics.iter().copied().collect();
    if trl.keys().collect::<Vec<_>>() != ours.keys().collect::<Vec<_>>() {
        return Err(format!("case {name}: metrics {:?}, TRL logs {:?}", ours.keys(), trl.keys()));
    }
    for (key, want) in trl {
        // TRL computes the clip ratios in float32 (`.float()`), the KL in the log-probs' float64.
        let tol = if key == "kl" { 1e-13 * want.abs() + 1e-16 } else { 2.0 * HALF_ULP * want.abs() };
        if (ours[key] - want).abs() > tol {
            return Err(format!("case {name}: metric {key} = {}, TRL {want}", ours[key]));
        }
    }
    Ok(())
}

#[test]
fn loss_gradient_and_metrics_match_trl_for_every_case() {
    let f = fixture();
    assert_eq!(f.cases.len(), 74, "the fixture's case grid");
    let mut failures = Vec::new();
    for case in &f.cases {
        let out = run(&f, case);
        if let Err(e) = compare(case, out.loss, &out.dlogp, &out.metrics.trl_named()) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from TRL:\n{}",
        failures.len(),
        f.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn advantages_match_trl_for_each_scaling() {
    let f = fixture();
    let rewards: Vec<f64> = f.rewards.iter().map(|r| r.unwrap_or(f64::NAN)).collect();
    for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
        let got = advantages(&rewards, f.group_size, scale).unwrap();
        let want = &f.advantages[scale_key(scale)];
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= HALF_ULP * w.abs() * (1.0 + 1e-9),
                "scale_rewards {scale:?}: advantage {i} = {g}, TRL {w}"
            );
        }
        assert_eq!(got.len(), want.len());
    }
}

#[test]
fn loss_mask_matches_trl() {
    let f = fixture();
    for truncated in [false, true] {
        let got: Vec<u8> = f
            .completions
            .iter()
            .flat_map(|c| completion_mask(c, &f.eos_ids, Some(f.pad_id), truncated))
            .map(u8::from)
            .collect();
        assert_eq!(got, f.mask[&truncated.to_string()], "mask_truncated_completions = {truncated}");
    }
    let lengths: Vec<usize> = f.completions.iter().map(Vec::len).collect();
    assert_eq!(lengths, f.lengths);
}

/// Central differences of the loss in each token's log-prob against the analytic gradient, one off-policy
/// case per loss type (on-policy, TRL's old log-probs are `logp.detach()`: they follow any perturbation of
/// `logp` in value, so finite differences see no ratio at all). `h` = 2⁻¹⁰ keeps `logp ± h` exact in f32;
/// tokens within a few `h` of a clip bound (a kink) are skipped.
#[test]
fn gradient_matches_finite_differences() {
    let f = fixture();
    let h = 2f32.powi(-10);
    for loss_type in [LossType::Grpo, LossType::Bnpo, LossType::DrGrpo, LossType::Dapo] {
        let case = f
            .cases
            .iter()
            .find(|c| {
                c.loss_type == loss_type
                    && c.old
                    && c.beta != 0.0
                    && c.delta.is_none()
                    && c.use_bias_correction_kl
            })
            .expect("an off-policy case with KL per loss type");
        let mask = mask_of(&f, case);
        let config = config_of(&f, case);
        let out = run(&f, case);
        let max_grad = out.dlogp.iter().fold(0.0f64, |m, g| m.max(g.abs() as f64));
        let (lo, hi) = (1.0 - f.epsilon, 1.0 + f.epsilon_high);
        let (mut checked, mut worst) = (0, 0.0f64);
        for t in 0..f.logp.len() {
            let r = ((f.logp[t] - f.old_logp[t]) as f64).exp();
            if (r - lo).abs() < 4.0 * h as f64 * r || (r - hi).abs() < 4.0 * h as f64 * r {
                continue;
            }
            let loss_at = |x: f32| {
                let mut logp = f.logp.clone();
                logp[t] = x;
                assert_eq!((x - f.logp[t]).abs(), h, "logp[{t}] ± h is not exact in f32");
                grpo_loss(&inputs_of(&f, case, &logp, &mask), &config).unwrap().loss
            };
            let fd = (loss_at(f.logp[t] + h) - loss_at(f.logp[t] - h)) / (2.0 * h as f64);
            let err = (fd - out.dlogp[t] as f64).abs();
            assert!(
                err <= 1e-6 * max_grad,
                "case {}: token {t}: finite difference {fd:e}, analytic {:e} (max |grad| {max_grad:e})",
                case.name,
                out.dlogp[t]
            );
            worst = worst.max(err / max_grad);
            checked += 1;
        }
        assert!(checked >= f.logp.len() - 4, "case {}: only {checked} tokens away from a kink", case.name);
        eprintln!("{}: {checked} tokens, worst |fd − grad| / max|grad| = {worst:.2e}", case.name);
    }
}

/// A loss built here from the public per-token terms with a caller's token weights (the normaliser), so
/// a wrong normaliser can be put through the same comparison. Returns the loss and `d loss / d logp`.
fn loss_with_weights(f: &Fixture, case: &Case, weight: impl Fn(usize, usize) -> f64) -> (f64, Vec<f32>) {
    let mask = mask_of(f, case);
    let adv = &f.advantages_f32[scale_key(case.scale_rewards)];
    let (mut loss, mut grad) = (0.0, vec![0.0f32; f.logp.len()]);
    let mut t = 0;
    for (s, &len) in f.lengths.iter().enumerate() {
        for _ in 0..len {
            if mask[t] {
                let lp = f.logp[t] as f64;
                let old = if case.old { f.old_logp[t] as f64 } else { lp };
                let r = (lp - old).exp();
                let (mut v, dr) = clipped_surrogate(r, adv[s] as f64, case.delta, f.epsilon, f.epsilon_high);
                let mut d = dr * r;
                if case.beta != 0.0 {
                    let (k, dk) = kl_term(lp, f.ref_logp[t] as f64, r, case.use_bias_correction_kl);
                    v += case.beta * k;
                    d += case.beta * dk;
                }
                let w = weight(s, t);
                loss += w * v;
                grad[t] = (w * d) as f32;
            }
            t += 1;
        }
    }
    (loss, grad)
}

/// The comparison catches a normaliser that is slightly off: `grpo` dividing each sequence by its length
/// instead of its active tokens (they differ only on the sequence with tokens after its EOS), and `dapo`
/// forgetting the other processes (`num_processes`). The same helper with the right weights passes, so it
/// is the normaliser that fails, not the helper.
#[test]
fn a_wrong_normaliser_fails_the_comparison() {
    let f = fixture();
    let pick = |lt: LossType| {
        f.cases
            .iter()
            .find(|c| {
                c.loss_type == lt
                    && c.old
                    && c.beta != 0.0
                    && !c.mask_truncated_completions
                    && c.delta.is_none()
            })
            .unwrap()
            .clone()
    };
    let mask = mask_of(&f, &pick(LossType::Grpo));
    let seqs = f.lengths.len() as f64;
    let ga = f.gradient_accumulation_steps as f64;
    let starts: Vec<usize> = f
        .lengths
        .iter()
        .scan(0, |acc, &n| {
            let s = *acc;
            *acc += n;
            Some(s)
        })
        .collect();
    let active = |s: usize| mask[starts[s]..starts[s] + f.lengths[s]].iter().filter(|&&m| m).count();

    let grpo = pick(LossType::Grpo);
    let right = loss_with_weights(&f, &grpo, |s, _| 1.0 / (active(s).max(1) as f64 * seqs * ga));
    compare(&grpo, right.0, &right.1, &run(&f, &grpo).metrics.trl_named())
        .expect("the helper with TRL's weights");
    let wrong = loss_with_weights(&f, &grpo, |s, _| 1.0 / (f.lengths[s] as f64 * seqs * ga));
    let err = compare(&grpo, wrong.0, &wrong.1, &run(&f, &grpo).metrics.trl_named()).unwrap_err();
    assert!(err.contains(&grpo.name), "{err}");
    eprintln!("grpo over full lengths: {err}");

    let dapo = pick(LossType::Dapo);
    let items = f.num_items_in_batch["false"] as f64;
    let spg = f.steps_per_generation as f64;
    let right = loss_with_weights(&f, &dapo, |_, _| 1.0 / (items / f.num_processes as f64 * ga / spg));
    compare(&dapo, right.0, &right.1, &run(&f, &dapo).metrics.trl_named())
        .expect("the helper with TRL's weights");
    let wrong = loss_with_weights(&f, &dapo, |_, _| 1.0 / (items * ga / spg));
    let err = compare(&dapo, wrong.0, &wrong.1, &run(&f, &dapo).metrics.trl_named()).unwrap_err();
    assert!(err.contains(&dapo.name), "{err}");
    eprintln!("dapo without num_processes: {err}");

    // And no loss type passes for another (their normalisers all differ on this batch).
    for case in [&grpo, &dapo, &pick(LossType::Bnpo), &pick(LossType::DrGrpo)] {
        for other in [LossType::Grpo, LossType::Bnpo, LossType::DrGrpo, LossType::Dapo] {
            if other == case.loss_type {
                continue;
            }
            let impostor = Case { loss_type: other, ..case.clone() };
            let out = run(&f, &impostor);
            assert!(
                compare(case, out.loss, &out.dlogp, &out.metrics.trl_named()).is_err(),
                "{other:?} passes for {}",
                case.name
            );
        }
    }
}

#[test]
fn bad_inputs_are_named() {
    let f = fixture();
    let case = f.cases.iter().find(|c| c.beta != 0.0 && c.loss_type == LossType::Dapo).unwrap();
    let mask = mask_of(&f, case);
    let config = config_of(&f, case);
    let err =
        |inputs: LossInputs, config: &GrpoLossConfig| grpo_loss(&inputs, config).unwrap_err().to_string();
    let ok = inputs_of(&f, case, &f.logp, &mask);
    assert!(err(LossInputs { ref_logp: None, ..ok }, &config).contains("needs the reference log-probs"));
    assert!(err(LossInputs { logp: &f.logp[1..], ..ok }, &config).contains("logp has 59 tokens"));
    assert!(err(LossInputs { advantages: &[0.0], ..ok }, &config).contains("1 advantages for 12 sequences"));
    assert!(err(LossInputs { num_items_in_batch: 3, ..ok }, &config).contains("num_items_in_batch = 3"));
    let mut nan = f.logp.clone();
    nan[7] = f32::NAN;
    assert!(err(LossInputs { logp: &nan, ..ok }, &config).contains("logp[7] (sequence 1"));
    let bad = GrpoLossConfig { gradient_accumulation_steps: 0, ..config.clone() };
    assert!(err(ok, &bad).contains("`gradient_accumulation_steps` must be ≥ 1"));
    let parsed: GrpoLossConfig = serde_json::from_str(r#"{"loss_type": "dr_grpo", "beta": 0.04}"#).unwrap();
    assert_eq!(
        (parsed.loss_type, parsed.epsilon, parsed.max_completion_length),
        (LossType::DrGrpo, 0.2, 512)
    );
    assert!(
        serde_json::from_str::<GrpoLossConfig>(r#"{"betta": 0.1}"#).is_err(),
        "unknown fields are refused"
    );
}
