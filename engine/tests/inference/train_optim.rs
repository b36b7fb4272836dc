//! AdamW and global-norm clipping on the GPU: the kernels against their plain-Rust references
//! (`cpu_ref::adamw_step`, `cpu_ref::clip_grad_norm`) on random inputs of awkward sizes, and the whole
//! optimizer against torch (`tests/fixtures/adamw-reference.safetensors`, made by
//! `scripts/adamw_fixture.py`: torch.optim.AdamW + clip_grad_norm_ + transformers' warmup/cosine schedule).

use crate::common;

use babelrl::gpu::cpu_ref;
use babelrl::gpu::kernels_optim::{AdamwScalars, SUM_PARTIALS_PER_WORKGROUP, sum_squares_groups};
use babelrl::train::{AdamW, AdamWConfig, ParamSpec, Schedule, SchedulerType};
use common::{assert_close_by, gpu, random, repo_root};

const EPS: f32 = f32::EPSILON;

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Sequential f32 sums the norm's reduction chains over buffers of these sizes: one of at most 256
/// squares per invocation, one per pass over the partials (at most 256 each), and the clip kernel's
/// (at most 64).
fn reduction_levels(sizes: &[usize]) -> usize {
    let mut count: usize = sizes.iter().map(|&n| sum_squares_groups(n) * SUM_PARTIALS_PER_WORKGROUP).sum();
    let mut levels = 2;
    while count > SUM_PARTIALS_PER_WORKGROUP {
        count = sum_squares_groups(count) * SUM_PARTIALS_PER_WORKGROUP;
        levels += 1;
    }
    levels
}

/// Relative tolerance of the GPU norm against the f64 reference. Each level adds at most 256 positive
/// terms in sequence; their rounding errors are independent, of either sign, so the level's relative
/// error is about √256 · ε/2 with a spread well inside √256 · ε (the worst case, 256 · ε, needs every
/// rounding to go the same way and would let a dropped element through). The norm's square root halves
/// the sum's error; sqrt (≤ 2 ulp in WGSL), the grad_scale product and the reference's rounding to f32
/// add 4 ε. Measured: at most 2 ε on these inputs.
fn norm_rel_tol(sizes: &[usize]) -> f32 {
    (reduction_levels(sizes) as f32 * 16.0 / 2.0 + 4.0) * EPS
}

/// Runs the norm reduction and clip over random gradient buffers of the given sizes and compares with
/// the f64 reference (see [`check_norm_of`]).
fn check_norm(sizes: &[usize], grad_scale: f32, max_norm: f32, seed: u64) {
    let grads: Vec<Vec<f32>> =
        sizes.iter().enumerate().map(|(i, &n)| random(n, 1.0, seed + i as u64)).collect();
    check_norm_of(&grads, grad_scale, max_norm);
}

/// Runs the norm reduction and clip over these gradient buffers and compares with the f64 reference
/// within [`norm_rel_tol`].
fn check_norm_of(grads: &[Vec<f32>], grad_scale: f32, max_norm: f32) {
    let gpu = gpu();
    let sizes: Vec<usize> = grads.iter().map(Vec::len).collect();
    let specs: Vec<ParamSpec> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| ParamSpec { name: format!("p{i}"), len: n, weight_decay: true })
        .collect();
    let config = AdamWConfig { max_grad_norm: max_norm as f64, learning_rate: 0.0, ..Default::default() };
    let mut opt = AdamW::new(&gpu, config, specs).unwrap();
    let params: Vec<_> = sizes.iter().map(|&n| gpu.zeros("p", &[n]).unwrap()).collect();
    let grad_t: Vec<_> = grads.iter().map(|g| gpu.upload_f32("g", g, &[g.len()]).unwrap()).collect();
    let pairs: Vec<_> = params.iter().zip(&grad_t).collect();
    let mut batch = gpu.batch();
    opt.step(&mut batch, &pairs, 0.0, grad_scale).unwrap();
    batch.submit().unwrap();
    let got = opt.read_grad_norm(&gpu).unwrap();
    let refs: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
    let (norm, coef) = cpu_ref::clip_grad_norm(&refs, grad_scale, Some(max_norm));
    let rel = norm_rel_tol(&sizes);
    let tol = rel * norm;
    let what = format!("grad norm of {} buffers of sizes {:?}…", sizes.len(), &sizes[..sizes.len().min(4)]);
    assert!((got.norm - norm).abs() <= tol, "{what}: got {} want {norm} (tol {tol})", got.norm);
    // coef = max_norm / (norm + 1e-6): the norm's relative error, plus the division (2.5 ulp in WGSL) and
    // the reference's own addition and division.
    let coef_tol = (rel + 4.0 * EPS) * coef;
    assert!((got.coef - coef).abs() <= coef_tol, "{what}: coef {} want {coef} (tol {coef_tol})", got.coef);
    eprintln!("{what}: norm {} vs {norm}, coef {} vs {coef}", got.norm, got.coef);
}

#[test]
fn grad_norm_matches_reference_on_awkward_sizes() {
    // One element; below, at and past one workgroup's 16384; several buffers; clipping on and off.
    check_norm(&[1], 1.0, 1.0, 1);
    check_norm(&[63, 65, 16383], 0.5, 1.0, 2);
    check_norm(&[16384, 16385, 40001], 0.25, 1e6, 3);
}

/// Every element of a 16384-element buffer (one workgroup's) counts: with |x| in [0.5, 1), dropping any
/// one moves the norm by x²/(2Σ) ≥ 0.25 / (2 · 16384) ≈ 7.6e-6 relative (64 ε), three times the
/// tolerance (20 ε for its two levels). The old 768 ε (9.2e-5) let any one element of this buffer
/// (Σ ≈ 9590, so at most 5.2e-5) go missing: dropping its last element moves the norm by 4.4e-5.
#[test]
fn grad_norm_misses_no_element() {
    let grads: Vec<f32> =
        random(16384, 1.0, 11).iter().map(|&x| x.signum() * (0.5 + x.abs() / 2.0)).collect();
    check_norm_of(&[grads], 1.0, 1.0);
}

#[test]
fn grad_norm_reduces_over_several_levels() {
    // 300 buffers of 7 elements: 300 · 64 partials, reduced 19200 → 128 → 64 before the clip kernel.
    let sizes = vec![7; 300];
    check_norm(&sizes, 1.0, 2.0, 7);
}

/// Elementwise tolerance of `steps` AdamW steps run by two implementations of the same f32 operations:
/// WGSL's division (2.5 ulp) and square root (inherited from inverseSqrt, a few ulp) need not be
/// correctly rounded, and fused multiply-adds may be contracted differently, so each step may differ
/// by a few ulps of the magnitudes involved; those differences add up over the steps. 8 ε per step of
/// the tensor's largest magnitude bounds them.
fn step_tol(steps: usize, reference: &[f32]) -> f32 {
    8.0 * EPS * steps as f32 * max_abs(reference)
}

fn check_adamw_vs_reference(sizes: &[usize], seed: u64) {
    let gpu = gpu();
    let config = AdamWConfig {
        learning_rate: 1e-2,
        weight_decay: 0.05,
        max_grad_norm: 1.0,
        adam_epsilon: 1e-6,
        ..Default::default()
    };
    let specs: Vec<ParamSpec> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| ParamSpec { name: format!("p{i}"), len: n, weight_decay: i % 2 == 0 })
        .collect();
    let mut opt = AdamW::new(&gpu, config, specs).unwrap();
    let mut cpu_p: Vec<Vec<f32>> =
        sizes.iter().enumerate().map(|(i, &n)| random(n, 1.0, seed + 100 + i as u64)).collect();
    let mut cpu_m: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
    let mut cpu_v = cpu_m.clone();
    let params: Vec<_> = cpu_p.iter().map(|p| gpu.upload_f32("p", p, &[p.len()]).unwrap()).collect();
    let grads: Vec<_> = sizes.iter().map(|&n| gpu.zeros("g", &[n]).unwrap()).collect();
    let grad_scale = 0.5;
    for step in 1..=3u64 {
        let lr = config.learning_rate * [0.5, 1.0, 0.25][step as usize - 1];
        // Gradients of very different scales, so eps and the clip both matter.
        let g: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| random(n, [3.0, 1e-5, 0.2][(i + step as usize) % 3], seed + step * 10 + i as u64))
            .collect();
        for (t, gi) in grads.iter().zip(&g) {
            gpu.write_f32(t, gi);
        }
        let pairs: Vec<_> = params.iter().zip(&grads).collect();
        let mut batch = gpu.batch();
        opt.step(&mut batch, &pairs, lr, grad_scale).unwrap();
        batch.submit().unwrap();
        let norm = opt.read_grad_norm(&gpu).unwrap();
        let refs: Vec<&[f32]> = g.iter().map(|x| &x[..]).collect();
        let (want_norm, want_coef) = cpu_ref::clip_grad_norm(&refs, grad_scale, Some(1.0));
        assert!(
            (norm.norm - want_norm).abs() <= 1e-5 * want_norm,
            "step {step}: norm {norm:?} vs {want_norm}"
        );
        assert!(
            (norm.coef - want_coef).abs() <= 1e-5 * want_coef,
            "step {step}: coef {norm:?} vs {want_coef}"
        );
        for (i, spec) in opt.params().iter().enumerate() {
            let wd = if spec.weight_decay { config.weight_decay } else { 0.0 };
            let s = AdamwScalars::new(lr, 0.9, 0.999, 1e-6, wd, step, grad_scale);
            // The reference steps with the GPU's coefficient, so this compares the update alone.
            cpu_ref::adamw_step(&mut cpu_p[i], &g[i], &mut cpu_m[i], &mut cpu_v[i], norm.coef, &s);
        }
        let state = opt.state(&gpu).unwrap();
        for (i, spec) in opt.params().iter().enumerate() {
            let n = spec.len;
            let what = |t: &str| format!("{t} of {} (n={n}) after step {step}", spec.name);
            let got_p = gpu.read_f32(&params[i]).unwrap();
            let s = step as usize;
            let (tp, tm, tv) = (step_tol(s, &cpu_p[i]), step_tol(s, &cpu_m[i]), step_tol(s, &cpu_v[i]));
            assert_close_by(&what("param"), &got_p, &cpu_p[i], |_| tp);
            assert_close_by(&what("exp_avg"), &state.params[i].exp_avg, &cpu_m[i], |_| tm);
            assert_close_by(&what("exp_avg_sq"), &state.params[i].exp_avg_sq, &cpu_v[i], |_| tv);
        }
    }
    assert_eq!(opt.step_count(), 3);
}

#[test]
fn adamw_matches_reference_on_awkward_sizes() {
    check_adamw_vs_reference(&[1, 3, 63, 64, 65, 1000, 16385], 11);
}

#[test]
fn adamw_folds_grids_past_one_dimension() {
    // 65535 · 64 + 5 elements: the grid folds into y and the norm needs more than one level.
    check_adamw_vs_reference(&[65535 * 64 + 5], 21);
}

#[test]
fn optimizer_state_round_trips_and_mismatches_are_errors() {
    let gpu = gpu();
    let specs = vec![
        ParamSpec { name: "a".into(), len: 5, weight_decay: true },
        ParamSpec { name: "b".into(), len: 3, weight_decay: false },
    ];
    let mut opt = AdamW::new(&gpu, AdamWConfig::default(), specs.clone()).unwrap();
    let p = [
        gpu.upload_f32("a", &random(5, 1.0, 1), &[5]).unwrap(),
        gpu.upload_f32("b", &random(3, 1.0, 2), &[3]).unwrap(),
    ];
    let g = [
        gpu.upload_f32("ga", &random(5, 1.0, 3), &[5]).unwrap(),
        gpu.upload_f32("gb", &random(3, 1.0, 4), &[3]).unwrap(),
    ];
    let mut batch = gpu.batch();
    opt.step(&mut batch, &[(&p[0], &g[0]), (&p[1], &g[1])], 1e-3, 1.0).unwrap();
    batch.submit().unwrap();
    let state = opt.state(&gpu).unwrap();
    assert_eq!(state.step, 1);
    assert!(state.params[0].exp_avg.iter().any(|&x| x != 0.0));

    let mut fresh = AdamW::new(&gpu, AdamWConfig::default(), specs.clone()).unwrap();
    fresh.load_state(&gpu, &state).unwrap();
    assert_eq!(fresh.state(&gpu).unwrap(), state);

    let mut wrong = state.clone();
    wrong.params[1].name = "c".into();
    let err = fresh.load_state(&gpu, &wrong).unwrap_err().to_string();
    assert!(err.contains("`c`") && err.contains("`b`"), "{err}");
    let mut short = state.clone();
    short.params[0].exp_avg_sq.pop();
    let err = fresh.load_state(&gpu, &short).unwrap_err().to_string();
    assert!(err.contains("a.exp_avg_sq"), "{err}");

    // A gradient of the wrong size is an error naming the parameter, not a clamped read.
    let small = gpu.zeros("gb", &[2]).unwrap();
    let mut batch = gpu.batch();
    let err = opt.step(&mut batch, &[(&p[0], &g[0]), (&p[1], &small)], 1e-3, 1.0).unwrap_err().to_string();
    assert!(err.contains("b (gradient)"), "{err}");
    let err = opt.step(&mut batch, &[(&p[0], &g[0])], 1e-3, 1.0).unwrap_err().to_string();
    assert!(err.contains("1 parameters given"), "{err}");
}

/// The torch fixture: tensors by name, as f32 (or f64 for `lr`).
struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn f64(&self, name: &str) -> Vec<f64> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F64, "{name}");
        t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn meta(&self, key: &str) -> serde_json::Value {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&self.bytes).unwrap();
        let map = meta.metadata().as_ref().expect("fixture metadata");
        serde_json::from_str(&map[key]).unwrap()
    }
}

/// babelrl's optimizer, clip and schedule against torch.optim.AdamW + clip_grad_norm_ + transformers'
/// cosine-with-warmup LambdaLR over five steps with two accumulated micro-batches each (warmup makes
/// step 0's learning rate 0; step 3's gradients are too small to clip). The kernel performs torch's f32
/// operations in torch's order with the same f32 scalars, so differences come only from the norm's
/// summation order (a few ε relative, through the clip coefficient) and from WGSL's division and square
/// root, which need not be correctly rounded: a few ulps per step (`step_tol` for the moments; for
/// the parameters, per element, a rounding flip of p plus a few ulps of the step's largest change). A
/// wrong formula (eps inside the square root, weight decay applied after the update instead of before,
/// a missing bias correction) fails it.
#[test]
fn adamw_clip_and_schedule_match_torch() {
    let path = repo_root().join("tests/fixtures/adamw-reference.safetensors");
    let fx = Fixture { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) };
    let config = fx.meta("config");
    let tensors = fx.meta("tensors");
    let opt_config: AdamWConfig = serde_json::from_value(serde_json::json!({
        "learning_rate": config["learning_rate"],
        "adam_beta1": config["adam_beta1"],
        "adam_beta2": config["adam_beta2"],
        "adam_epsilon": config["adam_epsilon"],
        "weight_decay": config["weight_decay"],
        "max_grad_norm": config["max_grad_norm"],
    }))
    .unwrap();
    let steps = config["max_steps"].as_u64().unwrap();
    let accum = config["gradient_accumulation_steps"].as_u64().unwrap() as usize;
    assert_eq!(config["lr_scheduler_type"], "cosine");
    let schedule =
        Schedule::new(SchedulerType::Cosine, config["warmup_steps"].as_f64().unwrap(), steps).unwrap();

    let gpu = gpu();
    let specs: Vec<ParamSpec> = tensors
        .as_array()
        .unwrap()
        .iter()
        .map(|t| ParamSpec {
            name: t["name"].as_str().unwrap().into(),
            len: t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product(),
            weight_decay: t["weight_decay"].as_bool().unwrap(),
        })
        .collect();
    let mut opt = AdamW::new(&gpu, opt_config, specs.clone()).unwrap();
    let params: Vec<_> = specs
        .iter()
        .map(|s| gpu.upload_f32(&s.name, &fx.f32(&format!("init.{}", s.name)), &[s.len]).unwrap())
        .collect();
    let grads: Vec<_> = specs.iter().map(|s| gpu.zeros(&s.name, &[s.len]).unwrap()).collect();
    let torch_lr = fx.f64("lr");
    let torch_norm = fx.f32("grad_norm");
    // Parameters: per element, what each step may add — a rounding flip of p (2 ε |p|) and a few ulps of
    // the tensor's largest change that step (16 ε max |Δp|), so near-zero elements are checked tightly.
    let mut prev_p: Vec<Vec<f32>> = specs.iter().map(|s| fx.f32(&format!("init.{}", s.name))).collect();
    let mut tol_p: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.0; s.len]).collect();
    for step in 0..steps {
        // Micro-batch gradients summed (as backward accumulates them), scaled by 1 / accum in the step.
        for (s, g) in specs.iter().zip(&grads) {
            let mut sum = vec![0.0f32; s.len];
            for k in 0..accum {
                for (acc, x) in sum.iter_mut().zip(fx.f32(&format!("step{step}.grad{k}.{}", s.name))) {
                    *acc += x;
                }
            }
            gpu.write_f32(g, &sum);
        }
        let lr = schedule.lr(opt_config.learning_rate, step);
        assert!(
            (lr - torch_lr[step as usize]).abs() <= 1e-18,
            "lr of step {step}: {lr} vs torch {}",
            torch_lr[step as usize]
        );
        let pairs: Vec<_> = params.iter().zip(&grads).collect();
        let mut batch = gpu.batch();
        opt.step(&mut batch, &pairs, lr, 1.0 / accum as f32).unwrap();
        batch.submit().unwrap();
        let norm = opt.read_grad_norm(&gpu).unwrap();
        let want = torch_norm[step as usize];
        assert!(
            (norm.norm - want).abs() <= 16.0 * EPS * want,
            "grad norm of step {step}: {} vs torch {want}",
            norm.norm
        );
        let state = opt.state(&gpu).unwrap();
        let t = step as usize + 1;
        for (i, s) in specs.iter().enumerate() {
            let what = |k: &str| format!("{k}.{} after step {step} vs torch", s.name);
            let want_p = fx.f32(&format!("step{step}.param.{}", s.name));
            let want_m = fx.f32(&format!("step{step}.exp_avg.{}", s.name));
            let want_v = fx.f32(&format!("step{step}.exp_avg_sq.{}", s.name));
            let got_p = gpu.read_f32(&params[i]).unwrap();
            let change = want_p.iter().zip(&prev_p[i]).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            for (tol, p) in tol_p[i].iter_mut().zip(&want_p) {
                *tol += 2.0 * EPS * p.abs() + 16.0 * EPS * change;
            }
            let (tm, tv) = (step_tol(t, &want_m), step_tol(t, &want_v));
            assert_close_by(&what("param"), &got_p, &want_p, |j| tol_p[i][j]);
            prev_p[i] = want_p;
            assert_close_by(&what("exp_avg"), &state.params[i].exp_avg, &want_m, |_| tm);
            assert_close_by(&what("exp_avg_sq"), &state.params[i].exp_avg_sq, &want_v, |_| tv);
        }
    }
}
