//! The LoRA kernels (shaders/lora.wgsl) against `cpu_ref::lora_forward` on random inputs, including
//! sizes that do not divide the workgroup size (64), into a slice of a wider output (the fused q/k/v and
//! gate/up case) that must leave the other columns untouched; and mis-sized buffers refused as errors.
//! The backward kernels against finite differences of an f64 loss, and a wrong backward shown to fail.

use crate::common;

use babelrl::gpu::cpu_ref;
use babelrl::gpu::kernels_lora::{LoraGradBuffers, LoraShape, OutputSlice};
use common::{assert_close_by, gpu, random};

/// f32 sums of K then R products against the f64 reference: |error| ≲ (K + R)·ε·Σ|terms| per output.
fn tolerance(x: &[f32], a: &[f32], b: &[f32], scale: f32, s: LoraShape) -> Vec<f32> {
    let LoraShape { t, k, r, n } = s;
    let mut tol = vec![0.0; t * n];
    for row in 0..t {
        let u_abs: Vec<f32> =
            (0..r).map(|j| (0..k).map(|i| (x[row * k + i] * a[j * k + i]).abs()).sum()).collect();
        for c in 0..n {
            let m: f32 = (0..r).map(|j| u_abs[j] * b[c * r + j].abs()).sum();
            tol[row * n + c] = (k + r + 2) as f32 * f32::EPSILON * scale.abs() * m + 1e-6;
        }
    }
    tol
}

/// Runs the kernel into columns `n_off .. n_off + N` of a (T, ldy) output holding random values.
fn check(s: LoraShape, ldy: usize, n_off: usize, scale: f32, seed: u64) {
    let gpu = gpu();
    let LoraShape { t, k, r, n } = s;
    let x = random(t * k, 1.0, seed);
    let a = random(r * k, 0.3, seed + 1);
    let b = random(n * r, 0.3, seed + 2);
    let y0 = random(t * ldy, 1.0, seed + 3);
    let mut want = y0.clone();
    let want_u = cpu_ref::lora_forward(&mut want, &x, &a, &b, scale, (t, k, r, n), ldy, n_off);

    let xg = gpu.upload_f32("x", &x, &[t, k]).unwrap();
    let ag = gpu.upload_f32("a", &a, &[r, k]).unwrap();
    let bg = gpu.upload_f32("b", &b, &[n, r]).unwrap();
    let u = gpu.zeros("u", &[t, r]).unwrap();
    let y = gpu.upload_f32("y", &y0, &[t, ldy]).unwrap();
    let mut batch = gpu.batch();
    batch.lora_forward(&xg, &ag, &bg, scale, &u, &y, s, OutputSlice { ldy, n_off }).unwrap();
    batch.submit().unwrap();
    let got = gpu.read_f32(&y).unwrap();
    let got_u = gpu.read_f32(&u).unwrap();

    let what = format!("lora_forward t={t} k={k} r={r} n={n} ldy={ldy} n_off={n_off}");
    let tol = tolerance(&x, &a, &b, scale, s);
    assert_close_by(&format!("{what}: y"), &got, &want, |i| {
        let (row, col) = (i / ldy, i % ldy);
        if (n_off..n_off + n).contains(&col) {
            tol[row * n + col - n_off] + 1e-6 * want[i].abs()
        } else {
            0.0
        }
    });
    assert_close_by(&format!("{what}: u"), &got_u, &want_u, |i| {
        let (row, j) = (i / r, i % r);
        let m: f32 = (0..k).map(|c| (x[row * k + c] * a[j * k + c]).abs()).sum();
        (k + 1) as f32 * f32::EPSILON * m + 1e-7
    });
}

#[test]
fn lora_forward_matches_reference_on_awkward_sizes() {
    // (T, K, R, N, ldy, n_off): whole outputs and slices of fused ones (q/k/v, gate/up), T·R and N
    // below, at and above multiples of 64.
    for (i, &(t, k, r, n, ldy, n_off)) in [
        (1, 8, 1, 1, 1, 0),
        (1, 64, 4, 64, 64, 0),
        (3, 64, 4, 32, 128, 64),     // v of a fused q/k/v
        (5, 37, 3, 65, 200, 70),     // odd everything
        (17, 96, 16, 130, 260, 130), // up of a fused gate/up: the second half
        (70, 20, 8, 7, 9, 1),        // T·R = 560: several workgroups
        (2, 160, 64, 64, 64, 0),     // rank 64
    ]
    .iter()
    .enumerate()
    {
        let scale = if i % 2 == 0 { 2.0 } else { -0.75 };
        check(LoraShape { t, k, r, n }, ldy, n_off, scale, 100 + i as u64);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 10, ..Default::default() })]
    #[test]
    fn lora_forward_matches_reference_on_random_shapes(
        t in 1usize..24, k in 1usize..90, r in 1usize..20, n in 1usize..140, extra in 0usize..70, off in 0usize..70,
    ) {
        let n_off = off.min(extra);
        check(LoraShape { t, k, r, n }, n + extra, n_off, 1.5, (t * 7919 + k * 31 + r * 7 + n) as u64);
    }
}

#[test]
fn mis_sized_lora_buffers_are_errors_not_silent_clamps() {
    let gpu = gpu();
    let s = LoraShape { t: 4, k: 16, r: 2, n: 8 };
    let x = gpu.zeros("x", &[4, 16]).unwrap();
    let a = gpu.zeros("a", &[2, 16]).unwrap();
    let b = gpu.zeros("b", &[8, 2]).unwrap();
    let u = gpu.zeros("u", &[4, 2]).unwrap();
    let y = gpu.zeros("y", &[4, 8]).unwrap();
    let small = gpu.zeros("small", &[3, 8]).unwrap();
    let wrong_a = gpu.zeros("a3", &[3, 16]).unwrap();
    let whole = OutputSlice { ldy: 8, n_off: 0 };
    let mut batch = gpu.batch();
    let cases = [
        ("`y`", batch.lora_forward(&x, &a, &b, 1.0, &u, &small, s, whole)),
        ("A is", batch.lora_forward(&x, &wrong_a, &b, 1.0, &u, &y, s, whole)),
        ("columns", batch.lora_forward(&x, &a, &b, 1.0, &u, &y, s, OutputSlice { ldy: 8, n_off: 1 })),
        ("`x`", batch.lora_forward(&small, &a, &b, 1.0, &u, &y, s, whole)),
    ];
    for (says, got) in cases {
        let e = got.expect_err(says).to_string();
        assert!(e.contains("lora_forward") && e.contains(says), "{says}: {e}");
    }
    let grads = LoraGradBuffers { du: &u, da: &wrong_a, db: &b, dx: None };
    let e = batch.lora_backward(&y, &x, &a, &b, &u, 1.0, grads, s, whole).unwrap_err().to_string();
    assert!(e.contains("lora_backward") && e.contains("dA is [3, 16]"), "{e}");
    let grads = LoraGradBuffers { du: &u, da: &a, db: &b, dx: Some(&small) };
    let e = batch.lora_backward(&y, &x, &a, &b, &u, 1.0, grads, s, whole).unwrap_err().to_string();
    assert!(e.contains("lora_backward") && e.contains("`dx`"), "{e}");
    assert!(batch.is_empty(), "nothing is recorded for a refused launch");
}

/// L = Σ g ⊙ y over the projection's columns, y = scale · (x Aᵀ) Bᵀ, all in f64: the function whose
/// finite differences check the backward kernels.
fn loss_f64(x: &[f64], a: &[f64], b: &[f64], g: &[f64], scale: f64, s: LoraShape) -> f64 {
    let LoraShape { t, k, r, n } = s;
    let mut loss = 0.0;
    for row in 0..t {
        let u: Vec<f64> = (0..r).map(|j| (0..k).map(|i| x[row * k + i] * a[j * k + i]).sum()).collect();
        for c in 0..n {
            loss += g[row * n + c] * scale * (0..r).map(|j| u[j] * b[c * r + j]).sum::<f64>();
        }
    }
    loss
}

/// Central differences of `f` at `at`, one coordinate at a time.
fn finite_diff(at: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-3;
    let mut p = at.to_vec();
    (0..at.len())
        .map(|i| {
            p[i] = at[i] + h;
            let up = f(&p);
            p[i] = at[i] - h;
            let down = f(&p);
            p[i] = at[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Gradients of L with respect to x, A and B by finite differences, and of the same loss on absolute
/// values (Σ|terms| of each gradient element: the scale of its rounding error in f32).
struct FdGrads {
    dx: Vec<f64>,
    da: Vec<f64>,
    db: Vec<f64>,
    mag: [Vec<f64>; 3],
}

fn fd_grads(x: &[f32], a: &[f32], b: &[f32], g: &[f32], scale: f32, s: LoraShape) -> FdGrads {
    let f = |v: &[f32]| v.iter().map(|&e| e as f64).collect::<Vec<f64>>();
    let (x, a, b, g, sc) = (f(x), f(a), f(b), f(g), scale as f64);
    let grads = |x: &[f64], a: &[f64], b: &[f64], g: &[f64], sc: f64| {
        [
            finite_diff(x, |v| loss_f64(v, a, b, g, sc, s)),
            finite_diff(a, |v| loss_f64(x, v, b, g, sc, s)),
            finite_diff(b, |v| loss_f64(x, a, v, g, sc, s)),
        ]
    };
    let [dx, da, db] = grads(&x, &a, &b, &g, sc);
    let abs = |v: &[f64]| v.iter().map(|e| e.abs()).collect::<Vec<f64>>();
    FdGrads { dx, da, db, mag: grads(&abs(&x), &abs(&a), &abs(&b), &abs(&g), sc.abs()) }
}

/// Compares `got − before` with a finite-difference gradient; Err names the first element off.
fn matches_fd(
    what: &str,
    got: &[f32],
    before: &[f32],
    want: &[f64],
    mag: &[f64],
    terms: usize,
) -> Result<(), String> {
    for i in 0..want.len() {
        let d = (got[i] as f64 - before[i] as f64 - want[i]).abs();
        let tol = (terms + 4) as f64 * f32::EPSILON as f64 * (mag[i] + before[i].abs() as f64) + 1e-6;
        if d > tol || d.is_nan() {
            return Err(format!(
                "{what}[{i}]: got {} want {} (diff {d:.3e}, tol {tol:.3e})",
                got[i] as f64 - before[i] as f64,
                want[i]
            ));
        }
    }
    Ok(())
}

/// The backward kernels against finite differences of the f64 loss, accumulating onto non-zero dA,
/// dB and dx, reading only the projection's columns of a wider dy.
/// Without `with_dx`, dx is not requested and must stay as it was.
fn check_backward(s: LoraShape, ldy: usize, n_off: usize, scale: f32, seed: u64, with_dx: bool) {
    let gpu = gpu();
    let LoraShape { t, k, r, n } = s;
    let x = random(t * k, 1.0, seed);
    let a = random(r * k, 0.5, seed + 1);
    let b = random(n * r, 0.5, seed + 2);
    let dy = random(t * ldy, 1.0, seed + 3);
    let g: Vec<f32> = (0..t * n).map(|i| dy[(i / n) * ldy + n_off + i % n]).collect();
    let (da0, db0, dx0) =
        (random(r * k, 0.1, seed + 4), random(n * r, 0.1, seed + 5), random(t * k, 0.1, seed + 6));
    let fd = fd_grads(&x, &a, &b, &g, scale, s);

    let up = |name: &str, v: &[f32], shape: &[usize]| gpu.upload_f32(name, v, shape).unwrap();
    let (xg, ag, bg, dyg) =
        (up("x", &x, &[t, k]), up("a", &a, &[r, k]), up("b", &b, &[n, r]), up("dy", &dy, &[t, ldy]));
    let (dag, dbg, dxg) = (up("da", &da0, &[r, k]), up("db", &db0, &[n, r]), up("dx", &dx0, &[t, k]));
    let u = gpu.zeros("u", &[t, r]).unwrap();
    let du = gpu.zeros("du", &[t, r]).unwrap();
    let y = gpu.zeros("y", &[t, ldy]).unwrap();
    let out = OutputSlice { ldy, n_off };
    let mut batch = gpu.batch();
    batch.lora_forward(&xg, &ag, &bg, scale, &u, &y, s, out).unwrap();
    let grads = LoraGradBuffers { du: &du, da: &dag, db: &dbg, dx: with_dx.then_some(&dxg) };
    batch.lora_backward(&dyg, &xg, &ag, &bg, &u, scale, grads, s, out).unwrap();
    batch.submit().unwrap();
    let what = format!("lora_backward t={t} k={k} r={r} n={n} ldy={ldy} n_off={n_off}");
    let terms = t + n + k + r;
    for (name, got, before, want, mag) in [
        ("dA", gpu.read_f32(&dag).unwrap(), &da0, &fd.da, &fd.mag[1]),
        ("dB", gpu.read_f32(&dbg).unwrap(), &db0, &fd.db, &fd.mag[2]),
    ] {
        matches_fd(&format!("{what}: {name}"), &got, before, want, mag, terms).unwrap();
    }
    let dx = gpu.read_f32(&dxg).unwrap();
    if with_dx {
        matches_fd(&format!("{what}: dx"), &dx, &dx0, &fd.dx, &fd.mag[0], terms).unwrap();
    } else {
        assert_eq!(dx, dx0, "{what}: dx not requested but changed");
    }
    // The plain reference agrees with the finite differences too.
    let u_ref: Vec<f32> = gpu.read_f32(&u).unwrap();
    let cpu = cpu_ref::lora_backward(&dy, &x, &a, &b, &u_ref, scale, (t, k, r, n), ldy, n_off);
    let zeros = |len| vec![0.0f32; len];
    matches_fd(&format!("{what}: cpu_ref dA"), &cpu.da, &zeros(r * k), &fd.da, &fd.mag[1], terms).unwrap();
    matches_fd(&format!("{what}: cpu_ref dB"), &cpu.db, &zeros(n * r), &fd.db, &fd.mag[2], terms).unwrap();
    matches_fd(&format!("{what}: cpu_ref dx"), &cpu.dx, &zeros(t * k), &fd.dx, &fd.mag[0], terms).unwrap();
}

#[test]
fn lora_backward_matches_finite_differences_on_awkward_sizes() {
    for (i, &(t, k, r, n, ldy, n_off)) in [
        (1, 8, 1, 1, 1, 0),
        (3, 64, 4, 32, 128, 64),
        (5, 37, 3, 65, 200, 70),
        (17, 66, 16, 70, 140, 70),
        (70, 20, 2, 7, 9, 1),
    ]
    .iter()
    .enumerate()
    {
        let scale = if i % 2 == 0 { 2.0 } else { -0.75 };
        check_backward(LoraShape { t, k, r, n }, ldy, n_off, scale, 300 + i as u64, i != 1);
    }
}

/// The finite-difference check can fail: a deliberately wrong backward (dB without the scale, as a
/// kernel that forgot it would compute) is rejected.
#[test]
fn a_wrong_lora_backward_fails_the_finite_difference_check() {
    let s = LoraShape { t: 3, k: 10, r: 2, n: 5 };
    let (x, a, b, dy) = (random(30, 1.0, 1), random(20, 0.5, 2), random(10, 0.5, 3), random(15, 1.0, 4));
    let fd = fd_grads(&x, &a, &b, &dy, 2.0, s);
    let mut u = vec![0.0; 6];
    let mut y = vec![0.0; 15];
    u.copy_from_slice(&cpu_ref::lora_forward(&mut y, &x, &a, &b, 2.0, (3, 10, 2, 5), 5, 0));
    let right = cpu_ref::lora_backward(&dy, &x, &a, &b, &u, 2.0, (3, 10, 2, 5), 5, 0);
    let wrong = cpu_ref::lora_backward(&dy, &x, &a, &b, &u, 1.0, (3, 10, 2, 5), 5, 0);
    let zeros = vec![0.0; 10];
    assert!(matches_fd("dB", &right.db, &zeros, &fd.db, &fd.mag[2], 20).is_ok());
    let e = matches_fd("dB", &wrong.db, &zeros, &fd.db, &fd.mag[2], 20).unwrap_err();
    assert!(e.starts_with("dB["), "{e}");
}
