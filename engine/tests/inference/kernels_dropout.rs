//! LoRA's input dropout (`Batch::dropout_forward` / `dropout_backward`) against `cpu_ref`, bit for bit on
//! sizes that do not divide the workgroup size, and against its definition: p = 0 is the identity, the
//! kept fraction is 1 − p, seeds give unrelated masks, the backward is the forward's transpose, and a
//! bad launch is an error that records nothing.

use crate::common::{assert_close_by, gpu, random};

use babelrl::gpu::kernels::dropout_seed;
use babelrl::gpu::{Gpu, cpu_ref};

const SIZES: [usize; 5] = [1, 63, 65, 1000, 70000];
const PROBS: [f32; 4] = [0.0, 0.1, 0.5, 0.9];

/// (forward output, backward gradient added into zeros) of `x` and `dy` on the GPU.
fn run(gpu: &Gpu, x: &[f32], dy: &[f32], p: f32, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let n = x.len();
    let xg = gpu.upload_f32("x", x, &[n]).unwrap();
    let dyg = gpu.upload_f32("dy", dy, &[n]).unwrap();
    let out = gpu.zeros("out", &[n]).unwrap();
    let dx = gpu.zeros("dx", &[n]).unwrap();
    let mut b = gpu.batch();
    b.dropout_forward(&xg, &out, n, p, seed).unwrap();
    b.dropout_backward(&dyg, &dx, n, p, seed).unwrap();
    b.submit().unwrap();
    (gpu.read_f32(&out).unwrap(), gpu.read_f32(&dx).unwrap())
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}[{i}]: got {} want {} (bits differ)", got[i], want[i]);
    }
}

/// The GPU against the reference bit for bit (forward, and backward into zeros: both a product and a
/// select), on every size and p; the backward adding into a non-zero dx to one rounding (an adapter may
/// fuse the multiply and the add). Shared with the folded-grid run (`kernels_folded_grids.rs`).
pub fn check_dropout(gpu: &Gpu) {
    for (c, &n) in SIZES.iter().enumerate() {
        for (k, &p) in PROBS.iter().enumerate() {
            let case = (c * PROBS.len() + k) as u64;
            let seed = dropout_seed(7, case, 0, c, k);
            let (x, dy) = (random(n, 3.0, 2 * case), random(n, 3.0, 2 * case + 1));
            let (out, dx) = run(gpu, &x, &dy, p, seed);
            assert_bits(
                &format!("dropout_forward n={n} p={p}"),
                &out,
                &cpu_ref::dropout_forward(&x, p, seed),
            );
            let g = cpu_ref::dropout_backward(&dy, p, seed);
            assert_bits(&format!("dropout_backward n={n} p={p}"), &dx, &g);

            let dx0 = random(n, 1.0, 1000 + case);
            let dxg = gpu.upload_f32("dx", &dx0, &[n]).unwrap();
            let dyg = gpu.upload_f32("dy", &dy, &[n]).unwrap();
            let mut b = gpu.batch();
            b.dropout_backward(&dyg, &dxg, n, p, seed).unwrap();
            b.submit().unwrap();
            let want: Vec<f32> = dx0.iter().zip(&g).map(|(a, b)| a + b).collect();
            let tol = |i: usize| f32::EPSILON * (dx0[i].abs() + g[i].abs());
            assert_close_by(
                &format!("dropout_backward += n={n} p={p}"),
                &gpu.read_f32(&dxg).unwrap(),
                &want,
                tol,
            );
        }
    }
}

#[test]
fn dropout_matches_reference_bit_for_bit() {
    check_dropout(&gpu());
}

#[test]
fn dropout_with_p_zero_is_the_identity() {
    let gpu = gpu();
    for &n in &SIZES {
        let (x, dy) = (random(n, 5.0, n as u64), random(n, 5.0, n as u64 + 1));
        let (out, dx) = run(&gpu, &x, &dy, 0.0, 0xDEAD_BEEF_0BAD_F00D);
        assert_bits(&format!("p = 0 forward n={n}"), &out, &x);
        assert_bits(&format!("p = 0 backward n={n}"), &dx, &dy);
    }
}

/// Kept elements of n = 70000 ones: Binomial(n, 1 − p) (up to the 2⁻²⁴ of the threshold's truncation),
/// so within 4σ of n(1 − p); kept elements are exactly 1 / (1 − p).
#[test]
fn dropout_keeps_one_minus_p_of_the_elements() {
    let gpu = gpu();
    let n = 70000;
    let ones = vec![1.0f32; n];
    for &p in &PROBS[1..] {
        let (out, dx) = run(&gpu, &ones, &ones, p, dropout_seed(3, 1, 2, 3, 4));
        assert_bits(&format!("p={p} backward of ones"), &dx, &out);
        let kept = out.iter().filter(|&&v| v != 0.0).count();
        assert!(
            out.iter().all(|&v| v == 0.0 || v == 1.0 / (1.0 - p)),
            "p={p}: a kept value is not 1 / (1 − p)"
        );
        let (mean, sigma) = (n as f64 * (1.0 - p as f64), (n as f64 * p as f64 * (1.0 - p as f64)).sqrt());
        eprintln!("p={p}: kept {kept} of {n}, expected {mean:.0} ± {sigma:.0}");
        assert!(
            (kept as f64 - mean).abs() <= 4.0 * sigma,
            "p={p}: kept {kept} of {n}, expected {mean:.0} ± 4·{sigma:.1}"
        );
    }
}

/// Masks of p = 0.5 over 70000 elements: changing the seed's low word, its high word, or any coordinate
/// of `dropout_seed` gives a mask that agrees with the first on half the elements (independent masks),
/// within 4σ; the same seed gives the same mask.
#[test]
fn different_seeds_give_unrelated_masks() {
    let gpu = gpu();
    let (n, p) = (70000, 0.5);
    let ones = vec![1.0f32; n];
    let mask =
        |seed: u64| -> Vec<bool> { run(&gpu, &ones, &ones, p, seed).0.iter().map(|&v| v != 0.0).collect() };
    let base_seed = dropout_seed(11, 5, 1, 2, 3);
    let base = mask(base_seed);
    assert_eq!(mask(base_seed), base, "one seed gave two masks");
    let others = [
        ("low word", base_seed ^ 1),
        ("high word", base_seed ^ (1 << 32)),
        ("run seed", dropout_seed(12, 5, 1, 2, 3)),
        ("step", dropout_seed(11, 6, 1, 2, 3)),
        ("micro-batch", dropout_seed(11, 5, 2, 2, 3)),
        ("layer", dropout_seed(11, 5, 1, 3, 3)),
        ("target", dropout_seed(11, 5, 1, 2, 4)),
        ("layer and target swapped", dropout_seed(11, 5, 1, 3, 2)),
    ];
    let sigma = (n as f64 * 0.25).sqrt();
    for (what, seed) in others {
        let agree = mask(seed).iter().zip(&base).filter(|(a, b)| a == b).count();
        eprintln!("{what}: masks agree on {agree} of {n}");
        assert!(
            (agree as f64 - n as f64 / 2.0).abs() <= 4.0 * sigma,
            "changing the {what} gave a mask agreeing on {agree} of {n} (independent: {} ± 4·{sigma:.0})",
            n / 2
        );
    }
}

/// Every (step, micro-batch, layer, target) of a small run gets its own seed, the same on every call.
#[test]
fn dropout_seeds_are_distinct_per_step_micro_batch_layer_and_target() {
    let mut seeds = std::collections::HashSet::new();
    for step in 0..6 {
        for micro in 0..4 {
            for layer in 0..8 {
                for target in 0..7 {
                    let s = dropout_seed(42, step, micro, layer, target);
                    assert_eq!(s, dropout_seed(42, step, micro, layer, target));
                    assert!(
                        seeds.insert(s),
                        "seed of step {step} micro {micro} layer {layer} target {target} repeats"
                    );
                }
            }
        }
    }
    assert_ne!(dropout_seed(42, 0, 0, 0, 0), dropout_seed(43, 0, 0, 0, 0));
}

/// ⟨dropout(x), y⟩ = ⟨x, dropout_backward(y)⟩ for one seed, in f64 on the host from the GPU's outputs, to
/// the f32 rounding of the scaled factor (one rounding per term); a backward with another seed's mask
/// misses by far more.
#[test]
fn dropout_backward_is_the_transpose_of_the_forward() {
    let gpu = gpu();
    let n = 1000;
    let (x, y) = (random(n, 2.0, 21), random(n, 2.0, 22));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(u, v)| *u as f64 * *v as f64).sum::<f64>();
    for &p in &PROBS {
        let seed = dropout_seed(1, 2, 3, 4, 5);
        let (fx, _) = run(&gpu, &x, &y, p, seed);
        let (_, by) = run(&gpu, &x, &y, p, seed);
        let (_, other) = run(&gpu, &x, &y, p, seed + 1);
        let scale = 1.0 / (1.0 - p as f64);
        let bound = f32::EPSILON as f64
            * scale
            * dot(
                &x.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                &y.iter().map(|v| v.abs()).collect::<Vec<_>>(),
            );
        let (lhs, rhs) = (dot(&fx, &y), dot(&x, &by));
        eprintln!("p={p}: <dropout(x), y> = {lhs}, <x, dropout_backward(y)> = {rhs}, bound {bound:.2e}");
        assert!((lhs - rhs).abs() <= bound, "p={p}: {lhs} vs {rhs} (bound {bound:.2e})");
        if p > 0.0 {
            let wrong = dot(&x, &other);
            assert!((lhs - wrong).abs() > 100.0 * bound, "p={p}: another seed's backward passes the check");
        }
    }
}

/// Elements past n of larger buffers (workspaces sized for the largest pass) are left untouched.
#[test]
fn dropout_leaves_elements_past_n_alone() {
    let gpu = gpu();
    let (n, len) = (65, 200);
    let x = random(len, 1.0, 31);
    let sentinel = vec![7.5f32; len];
    let xg = gpu.upload_f32("x", &x, &[len]).unwrap();
    let out = gpu.upload_f32("out", &sentinel, &[len]).unwrap();
    let dx = gpu.upload_f32("dx", &sentinel, &[len]).unwrap();
    let mut b = gpu.batch();
    b.dropout_forward(&xg, &out, n, 0.5, 9).unwrap();
    b.dropout_backward(&xg, &dx, n, 0.5, 9).unwrap();
    b.submit().unwrap();
    let (out, dx) = (gpu.read_f32(&out).unwrap(), gpu.read_f32(&dx).unwrap());
    assert_bits("forward, first n", &out[..n], &cpu_ref::dropout_forward(&x[..n], 0.5, 9));
    assert_bits("forward, past n", &out[n..], &sentinel[n..]);
    assert_bits("backward, past n", &dx[n..], &sentinel[n..]);
}

#[test]
fn dropout_launches_reject_bad_sizes_and_probabilities() {
    let gpu = gpu();
    let (small, fits, other) =
        (gpu.zeros("small", &[9]).unwrap(), gpu.zeros("x", &[10]).unwrap(), gpu.zeros("y", &[10]).unwrap());
    let mut b = gpu.batch();
    let err = |r: babelrl::Result<()>| r.unwrap_err().to_string();
    let e = err(b.dropout_forward(&small, &fits, 10, 0.1, 1));
    assert!(e.contains("dropout_forward: `x`") && e.contains("10 elements"), "{e}");
    let e = err(b.dropout_forward(&fits, &small, 10, 0.1, 1));
    assert!(e.contains("dropout_forward: `out`"), "{e}");
    let e = err(b.dropout_backward(&small, &fits, 10, 0.1, 1));
    assert!(e.contains("dropout_backward: `dy`"), "{e}");
    let e = err(b.dropout_backward(&fits, &small, 10, 0.1, 1));
    assert!(e.contains("dropout_backward: `dx`"), "{e}");
    for p in [1.0, 1.5, -0.1, f32::NAN, f32::INFINITY] {
        let e = err(b.dropout_forward(&fits, &other, 10, p, 1));
        assert!(e.contains("dropout_forward") && e.contains("[0, 1)"), "p = {p}: {e}");
        let e = err(b.dropout_backward(&fits, &other, 10, p, 1));
        assert!(e.contains("dropout_backward") && e.contains("[0, 1)"), "p = {p}: {e}");
    }
    let e = err(b.dropout_forward(&fits, &fits, 10, 0.1, 1));
    assert!(e.contains("dropout_forward") && e.contains("one buffer"), "{e}");
    assert!(b.is_empty(), "a rejected launch recorded a dispatch");
    // The same launches sized right are accepted.
    b.dropout_forward(&fits, &other, 10, 0.1, 1).unwrap();
    b.dropout_backward(&fits, &other, 10, 0.0, 1).unwrap();
    b.submit().unwrap();
}
