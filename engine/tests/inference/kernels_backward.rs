//! Backward kernels: each against its plain-Rust reference (`babelrl::gpu::cpu_ref`) on random inputs,
//! including sizes that do not divide the workgroup size (64) or the four-row tiles, and each reference
//! against central finite differences of an f64 forward written here, independently of the engine.

use crate::common::{assert_close, assert_close_by, gpu, random};

use babelrl::gpu::Gpu;
use babelrl::gpu::cpu_ref::{self, AttnGrads, AttnShape, TokenInfo};
use babelrl::gpu::kernels::{
    ATTN_QK_NORM, ATTN_ROPE, AttnBackward, AttnParams, GradWrite, KvCacheShape, MAX_PROMPT_FOLLOWERS,
    SharedPrompt,
};
use half::f16;

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ---------------------------------------------------------------------------------------------------
// Finite differences

/// ∂/∂x of L(x) = Σ dy · f(x) by central differences in f64, step 1e-6 · max(1, |xᵢ|).
fn fd_grad(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], dy: &[f32]) -> Vec<f64> {
    let loss = |xs: &[f64]| {
        let y = f(xs);
        assert_eq!(y.len(), dy.len(), "forward output and dy differ in length");
        y.iter().zip(dy).map(|(a, b)| a * *b as f64).sum::<f64>()
    };
    let mut xs = x.to_vec();
    (0..xs.len())
        .map(|i| {
            let (keep, h) = (xs[i], 1e-6 * xs[i].abs().max(1.0));
            xs[i] = keep + h;
            let up = loss(&xs);
            xs[i] = keep - h;
            let down = loss(&xs);
            xs[i] = keep;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// The first element where an analytic gradient and finite differences disagree beyond
/// 1e-5 · (max |fd| + |fdᵢ|): far above the differences' own error (~1e-9 here) and the reference's f32
/// output rounding, far below what a dropped or wrong term changes.
fn fd_mismatch(what: &str, got: &[f32], fd: &[f64]) -> Option<String> {
    assert_eq!(got.len(), fd.len(), "{what}: length");
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "{what}: the gradient is (nearly) zero everywhere, the check would be empty");
    (0..fd.len()).find_map(|i| {
        let tol = 1e-5 * (scale + fd[i].abs());
        let d = (got[i] as f64 - fd[i]).abs();
        (d > tol).then(|| {
            format!("{what}[{i}]: analytic {} vs finite differences {} (tol {tol:.2e})", got[i], fd[i])
        })
    })
}

fn assert_fd(what: &str, got: &[f32], fd: &[f64]) {
    if let Some(m) = fd_mismatch(what, got, fd) {
        panic!("{m}");
    }
    eprintln!("{what}: matches finite differences on {} inputs", got.len());
}

// f64 forwards, written from the definitions.

fn rms_norm_f64(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let d = w.len();
    x.chunks(d)
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, w)| v * inv * *w as f64)
        })
        .collect()
}

fn swiglu_f64(gu: &[f64], inter: usize) -> Vec<f64> {
    gu.chunks(2 * inter)
        .flat_map(|row| (0..inter).map(|i| row[i] / (1.0 + (-row[i]).exp()) * row[inter + i]))
        .collect()
}

fn linear_f64(x: &[f64], w: &[f16], n: usize, k: usize) -> Vec<f64> {
    x.chunks(k)
        .flat_map(|row| (0..n).map(|c| (0..k).map(|i| row[i] * w[c * k + i].to_f64()).sum::<f64>()))
        .collect()
}

/// Per-head RMSNorm, rotate-half RoPE and the scatter into the caches, returning q ‖ k cache ‖ v cache.
fn qkv_split_f64(
    s: AttnShape,
    slots: usize,
    tok: &[TokenInfo],
    qkv: &[f64],
    rope: &[[f32; 2]],
    norm: Option<(&[f32], f64)>,
) -> Vec<f64> {
    let (hd, half) = (s.head_dim, s.head_dim / 2);
    let heads = s.n_head + 2 * s.n_kv_head;
    let cache = slots * s.n_kv_head * s.ctx * hd;
    let mut q = vec![0.0; tok.len() * s.n_head * hd];
    let (mut kc, mut vc) = (vec![0.0; cache], vec![0.0; cache]);
    for (t, info) in tok.iter().enumerate() {
        let at = |h: usize| ((info.slot as usize * s.n_kv_head + h) * s.ctx + info.pos as usize) * hd;
        for j in 0..heads {
            let mut v = qkv[(t * heads + j) * hd..][..hd].to_vec();
            if j >= s.n_head + s.n_kv_head {
                vc[at(j - s.n_head - s.n_kv_head)..][..hd].copy_from_slice(&v);
                continue;
            }
            if let Some((w, eps)) = norm {
                let w = &w[if j < s.n_head { 0 } else { hd }..][..hd];
                let inv = 1.0 / (v.iter().map(|x| x * x).sum::<f64>() / hd as f64 + eps).sqrt();
                v.iter_mut().zip(w).for_each(|(x, w)| *x *= inv * *w as f64);
            }
            let rot: Vec<f64> = (0..hd)
                .map(|i| {
                    let [c, sn] = rope[info.pos as usize * half + i % half];
                    let (c, sn) = (c as f64, sn as f64);
                    if i < half { v[i] * c - v[i + half] * sn } else { v[i] * c + v[i - half] * sn }
                })
                .collect();
            let dst = if j < s.n_head {
                &mut q[(t * s.n_head + j) * hd..][..hd]
            } else {
                &mut kc[at(j - s.n_head)..][..hd]
            };
            dst.copy_from_slice(&rot);
        }
    }
    [q, kc, vc].concat()
}

/// Causal grouped-query attention over the caches, from q ‖ k cache ‖ v cache.
fn attention_f64(s: AttnShape, tok: &[TokenInfo], qkv: &[f64], q_len: usize) -> Vec<f64> {
    let hd = s.head_dim;
    let cache = (qkv.len() - q_len) / 2;
    let (q, kc, vc) = (&qkv[..q_len], &qkv[q_len..q_len + cache], &qkv[q_len + cache..]);
    let mut out = vec![0.0; q_len];
    for (t, info) in tok.iter().enumerate() {
        for h in 0..s.n_head {
            let base = (info.slot as usize * s.n_kv_head + h / (s.n_head / s.n_kv_head)) * s.ctx;
            let qv = &q[(t * s.n_head + h) * hd..][..hd];
            let e: Vec<f64> = (0..info.n_keys as usize)
                .map(|j| {
                    (qv.iter().zip(&kc[(base + j) * hd..][..hd]).map(|(a, b)| a * b).sum::<f64>()
                        / (hd as f64).sqrt())
                    .exp()
                })
                .collect();
            let z: f64 = e.iter().sum();
            for i in 0..hd {
                out[(t * s.n_head + h) * hd + i] =
                    e.iter().enumerate().map(|(j, e)| e / z * vc[(base + j) * hd + i]).sum();
            }
        }
    }
    out
}

/// Two sequences: slot 0 prefills positions 0..n0; slot 1 already holds positions 0..3 (from an earlier
/// pass) and adds positions 3..3+n1, attending to all of them.
fn two_sequences(n0: u32, n1: u32) -> Vec<TokenInfo> {
    let mut tok: Vec<TokenInfo> = (0..n0).map(|p| TokenInfo { pos: p, slot: 0, n_keys: p + 1 }).collect();
    tok.extend((3..3 + n1).map(|p| TokenInfo { pos: p, slot: 1, n_keys: p + 1 }));
    tok
}

/// The tokens of both slots alternating in the flat batch (a slot's token range then spans the other's).
fn interleaved(tok: Vec<TokenInfo>) -> Vec<TokenInfo> {
    let (a, b): (Vec<_>, Vec<_>) = tok.into_iter().partition(|i| i.slot == 0);
    let mut out = Vec::new();
    for i in 0..a.len().max(b.len()) {
        out.extend(a.get(i).copied());
        out.extend(b.get(i).copied());
    }
    out
}

#[test]
fn rms_norm_backward_reference_matches_finite_differences() {
    for &(rows, dim) in &[(3usize, 7usize), (2, 16)] {
        let x = random(rows * dim, 2.0, 1 + dim as u64);
        let w = random(dim, 1.5, 2);
        let dy = random(rows * dim, 1.0, 3);
        let fd = fd_grad(|x| rms_norm_f64(x, &w, 1e-5), &f64s(&x), &dy);
        assert_fd("rms_norm dx", &cpu_ref::rms_norm_backward(&x, &w, &dy, rows, 1e-5), &fd);
    }
}

#[test]
fn swiglu_and_linear_backward_references_match_finite_differences() {
    let (t, inter) = (3, 5);
    let gu = random(t * 2 * inter, 4.0, 4);
    let dact = random(t * inter, 1.0, 5);
    let fd = fd_grad(|gu| swiglu_f64(gu, inter), &f64s(&gu), &dact);
    assert_fd("swiglu dgu", &cpu_ref::swiglu_backward(&gu, &dact, t, inter), &fd);

    let (t, n, k) = (3, 5, 6);
    let x = random(t * k, 1.0, 6);
    let w = to_f16(&random(n * k, 1.0, 7));
    let dy = random(t * n, 1.0, 8);
    let fd = fd_grad(|x| linear_f64(x, &w, n, k), &f64s(&x), &dy);
    assert_fd("linear dx", &cpu_ref::matmul_backward_dx(&dy, &w, t, n, k), &fd);
}

#[test]
fn qkv_split_backward_reference_matches_finite_differences() {
    for qk_norm in [true, false] {
        let s = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 6, ctx: 8 };
        let tok = two_sequences(3, 2);
        let heads = s.n_head + 2 * s.n_kv_head;
        let qkv = random(tok.len() * heads * s.head_dim, 1.5, 9);
        let rope = cpu_ref::rope_table(8, s.head_dim, 100.0);
        let norm_w = random(2 * s.head_dim, 1.5, 10);
        let cache = 2 * s.n_kv_head * s.ctx * s.head_dim;
        let q_len = tok.len() * s.n_head * s.head_dim;
        let dy = random(q_len + 2 * cache, 1.0, 11);
        let grads = AttnGrads {
            dq: dy[..q_len].to_vec(),
            dk_cache: dy[q_len..q_len + cache].to_vec(),
            dv_cache: dy[q_len + cache..].to_vec(),
        };
        let norm = qk_norm.then_some((&norm_w[..], 1e-6f32));
        let got = cpu_ref::qkv_split_backward(s, &tok, &qkv, Some(&rope), norm, &grads);
        let norm64 = qk_norm.then_some((&norm_w[..], 1e-6f64));
        let fd = fd_grad(|x| qkv_split_f64(s, 2, &tok, x, &rope, norm64), &f64s(&qkv), &dy);
        assert_fd(&format!("qkv split dqkv (qk norm {qk_norm})"), &got, &fd);
    }
}

#[test]
fn attention_backward_reference_matches_finite_differences() {
    let s = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 4, ctx: 6 };
    let tok = two_sequences(3, 2);
    let q_len = tok.len() * s.n_head * s.head_dim;
    let cache = 2 * s.n_kv_head * s.ctx * s.head_dim;
    let inputs = random(q_len + 2 * cache, 1.5, 12);
    let (q, kv) = inputs.split_at(q_len);
    let (kc, vc) = kv.split_at(cache);
    let dout = random(q_len, 1.0, 13);
    let g = cpu_ref::attention_backward(s, &tok, q, kc, vc, &dout);
    let fd = fd_grad(|x| attention_f64(s, &tok, x, q_len), &f64s(&inputs), &dout);
    assert_fd("attention dq", &g.dq, &fd[..q_len]);
    assert_fd("attention dk", &g.dk_cache, &fd[q_len..q_len + cache]);
    assert_fd("attention dv", &g.dv_cache, &fd[q_len + cache..]);
}

/// Mutations: backwards with one term dropped must fail the finite-difference check.
#[test]
fn finite_differences_reject_a_backward_missing_a_term() {
    let (rows, dim) = (3, 7);
    let x = random(rows * dim, 2.0, 14);
    let w = random(dim, 1.5, 15);
    let dy = random(rows * dim, 1.0, 16);
    let fd = fd_grad(|x| rms_norm_f64(x, &w, 1e-5), &f64s(&x), &dy);
    // RMSNorm without the term through 1/rms (treating the norm as a constant scale).
    let inv = cpu_ref::rms_norm_inv(&x, rows, dim, 1e-5);
    let wrong: Vec<f32> = (0..rows * dim).map(|e| inv[e / dim] * w[e % dim] * dy[e]).collect();
    assert!(fd_mismatch("rms_norm without the 1/rms term", &wrong, &fd).is_some());

    // SwiGLU with σ(g) in place of silu's derivative σ(g)·(1 + g(1 − σ(g))).
    let (t, inter) = (3, 5);
    let gu = random(t * 2 * inter, 4.0, 17);
    let dact = random(t * inter, 1.0, 18);
    let fd = fd_grad(|gu| swiglu_f64(gu, inter), &f64s(&gu), &dact);
    let mut wrong = cpu_ref::swiglu_backward(&gu, &dact, t, inter);
    for r in 0..t {
        for i in 0..inter {
            let (g, u) = (gu[r * 2 * inter + i], gu[r * 2 * inter + inter + i]);
            wrong[r * 2 * inter + i] = dact[r * inter + i] * u / (1.0 + (-g).exp());
        }
    }
    assert!(fd_mismatch("swiglu with σ for silu'", &wrong, &fd).is_some());
}

// ---------------------------------------------------------------------------------------------------
// Kernels against the references

#[test]
fn rms_norm_train_forward_and_backward_match_reference() {
    let gpu = gpu();
    for &(rows, dim) in &[(1usize, 8usize), (67, 64), (5, 576), (130, 33)] {
        let eps = 1e-5;
        let x = random(rows * dim, 2.0, rows as u64);
        let w = random(dim, 1.0, dim as u64);
        let dy = random(rows * dim, 1.0, 3);
        let prior = random(rows * dim, 1.0, 4);
        let xg = gpu.upload_f32("x", &x, &[rows, dim]).unwrap();
        let wg = gpu.upload_f32("w", &w, &[dim]).unwrap();
        let dyg = gpu.upload_f32("dy", &dy, &[rows, dim]).unwrap();
        let out = gpu.zeros("out", &[rows, dim]).unwrap();
        let inv = gpu.zeros("inv", &[rows]).unwrap();
        let dx = gpu.upload_f32("dx", &prior, &[rows, dim]).unwrap();
        let dx_acc = gpu.upload_f32("dx_acc", &prior, &[rows, dim]).unwrap();
        let mut b = gpu.batch();
        b.rms_norm_train(&xg, &wg, &out, &inv, rows, eps).unwrap();
        b.rms_norm_backward(&xg, &wg, &dyg, &inv, &dx, rows, GradWrite::Overwrite).unwrap();
        b.rms_norm_backward(&xg, &wg, &dyg, &inv, &dx_acc, rows, GradWrite::Accumulate).unwrap();
        b.submit().unwrap();
        let what = format!("rms_norm rows={rows} dim={dim}");
        let want_out = cpu_ref::rms_norm_forward(&x, &w, None, rows, eps);
        assert_close(&format!("{what} out"), &gpu.read_f32(&out).unwrap(), &want_out, 1e-6, 1e-5);
        let want_inv = cpu_ref::rms_norm_inv(&x, rows, dim, eps);
        assert_close(&format!("{what} inv_rms"), &gpu.read_f32(&inv).unwrap(), &want_inv, 0.0, 1e-5);
        let want = cpu_ref::rms_norm_backward(&x, &w, &dy, rows, eps);
        assert_close(&format!("{what} dx"), &gpu.read_f32(&dx).unwrap(), &want, 1e-5, 1e-4);
        let want_acc: Vec<f32> = want.iter().zip(&prior).map(|(a, b)| a + b).collect();
        assert_close(
            &format!("{what} dx accumulated"),
            &gpu.read_f32(&dx_acc).unwrap(),
            &want_acc,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn swiglu_backward_matches_reference() {
    let gpu = gpu();
    for &(t, inter) in &[(3usize, 67usize), (70, 5), (1, 64)] {
        let gu = random(t * 2 * inter, 6.0, t as u64);
        let dact = random(t * inter, 1.0, inter as u64);
        let gug = gpu.upload_f32("gu", &gu, &[t, 2 * inter]).unwrap();
        let dg = gpu.upload_f32("dact", &dact, &[t, inter]).unwrap();
        let dgu = gpu.zeros("dgu", &[t, 2 * inter]).unwrap();
        let mut b = gpu.batch();
        b.swiglu_backward(&gug, &dg, &dgu, t, inter).unwrap();
        b.submit().unwrap();
        let want = cpu_ref::swiglu_backward(&gu, &dact, t, inter);
        assert_close(&format!("swiglu dgu t={t} i={inter}"), &gpu.read_f32(&dgu).unwrap(), &want, 1e-6, 1e-5);
    }
}

/// f32 accumulation of N products vs an f64 reference. Rounding errors of a long sum add up like a random
/// walk, so 4·√N·ε·Σ|dy·w| (hundreds of times the differences seen) rather than the worst-case N·ε·Σ|dy·w|,
/// which on N = 70000 would be loose enough to hide a walk over N cut short.
fn dx_tolerance(dy: &[f32], w: &[f16], t: usize, n: usize, k: usize) -> Vec<f32> {
    let mut tol = vec![0.0; t * k];
    for r in 0..t {
        for c in 0..k {
            let s: f32 = (0..n).map(|j| (dy[r * n + j] * w[j * k + c].to_f32()).abs()).sum();
            tol[r * k + c] = 4.0 * (n as f32).sqrt() * f32::EPSILON * s + 1e-7;
        }
    }
    tol
}

#[test]
fn matmul_backward_dx_matches_reference_on_awkward_sizes() {
    // (T, N, K): T not a multiple of 4; K a multiple of 8 (vector path) or only of 2 (scalar);
    // N = 70000 and 40000 (scalar path) need several launches: lavapipe stops an invocation after about
    // 65536 loop iterations in all (one launch walking N = 70000 lost its last rows).
    for (i, &(t, n, k)) in [
        (1usize, 1usize, 8usize),
        (5, 130, 64),
        (13, 97, 40),
        (7, 70, 74),
        (2, 33, 6),
        (2, 70000, 8),
        (2, 40000, 2),
    ]
    .iter()
    .enumerate()
    {
        let write = if i % 2 == 0 { GradWrite::Overwrite } else { GradWrite::Accumulate };
        check_dx(t, n, k, write, i as u64 * 10);
    }
}

/// dX against the reference; the output starts as random values that an overwrite must replace and an
/// accumulate must add to.
fn check_dx(t: usize, n: usize, k: usize, write: GradWrite, seed: u64) {
    check_dx_on(&gpu(), t, n, k, write, seed);
}

/// [`check_dx`] on a given device (a kernel family or option the default device does not take).
pub(crate) fn check_dx_on(gpu: &Gpu, t: usize, n: usize, k: usize, write: GradWrite, seed: u64) {
    let dy = random(t * n, 1.0, seed);
    let w = to_f16(&random(n * k, 0.5, seed + 1));
    let prior = random(t * k, 1.0, seed + 2);
    let dyg = gpu.upload_f32("dy", &dy, &[t, n]).unwrap();
    let wg = gpu.upload_weight_f16("w", &w, n, k).unwrap();
    let dx = gpu.upload_f32("dx", &prior, &[t, k]).unwrap();
    let mut b = gpu.batch();
    b.matmul_backward_dx(&dyg, &wg, &dx, t, n, 0, write).unwrap();
    b.submit().unwrap();
    let mut want = cpu_ref::matmul_backward_dx(&dy, &w, t, n, k);
    if write == GradWrite::Accumulate {
        want.iter_mut().zip(&prior).for_each(|(a, b)| *a += b);
    }
    let tol = dx_tolerance(&dy, &w, t, n, k);
    assert_close_by(&format!("dx {write:?} t={t} n={n} k={k}"), &gpu.read_f32(&dx).unwrap(), &want, |i| {
        tol[i] + 2.0 * f32::EPSILON * prior[i].abs()
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]
    #[test]
    fn matmul_backward_dx_matches_reference_on_random_shapes(t in 1usize..20, n in 1usize..150, k2 in 1usize..50, acc: bool) {
        let write = if acc { GradWrite::Accumulate } else { GradWrite::Overwrite };
        check_dx(t, n, 2 * k2, write, (t * 1000 + n * 7 + k2) as u64);
    }
}

/// A weight in two row blocks (as a fused projection or a vocabulary split across bindings): the second
/// block's launch reads its columns of dY at an offset and adds into dX.
#[test]
fn matmul_backward_dx_sums_row_blocks() {
    let gpu = gpu();
    let (t, n, k, split) = (6usize, 45usize, 24usize, 17usize);
    let dy = random(t * n, 1.0, 30);
    let w = to_f16(&random(n * k, 0.5, 31));
    let dyg = gpu.upload_f32("dy", &dy, &[t, n]).unwrap();
    let top = gpu.upload_weight_f16("w top", &w[..split * k], split, k).unwrap();
    let bottom = gpu.upload_weight_f16("w bottom", &w[split * k..], n - split, k).unwrap();
    let dx = gpu.zeros("dx", &[t, k]).unwrap();
    let mut b = gpu.batch();
    b.matmul_backward_dx(&dyg, &top, &dx, t, n, 0, GradWrite::Overwrite).unwrap();
    b.matmul_backward_dx(&dyg, &bottom, &dx, t, n, split, GradWrite::Accumulate).unwrap();
    b.submit().unwrap();
    let want = cpu_ref::matmul_backward_dx(&dy, &w, t, n, k);
    let tol = dx_tolerance(&dy, &w, t, n, k);
    assert_close_by("dx of two row blocks", &gpu.read_f32(&dx).unwrap(), &want, |i| 2.0 * tol[i]);
}

#[test]
fn backward_launches_reject_mis_sized_buffers() {
    let gpu = gpu();
    let small = gpu.zeros("small", &[3, 5]).unwrap();
    let w = gpu.upload_weight_f16("w", &to_f16(&random(4 * 8, 1.0, 1)), 4, 8).unwrap();
    let dx = gpu.zeros("dx", &[3, 8]).unwrap();
    let mut b = gpu.batch();
    let err = b.matmul_backward_dx(&small, &w, &dx, 3, 4, 2, GradWrite::Overwrite).unwrap_err().to_string();
    assert!(err.contains("matmul_backward_dx") && err.contains("stride"), "{err}");
    let err = b.matmul_backward_dx(&small, &w, &dx, 4, 4, 0, GradWrite::Overwrite).unwrap_err().to_string();
    assert!(err.contains("matmul_backward_dx: `dy`"), "{err}");
    let wn = gpu.zeros("w", &[5]).unwrap();
    let err = b.rms_norm_backward(&small, &wn, &small, &small, &dx, 4, GradWrite::Overwrite).unwrap_err();
    assert!(err.to_string().contains("rms_norm_backward: `x`"), "{err}");
    let p =
        AttnParams { t: 30000, n_head: 4, n_kv_head: 2, head_dim: 8, ctx: 8, span: 8, flags: 0, eps: 0.0 };
    let io = AttnBackward {
        tok: &small,
        slot_tokens: &small,
        q: &small,
        k_cache: &small,
        v_cache: &small,
        out: &small,
        dout: &small,
        lse: &small,
        delta: &small,
        pds: &small,
        dq: &small,
        dk_cache: &small,
        dv_cache: &small,
    };
    let err = b.attention_backward(&p, 1, &io, GradWrite::Overwrite).unwrap_err().to_string();
    assert!(err.contains("attention_backward") && err.contains("smaller passes"), "{err}");
    let odd = AttnParams { t: 2, head_dim: 6, ..p };
    let err = b.attention_backward(&odd, 1, &io, GradWrite::Overwrite).unwrap_err().to_string();
    assert!(err.contains("attention_backward") && err.contains("hd of 4"), "{err}");
    assert!(b.is_empty(), "a rejected launch recorded a dispatch");
}

fn attn_params(s: AttnShape, tok: &[TokenInfo], flags: u32) -> AttnParams {
    AttnParams {
        t: tok.len() as u32,
        n_head: s.n_head as u32,
        n_kv_head: s.n_kv_head as u32,
        head_dim: s.head_dim as u32,
        ctx: s.ctx as u32,
        span: tok.iter().map(|i| i.n_keys).max().unwrap(),
        flags,
        eps: 1e-6,
    }
}

#[test]
fn qkv_split_backward_matches_reference() {
    check_qkv_split_backward(&gpu());
}

/// The last shape's 66 heads take two workgroups along x, which fold into z under a lowered grid limit
/// (`kernels_folded_grids.rs`).
pub(crate) fn check_qkv_split_backward(gpu: &Gpu) {
    for &(n_head, n_kv_head, head_dim, qk_norm, rope) in &[
        (4usize, 2usize, 16usize, true, true),
        (3, 1, 8, false, true),
        (2, 2, 64, true, false),
        (64, 1, 4, true, true),
    ] {
        let s = AttnShape { n_head, n_kv_head, head_dim, ctx: 24 };
        let tok = two_sequences(9, 4);
        let heads = n_head + 2 * n_kv_head;
        let qkv = random(tok.len() * heads * head_dim, 1.5, head_dim as u64);
        let table = cpu_ref::rope_table(32, head_dim, 10000.0);
        let norm_w = random(2 * head_dim, 1.0, 9);
        let cache = 2 * n_kv_head * s.ctx * head_dim;
        let grads = AttnGrads {
            dq: random(tok.len() * n_head * head_dim, 1.0, 20),
            dk_cache: random(cache, 1.0, 21),
            dv_cache: random(cache, 1.0, 22),
        };
        let norm = qk_norm.then_some((&norm_w[..], 1e-6f32));
        let want = cpu_ref::qkv_split_backward(s, &tok, &qkv, rope.then_some(&table[..]), norm, &grads);

        let t = tok.len();
        let flags = if rope { ATTN_ROPE } else { 0 } | if qk_norm { ATTN_QK_NORM } else { 0 };
        let p = attn_params(s, &tok, flags);
        let tok_g = gpu.upload_u32("tok", &TokenInfo::words(&tok), &[t, 4]).unwrap();
        let qkv_g = gpu.upload_f32("qkv", &qkv, &[t, heads * head_dim]).unwrap();
        let rope_g = gpu.upload_f32("rope", table.as_flattened(), &[table.len() * 2]).unwrap();
        let norm_g = gpu.upload_f32("norm", &norm_w, &[2, head_dim]).unwrap();
        let dq = gpu.upload_f32("dq", &grads.dq, &[t, n_head, head_dim]).unwrap();
        let dk = gpu.upload_f32("dk", &grads.dk_cache, &[cache]).unwrap();
        let dv = gpu.upload_f32("dv", &grads.dv_cache, &[cache]).unwrap();
        let dqkv = gpu.zeros("dqkv", &[t, heads * head_dim]).unwrap();
        let mut b = gpu.batch();
        b.qkv_split_backward(&p, &tok_g, &qkv_g, &rope_g, qk_norm.then_some(&norm_g), &dq, &dk, &dv, &dqkv)
            .unwrap();
        b.submit().unwrap();
        let what = format!("dqkv H={n_head} Hkv={n_kv_head} hd={head_dim} norm={qk_norm} rope={rope}");
        assert_close(&what, &gpu.read_f32(&dqkv).unwrap(), &want, 1e-5, 1e-4);
    }
}

#[test]
fn attention_train_forward_and_backward_match_reference() {
    check_attention_train_and_backward(&gpu());
}

/// The fourth case's 186 score rows take three workgroups of the softmax, which fold under a lowered
/// grid limit (`kernels_folded_grids.rs`). Head sizes 32, 64 and 128 take attention_subgroup.wgsl's
/// training forward on lavapipe (kernels_attention_subgroup.rs checks that it runs).
pub(crate) fn check_attention_train_and_backward(gpu: &Gpu) {
    for &(n_head, n_kv_head, head_dim, n0, n1) in &[
        (4usize, 2usize, 16usize, 9u32, 4u32),
        (3, 1, 8, 5, 2),
        (2, 2, 64, 1, 1),
        (6, 2, 12, 20, 11),
        (4, 2, 32, 7, 3),
        (2, 1, 128, 6, 9),
    ] {
        let s = AttnShape { n_head, n_kv_head, head_dim, ctx: 40 };
        // The last case interleaves the two sequences' tokens in the flat batch.
        let tok = if n0 == 20 { interleaved(two_sequences(n0, n1)) } else { two_sequences(n0, n1) };
        let t = tok.len();
        let q_len = t * n_head * head_dim;
        let cache = 2 * n_kv_head * s.ctx * head_dim;
        let seed = (n_head * 100 + head_dim) as u64;
        let (q, kc, vc) =
            (random(q_len, 1.5, seed), random(cache, 1.5, seed + 1), random(cache, 1.0, seed + 2));
        let dout = random(q_len, 1.0, seed + 3);
        let out_ref = cpu_ref::attention_forward(s, &tok, &q, &kc, &vc);
        let lse_ref = cpu_ref::attention_lse(s, &tok, &q, &kc);
        let want = cpu_ref::attention_backward(s, &tok, &q, &kc, &vc, &dout);

        let p = attn_params(s, &tok, 0);
        let span = p.span as usize;
        let up = |name: &str, v: &[f32]| gpu.upload_f32(name, v, &[v.len()]).unwrap();
        let tok_g = gpu.upload_u32("tok", &TokenInfo::words(&tok), &[t, 4]).unwrap();
        let ranges_g = gpu.upload_u32("slot tokens", &TokenInfo::slot_ranges(&tok, 2), &[2, 2]).unwrap();
        let (q_g, k_g, v_g, dout_g) = (up("q", &q), up("k", &kc), up("v", &vc), up("dout", &dout));
        let scores = gpu.zeros("scores", &[t, n_head, span]).unwrap();
        let out = gpu.zeros("out", &[t, n_head, head_dim]).unwrap();
        let lse = gpu.zeros("lse", &[t, n_head]).unwrap();
        let delta = gpu.zeros("delta", &[t, n_head]).unwrap();
        let pds = gpu.zeros("pds", &[t, n_head, span, 2]).unwrap();
        let dq = gpu.zeros("dq", &[t, n_head, head_dim]).unwrap();
        // Filled with garbage: the backward must overwrite every entry.
        let dk = up("dk", &random(cache, 9.0, 1));
        let dv = up("dv", &random(cache, 9.0, 2));
        let mut b = gpu.batch();
        b.attention_train(&p, &tok_g, &q_g, &k_g, &v_g, &scores, &out, &lse).unwrap();
        let io = AttnBackward {
            tok: &tok_g,
            slot_tokens: &ranges_g,
            q: &q_g,
            k_cache: &k_g,
            v_cache: &v_g,
            out: &out,
            dout: &dout_g,
            lse: &lse,
            delta: &delta,
            pds: &pds,
            dq: &dq,
            dk_cache: &dk,
            dv_cache: &dv,
        };
        b.attention_backward(&p, 2, &io, GradWrite::Overwrite).unwrap();
        b.submit().unwrap();
        let what = format!("attention H={n_head} Hkv={n_kv_head} hd={head_dim} T={t}");
        assert_close(&format!("{what} out"), &gpu.read_f32(&out).unwrap(), &out_ref, 1e-5, 1e-4);
        assert_close(&format!("{what} lse"), &gpu.read_f32(&lse).unwrap(), &lse_ref, 1e-5, 1e-5);
        assert_close(&format!("{what} dq"), &gpu.read_f32(&dq).unwrap(), &want.dq, 1e-5, 1e-4);
        assert_close(&format!("{what} dk"), &gpu.read_f32(&dk).unwrap(), &want.dk_cache, 1e-5, 1e-4);
        assert_close(&format!("{what} dv"), &gpu.read_f32(&dv).unwrap(), &want.dv_cache, 1e-5, 1e-4);
    }
}

/// One pass's share of the tokens: its rows of q and dout, and the buffers its forward and backward
/// write.
struct AttnPass {
    p: AttnParams,
    tok: babelrl::gpu::Tensor,
    ranges: babelrl::gpu::Tensor,
    q: babelrl::gpu::Tensor,
    dout: babelrl::gpu::Tensor,
    scores: babelrl::gpu::Tensor,
    out: babelrl::gpu::Tensor,
    lse: babelrl::gpu::Tensor,
    delta: babelrl::gpu::Tensor,
    pds: babelrl::gpu::Tensor,
    dq: babelrl::gpu::Tensor,
}

fn attn_pass(gpu: &babelrl::gpu::Gpu, s: AttnShape, tok: &[TokenInfo], q: &[f32], dout: &[f32]) -> AttnPass {
    let (t, h, hd) = (tok.len(), s.n_head, s.head_dim);
    let p = attn_params(s, tok, 0);
    let span = p.span as usize;
    AttnPass {
        p,
        tok: gpu.upload_u32("tok", &TokenInfo::words(tok), &[t, 4]).unwrap(),
        ranges: gpu.upload_u32("slot tokens", &TokenInfo::slot_ranges(tok, 2), &[2, 2]).unwrap(),
        q: gpu.upload_f32("q", q, &[t, h, hd]).unwrap(),
        dout: gpu.upload_f32("dout", dout, &[t, h, hd]).unwrap(),
        scores: gpu.zeros("scores", &[t, h, span]).unwrap(),
        out: gpu.zeros("out", &[t, h, hd]).unwrap(),
        lse: gpu.zeros("lse", &[t, h]).unwrap(),
        delta: gpu.zeros("delta", &[t, h]).unwrap(),
        pds: gpu.zeros("pds", &[t, h, span, 2]).unwrap(),
        dq: gpu.zeros("dq", &[t, h, hd]).unwrap(),
    }
}

/// A sequence's tokens split over two backward passes (as the walk budget's error tells a caller to do)
/// give the one-pass gradients when dK and dV accumulate: both passes adding into a buffer that already
/// holds a gradient, and a first pass overwriting garbage followed by an accumulating one.
#[test]
fn attention_backward_split_inside_a_sequence_accumulates_dk_dv() {
    let gpu = gpu();
    let s = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 16, ctx: 40 };
    // Both slots' tokens alternate, so the split at the middle cuts through both sequences.
    let tok = interleaved(two_sequences(13, 6));
    let (t, hd) = (tok.len(), s.head_dim);
    let row = s.n_head * hd;
    let cache = 2 * s.n_kv_head * s.ctx * hd;
    let (q, kc, vc) = (random(t * row, 1.5, 31), random(cache, 1.5, 32), random(cache, 1.0, 33));
    let dout = random(t * row, 1.0, 34);
    let want = cpu_ref::attention_backward(s, &tok, &q, &kc, &vc, &dout);
    let k_g = gpu.upload_f32("k", &kc, &[cache]).unwrap();
    let v_g = gpu.upload_f32("v", &vc, &[cache]).unwrap();
    let cut = t / 2;
    let prior_k = random(cache, 1.0, 35);
    let prior_v = random(cache, 1.0, 36);
    let garbage = random(cache, 9.0, 37);
    let cases = [
        ("accumulate, accumulate onto a gradient", [GradWrite::Accumulate, GradWrite::Accumulate], true),
        ("overwrite garbage, accumulate", [GradWrite::Overwrite, GradWrite::Accumulate], false),
    ];
    for (name, writes, onto_prior) in cases {
        let passes = [
            attn_pass(&gpu, s, &tok[..cut], &q[..cut * row], &dout[..cut * row]),
            attn_pass(&gpu, s, &tok[cut..], &q[cut * row..], &dout[cut * row..]),
        ];
        let (init_k, init_v) = if onto_prior { (&prior_k, &prior_v) } else { (&garbage, &garbage) };
        let dk = gpu.upload_f32("dk", init_k, &[cache]).unwrap();
        let dv = gpu.upload_f32("dv", init_v, &[cache]).unwrap();
        let mut b = gpu.batch();
        for (pass, write) in passes.iter().zip(writes) {
            b.attention_train(&pass.p, &pass.tok, &pass.q, &k_g, &v_g, &pass.scores, &pass.out, &pass.lse)
                .unwrap();
            let io = AttnBackward {
                tok: &pass.tok,
                slot_tokens: &pass.ranges,
                q: &pass.q,
                k_cache: &k_g,
                v_cache: &v_g,
                out: &pass.out,
                dout: &pass.dout,
                lse: &pass.lse,
                delta: &pass.delta,
                pds: &pass.pds,
                dq: &pass.dq,
                dk_cache: &dk,
                dv_cache: &dv,
            };
            b.attention_backward(&pass.p, 2, &io, write).unwrap();
        }
        b.submit().unwrap();
        let plus = |a: &[f32], prior: &[f32]| -> Vec<f32> {
            if onto_prior { a.iter().zip(prior).map(|(x, y)| x + y).collect() } else { a.to_vec() }
        };
        let dq = [gpu.read_f32(&passes[0].dq).unwrap(), gpu.read_f32(&passes[1].dq).unwrap()].concat();
        assert_close(&format!("{name}: dq"), &dq, &want.dq, 1e-5, 1e-4);
        let (want_k, want_v) = (plus(&want.dk_cache, &prior_k), plus(&want.dv_cache, &prior_v));
        assert_close(&format!("{name}: dk"), &gpu.read_f32(&dk).unwrap(), &want_k, 1e-5, 1e-4);
        assert_close(&format!("{name}: dv"), &gpu.read_f32(&dv).unwrap(), &want_v, 1e-5, 1e-4);
    }
}

// ---------------------------------------------------------------------------------------------------
// Shared prompts: the followers' dK / dV summed into the leader

#[test]
fn shared_prompt_grad_matches_reference() {
    check_shared_prompt_grad(&gpu());
}

/// The summing kernel against `cpu_ref` on a buffer of garbage (every entry it must leave alone is
/// compared too): runs of len · hd that do not divide the workgroup, several followers in any order, a
/// leader that is not slot 0. The first case's 2,412 entries take 38 workgroups, which fold under a
/// lowered grid limit (`kernels_folded_grids.rs`).
pub(crate) fn check_shared_prompt_grad(gpu: &Gpu) {
    let shape = |slots, n_kv_head, ctx, head_dim| KvCacheShape { slots, n_kv_head, ctx, head_dim };
    let many = [39, 0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 20, 30, 31, 32, 33, 34, 35, 36, 37, 38];
    let cases = [
        (shape(6, 3, 70, 12), SharedPrompt { leader: 2, followers: &[0, 5, 3], len: 67 }),
        (shape(5, 1, 9, 4), SharedPrompt { leader: 4, followers: &[1], len: 1 }),
        (shape(3, 2, 33, 8), SharedPrompt { leader: 1, followers: &[2, 0], len: 33 }),
        (shape(40, 2, 5, 4), SharedPrompt { leader: 7, followers: &many, len: 3 }),
    ];
    for (i, &(cache, prompt)) in cases.iter().enumerate() {
        let KvCacheShape { slots, n_kv_head, ctx, head_dim } = cache;
        let SharedPrompt { leader, followers, len } = prompt;
        let n = slots * n_kv_head * ctx * head_dim;
        let before = random(n, 3.0, 50 + i as u64);
        let mut want = before.clone();
        let s = AttnShape { n_head: n_kv_head, n_kv_head, head_dim, ctx };
        cpu_ref::shared_prompt_grad_into_leader(&mut want, s, leader, followers, len);
        assert_ne!(want, before, "case {i}: the reference changed nothing, the check would be empty");
        let g = gpu.upload_f32("dk", &before, &[slots, n_kv_head, ctx, head_dim]).unwrap();
        let mut b = gpu.batch();
        b.sum_shared_prompt_grad_into_leader(&g, cache, prompt).unwrap();
        b.submit().unwrap();
        let what = format!(
            "shared prompt case {i}: {slots} slots, Hkv={n_kv_head}, ctx={ctx}, hd={head_dim}, len={len}"
        );
        assert_close(&what, &gpu.read_f32(&g).unwrap(), &want, 1e-6, 1e-6);
    }
}

#[test]
fn shared_prompt_grad_rejects_bad_launches() {
    let gpu = gpu();
    let cache = KvCacheShape { slots: 4, n_kv_head: 2, ctx: 6, head_dim: 4 };
    let g = gpu.zeros("dk", &[4, 2, 6, 4]).unwrap();
    let small = gpu.zeros("small", &[4, 2, 5, 4]).unwrap();
    let many: Vec<usize> = (1..=MAX_PROMPT_FOLLOWERS + 1).collect();
    let big = KvCacheShape { slots: MAX_PROMPT_FOLLOWERS + 2, n_kv_head: 1, ctx: 1, head_dim: 4 };
    let gbig = gpu.zeros("dk", &[big.slots, 1, 1, 4]).unwrap();
    let mut b = gpu.batch();
    let mut err =
        |t: &babelrl::gpu::Tensor, c: KvCacheShape, leader: usize, followers: &[usize], len: usize| {
            b.sum_shared_prompt_grad_into_leader(t, c, SharedPrompt { leader, followers, len })
                .unwrap_err()
                .to_string()
        };
    let e = err(&g, cache, 0, &[1, 4], 3);
    assert!(e.contains("shared_prompt_grad_backward") && e.contains("slot 4 of a cache with 4 slots"), "{e}");
    let e = err(&g, cache, 4, &[1], 3);
    assert!(e.contains("slot 4"), "{e}");
    let e = err(&g, cache, 0, &[1, 2], 7);
    assert!(e.contains("7 positions in a cache of 6"), "{e}");
    let e = err(&g, cache, 1, &[2, 1], 3);
    assert!(e.contains("slot 1 is listed twice (or is the leader"), "{e}");
    let e = err(&g, cache, 0, &[2, 3, 2], 3);
    assert!(e.contains("slot 2 is listed twice"), "{e}");
    let e = err(&small, cache, 0, &[1], 3);
    assert!(e.contains("shared_prompt_grad_backward: `grad`"), "{e}");
    let e = err(&gbig, big, 0, &many, 1);
    assert!(e.contains("at most 1024"), "{e}");
    assert!(b.is_empty(), "a rejected launch recorded a dispatch");
}

/// End to end at the kernel level: four sequences share a prompt of P tokens, computed once in slot 0,
/// its keys and values copied into slots 1..3 at the same positions; each then has its own completion.
/// Attention's backward over the shared batch followed by the summing must give, at the leader's
/// prompt positions, the sum over the four sequences of what a reference computes for the four
/// sequences run separately, each with the whole prompt in its own slot (the prompt rows' upstream
/// gradient in the shared pass is the sum of the four sequences' ones, as the layer above delivers it
/// once its own summing has run). Without the summing the leader holds only its own share: that fails.
#[test]
fn shared_prompt_grad_sums_every_sequence_into_the_leader() {
    let gpu = gpu();
    let s = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 8, ctx: 16 };
    let (hd, row) = (s.head_dim, s.n_head * s.head_dim);
    let (prompt, completions) = (5usize, [3usize, 4, 2, 5]);
    let slots = completions.len();
    let cache_len = slots * s.n_kv_head * s.ctx * hd;
    // The caches: every slot holds the same prompt keys and values (copied), and its own completion's.
    let (mut kc, mut vc) = (random(cache_len, 1.5, 61), random(cache_len, 1.0, 62));
    let run = s.ctx * hd;
    for slot in 1..slots {
        for h in 0..s.n_kv_head {
            let (src, dst) = (h * run, (slot * s.n_kv_head + h) * run);
            kc.copy_within(src..src + prompt * hd, dst);
            vc.copy_within(src..src + prompt * hd, dst);
        }
    }
    let q_prompt = random(prompt * row, 1.5, 63);
    // Separate sequences: each slot runs the whole prompt (the same queries) and its completion.
    let (mut tok_sep, mut q_sep, mut dout_sep) = (Vec::new(), Vec::new(), Vec::new());
    // Shared: the prompt's rows once in slot 0 (upstream gradient summed over the sequences), then
    // each slot's completion.
    let (mut tok_sh, mut q_sh, mut dout_sh) = (Vec::new(), Vec::new(), Vec::new());
    let mut dout_prompt_sum = vec![0.0f32; prompt * row];
    for (slot, &c) in completions.iter().enumerate() {
        let dout_prompt = random(prompt * row, 1.0, 70 + slot as u64);
        for (acc, d) in dout_prompt_sum.iter_mut().zip(&dout_prompt) {
            *acc += d;
        }
        let (q_c, dout_c) = (random(c * row, 1.5, 80 + slot as u64), random(c * row, 1.0, 90 + slot as u64));
        let slot32 = slot as u32;
        let tokens = |from: usize, to: usize| {
            (from as u32..to as u32).map(move |p| TokenInfo { pos: p, slot: slot32, n_keys: p + 1 })
        };
        tok_sep.extend(tokens(0, prompt + c));
        q_sep.extend_from_slice(&q_prompt);
        q_sep.extend_from_slice(&q_c);
        dout_sep.extend_from_slice(&dout_prompt);
        dout_sep.extend_from_slice(&dout_c);
        tok_sh.extend(tokens(if slot == 0 { 0 } else { prompt }, prompt + c));
        q_sh.extend_from_slice(&q_c);
        dout_sh.extend_from_slice(&dout_c);
    }
    // The shared pass's rows: slot 0's prompt, then its completion, then the followers' completions.
    let (q_sh, dout_sh) = ([&q_prompt[..], &q_sh].concat(), [&dout_prompt_sum[..], &dout_sh].concat());
    let want = cpu_ref::attention_backward(s, &tok_sep, &q_sep, &kc, &vc, &dout_sep);

    let t = tok_sh.len();
    let p = attn_params(s, &tok_sh, 0);
    let span = p.span as usize;
    let up = |name: &str, v: &[f32]| gpu.upload_f32(name, v, &[v.len()]).unwrap();
    let tok_g = gpu.upload_u32("tok", &TokenInfo::words(&tok_sh), &[t, 4]).unwrap();
    let ranges_g =
        gpu.upload_u32("slot tokens", &TokenInfo::slot_ranges(&tok_sh, slots), &[slots, 2]).unwrap();
    let (q_g, k_g, v_g, dout_g) = (up("q", &q_sh), up("k", &kc), up("v", &vc), up("dout", &dout_sh));
    let scores = gpu.zeros("scores", &[t, s.n_head, span]).unwrap();
    let out = gpu.zeros("out", &[t, s.n_head, hd]).unwrap();
    let lse = gpu.zeros("lse", &[t, s.n_head]).unwrap();
    let delta = gpu.zeros("delta", &[t, s.n_head]).unwrap();
    let pds = gpu.zeros("pds", &[t, s.n_head, span, 2]).unwrap();
    let dq = gpu.zeros("dq", &[t, s.n_head, hd]).unwrap();
    let cache = KvCacheShape { slots, n_kv_head: s.n_kv_head, ctx: s.ctx, head_dim: hd };
    let followers = [1usize, 2, 3];
    let run_shared = |sum: bool| -> (Vec<f32>, Vec<f32>) {
        let dk = up("dk", &random(cache_len, 9.0, 1));
        let dv = up("dv", &random(cache_len, 9.0, 2));
        let mut b = gpu.batch();
        b.attention_train(&p, &tok_g, &q_g, &k_g, &v_g, &scores, &out, &lse).unwrap();
        let io = AttnBackward {
            tok: &tok_g,
            slot_tokens: &ranges_g,
            q: &q_g,
            k_cache: &k_g,
            v_cache: &v_g,
            out: &out,
            dout: &dout_g,
            lse: &lse,
            delta: &delta,
            pds: &pds,
            dq: &dq,
            dk_cache: &dk,
            dv_cache: &dv,
        };
        b.attention_backward(&p, slots, &io, GradWrite::Overwrite).unwrap();
        if sum {
            for g in [&dk, &dv] {
                let prompt_of = SharedPrompt { leader: 0, followers: &followers, len: prompt };
                b.sum_shared_prompt_grad_into_leader(g, cache, prompt_of).unwrap();
            }
        }
        b.submit().unwrap();
        (gpu.read_f32(&dk).unwrap(), gpu.read_f32(&dv).unwrap())
    };
    // The leader's prompt entries: the sum over the separate sequences; every slot's completion
    // entries: that sequence's own.
    let at = |slot: usize, h: usize, pos: usize| ((slot * s.n_kv_head + h) * s.ctx + pos) * hd;
    let prompt_sum = |g: &[f32]| -> Vec<f32> {
        let mut v = Vec::new();
        for h in 0..s.n_kv_head {
            for i in 0..prompt * hd {
                v.push((0..slots).map(|slot| g[at(slot, h, 0) + i] as f64).sum::<f64>() as f32);
            }
        }
        v
    };
    let leader_prompt = |g: &[f32]| -> Vec<f32> {
        (0..s.n_kv_head).flat_map(|h| g[at(0, h, 0)..at(0, h, prompt)].to_vec()).collect()
    };
    let completion_entries = |g: &[f32]| -> Vec<f32> {
        let mut v = Vec::new();
        for (slot, &c) in completions.iter().enumerate() {
            for h in 0..s.n_kv_head {
                v.extend_from_slice(&g[at(slot, h, prompt)..at(slot, h, prompt + c)]);
            }
        }
        v
    };
    let (want_k, want_v) = (prompt_sum(&want.dk_cache), prompt_sum(&want.dv_cache));
    let (dk, dv) = run_shared(true);
    assert_close("leader's prompt dK", &leader_prompt(&dk), &want_k, 1e-5, 1e-4);
    assert_close("leader's prompt dV", &leader_prompt(&dv), &want_v, 1e-5, 1e-4);
    let what = "completions' dK";
    assert_close(what, &completion_entries(&dk), &completion_entries(&want.dk_cache), 1e-5, 1e-4);
    let what = "completions' dV";
    assert_close(what, &completion_entries(&dv), &completion_entries(&want.dv_cache), 1e-5, 1e-4);

    // Skipping the summing loses the followers' share of the prompt's gradient.
    let (dk, dv) = run_shared(false);
    for (name, got, want) in [("dK", leader_prompt(&dk), &want_k), ("dV", leader_prompt(&dv), &want_v)] {
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(want.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst > 0.05 * scale, "prompt {name} without the summing: off by only {worst} of {scale}");
    }
}
