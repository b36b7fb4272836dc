//! The LM head fused with a chunked cross-entropy (shaders/cross_entropy.wgsl): forward (lse, nll) and
//! backward (dh) against `cpu_ref` on awkward sizes (rows not a multiple of the workgroup or the four-row
//! tiles, vocabularies not a multiple of the chunk, a vocabulary past 65536 in row blocks), the reference
//! against central finite differences of an f64 forward, masked rows, and a wrong backward shown to fail.

use crate::common::{assert_close, gpu, random};

use babelrl::gpu::kernels::{GradWrite, XENT_CHUNK, XENT_IGNORE, xent_chunk_cols};
use babelrl::gpu::{Gpu, GpuOptions, cpu_ref};
use half::f16;

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

/// Random target ids in [0, vocab), with `ignored` rows set to XENT_IGNORE.
fn targets(t: usize, vocab: usize, ignored: &[usize], seed: u64) -> Vec<u32> {
    let mut y: Vec<u32> = random(t, 1.0, seed)
        .iter()
        .map(|u| (((u + 1.0) / 2.0 * vocab as f32) as usize).min(vocab - 1) as u32)
        .collect();
    for &r in ignored {
        y[r] = XENT_IGNORE;
    }
    y
}

/// Σ_t g_t · nll_t in f64, written from the definition: nll_t = log Σ_v exp(h_t · w_v) − h_t · w_{y_t}.
fn weighted_nll_f64(h: &[f64], w: &[f16], y: &[u32], g: &[f32], dim: usize) -> f64 {
    let vocab = w.len() / dim;
    (0..y.len())
        .filter(|&t| (y[t] as usize) < vocab)
        .map(|t| {
            let logits: Vec<f64> = (0..vocab)
                .map(|v| (0..dim).map(|i| h[t * dim + i] * w[v * dim + i].to_f64()).sum())
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
            g[t] as f64 * (lse - logits[y[t] as usize])
        })
        .sum()
}

/// ∂/∂h of Σ g · nll by central differences in f64.
fn fd_dh(h: &[f32], w: &[f16], y: &[u32], g: &[f32], dim: usize) -> Vec<f64> {
    let mut x: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    (0..x.len())
        .map(|i| {
            let (keep, step) = (x[i], 1e-6 * x[i].abs().max(1.0));
            x[i] = keep + step;
            let up = weighted_nll_f64(&x, w, y, g, dim);
            x[i] = keep - step;
            let down = weighted_nll_f64(&x, w, y, g, dim);
            x[i] = keep;
            (up - down) / (2.0 * step)
        })
        .collect()
}

/// The first element beyond 1e-5 · (max |fd| + |fdᵢ|) (the differences' own error is ~1e-9 here).
fn fd_mismatch(got: &[f32], fd: &[f64]) -> Option<String> {
    let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1e-2, "the gradient is (nearly) zero everywhere, the check would be empty");
    (0..fd.len()).find_map(|i| {
        let tol = 1e-5 * (scale + fd[i].abs());
        ((got[i] as f64 - fd[i]).abs() > tol)
            .then(|| format!("dh[{i}]: {} vs finite differences {}", got[i], fd[i]))
    })
}

#[test]
fn cross_entropy_reference_matches_finite_differences() {
    let (t, vocab, dim) = (5, 11, 6);
    let h = random(t * dim, 1.5, 1);
    let w = to_f16(&random(vocab * dim, 1.0, 2));
    let y = targets(t, vocab, &[3], 3);
    let mut g = random(t, 1.0, 4);
    g[1] = 0.0; // a masked row
    let fd = fd_dh(&h, &w, &y, &g, dim);
    let dh = cpu_ref::cross_entropy_backward(&h, &w, &y, &g, dim);
    if let Some(m) = fd_mismatch(&dh, &fd) {
        panic!("{m}");
    }
    // Masked rows (g = 0, or an ignored target whatever its g) get exactly zero gradient.
    for r in [1, 3] {
        assert!(dh[r * dim..(r + 1) * dim].iter().all(|&v| v == 0.0), "row {r} is masked: {dh:?}");
    }
    // The forward's nll is the f64 definition's, row by row.
    let (_, nll) = cpu_ref::cross_entropy_forward(&h, &w, &y, dim);
    let h64: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    for r in 0..t {
        let mut one_hot = vec![0.0f32; t];
        one_hot[r] = 1.0;
        let want = weighted_nll_f64(&h64, &w, &y, &one_hot, dim);
        assert!((nll[r] as f64 - want).abs() < 1e-5 * want.abs().max(1.0), "nll[{r}] {} vs {want}", nll[r]);
    }

    // A wrong backward (softmax · g without subtracting 1 at the target) is caught.
    let mut wrong = dh.clone();
    for r in 0..t {
        if (y[r] as usize) < vocab {
            for i in 0..dim {
                wrong[r * dim + i] += g[r] * w[y[r] as usize * dim + i].to_f32();
            }
        }
    }
    assert!(fd_mismatch(&wrong, &fd).is_some(), "forgetting the target's −1 must fail the check");
}

/// Forward and backward on the GPU against the reference; `per_block` rows per weight block.
fn check(gpu: &Gpu, t: usize, vocab: usize, dim: usize, per_block: usize, write: GradWrite, seed: u64) {
    let h = random(t * dim, 1.0, seed);
    let w = to_f16(&random(vocab * dim, 0.5, seed + 1));
    let ignored: Vec<usize> = if t > 2 { vec![t / 2] } else { vec![] };
    let y = targets(t, vocab, &ignored, seed + 2);
    let mut g = random(t, 1.0, seed + 3);
    if t > 1 {
        g[t - 1] = 0.0;
    }
    let prior = random(t * dim, 1.0, seed + 4);
    let w32: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let wg = gpu.upload_weight_in_blocks("w", &w32, vocab, dim, per_block).unwrap();
    let hg = gpu.upload_f32("h", &h, &[t, dim]).unwrap();
    let yg = gpu.upload_u32("y", &y, &[t]).unwrap();
    let gg = gpu.upload_f32("g", &g, &[t]).unwrap();
    let scratch = gpu.zeros("scratch", &[t, xent_chunk_cols(vocab)]).unwrap();
    let stats = gpu.zeros("stats", &[t, 4]).unwrap();
    let lse = gpu.zeros("lse", &[t]).unwrap();
    let nll = gpu.zeros("nll", &[t]).unwrap();
    let dh = gpu.upload_f32("dh", &prior, &[t, dim]).unwrap();
    let mut b = gpu.batch();
    b.lm_head_cross_entropy(&hg, &wg, &yg, &scratch, &stats, &lse, &nll, t).unwrap();
    b.lm_head_cross_entropy_backward(&hg, &wg, &yg, &lse, &gg, &scratch, &dh, t, write).unwrap();
    b.submit().unwrap();

    // The one-walk variant, into fresh outputs.
    let (lse1, nll1, dh1) = (
        gpu.zeros("lse", &[t]).unwrap(),
        gpu.zeros("nll", &[t]).unwrap(),
        gpu.zeros("dh", &[t, dim]).unwrap(),
    );
    let mut b = gpu.batch();
    b.lm_head_cross_entropy_with_grad(&hg, &wg, &yg, &gg, &scratch, &stats, &lse1, &nll1, &dh1, t).unwrap();
    b.submit().unwrap();

    let what = format!("T {t} V {vocab} D {dim} ({} blocks, {write:?})", wg.blocks.len());
    let (want_lse, want_nll) = cpu_ref::cross_entropy_forward(&h, &w, &y, dim);
    assert_close(&format!("lse {what}"), &gpu.read_f32(&lse).unwrap(), &want_lse, 1e-4, 1e-5);
    assert_close(&format!("nll {what}"), &gpu.read_f32(&nll).unwrap(), &want_nll, 1e-4, 1e-5);
    let want = cpu_ref::cross_entropy_backward(&h, &w, &y, &g, dim);
    let one_walk = format!("{what}, one walk");
    assert_close(&format!("lse {one_walk}"), &gpu.read_f32(&lse1).unwrap(), &want_lse, 1e-4, 1e-5);
    assert_close(&format!("nll {one_walk}"), &gpu.read_f32(&nll1).unwrap(), &want_nll, 1e-4, 1e-5);
    let got1 = gpu.read_f32(&dh1).unwrap();
    assert_close(&format!("dh {one_walk}"), &got1, &want, 1e-5, 1e-4);
    for r in ignored.iter().copied().chain((t > 1).then_some(t - 1)) {
        assert!(got1[r * dim..(r + 1) * dim].iter().all(|&v| v == 0.0), "{one_walk}: masked row {r}");
    }
    let mut want = want;
    if write == GradWrite::Accumulate {
        want.iter_mut().zip(&prior).for_each(|(a, b)| *a += b);
    }
    let got = gpu.read_f32(&dh).unwrap();
    assert_close(&format!("dh {what}"), &got, &want, 1e-5, 1e-4);
    // Masked rows (an ignored target, a zero upstream gradient) leave dh exactly as the write mode says.
    for r in ignored.iter().copied().chain((t > 1).then_some(t - 1)) {
        let row = &got[r * dim..(r + 1) * dim];
        match write {
            GradWrite::Overwrite => assert!(row.iter().all(|&v| v == 0.0), "{what}: masked row {r}"),
            GradWrite::Accumulate => {
                assert_eq!(row, &prior[r * dim..(r + 1) * dim], "{what}: masked row {r}")
            }
        }
    }
}

/// (T, V, D, rows per block): one row; T = 67 (not a multiple of 64 or 4, and past the broadcast
/// matmul's four-rows-per-lane threshold) and V = 4099 (one full chunk and 3 columns); V = 9000 in blocks
/// of 5000 (chunks restart at each block); V = 70001 > 65536 in blocks of 30000 with a small D (long
/// vocabularies, as Qwen's 151,936 in row blocks).
const CASES: [(usize, usize, usize, usize); 4] =
    [(1, 5, 8, usize::MAX), (67, 4099, 24, usize::MAX), (13, 9000, 16, 5000), (3, 70001, 8, 30000)];

fn check_cases(gpu: &Gpu) {
    assert!(CASES.iter().any(|c| c.1 % XENT_CHUNK != 0 && c.1 > XENT_CHUNK));
    for (i, &(t, vocab, dim, per_block)) in CASES.iter().enumerate() {
        let write = if i % 2 == 0 { GradWrite::Overwrite } else { GradWrite::Accumulate };
        check(gpu, t, vocab, dim, per_block, write, 10 * i as u64);
    }
}

/// The adapter's own kernels: on lavapipe (subgroups of eight) the chunk products run on the broadcast
/// matmuls (matmul_subgroup.wgsl), which the profile shows.
#[test]
fn lm_head_cross_entropy_matches_reference_on_awkward_sizes() {
    let gpu = Gpu::new(&GpuOptions { profile: true, ..GpuOptions::from_env() }).unwrap();
    gpu.take_profile();
    check_cases(&gpu);
    if gpu.subgroup_matmul_rows().is_some() {
        let ran: Vec<String> = gpu.take_profile().into_iter().map(|k| k.kernel).collect();
        for entry in
            ["matmul_forward_subgroup", "matmul_forward_subgroup_1row", "matmul_backward_dx_subgroup"]
        {
            assert!(ran.iter().any(|k| k.ends_with(&format!("::{entry}"))), "{entry} did not run: {ran:?}");
        }
        assert!(!ran.iter().any(|k| k.ends_with("::xent_logits_chunk")), "{ran:?}");
    }
}

/// Without subgroup operations: cross_entropy.wgsl's own logits tile and matmul.wgsl's dX kernel.
#[test]
fn lm_head_cross_entropy_without_subgroups_matches_reference() {
    let gpu = Gpu::new(&GpuOptions { disable_subgroups: true, ..GpuOptions::from_env() }).unwrap();
    assert!(gpu.subgroup_matmul_rows().is_none());
    check_cases(&gpu);
}

#[test]
fn mis_sized_cross_entropy_launches_are_errors_naming_the_buffer() {
    let gpu = gpu();
    let (t, vocab, dim) = (3, 50, 8);
    let w = gpu.upload_weight_blocked("w", &random(vocab * dim, 0.5, 1), vocab, dim).unwrap();
    let h = gpu.zeros("h", &[t, dim]).unwrap();
    let y = gpu.upload_u32("y", &[0, 1, 2], &[t]).unwrap();
    let small = gpu.zeros("scratch", &[t, vocab - 1]).unwrap();
    let stats = gpu.zeros("stats", &[t, 4]).unwrap();
    let row = gpu.zeros("row", &[t]).unwrap();
    let mut b = gpu.batch();
    let err = b.lm_head_cross_entropy(&h, &w, &y, &small, &stats, &row, &row, t).unwrap_err().to_string();
    assert!(err.contains("lm_head_cross_entropy") && err.contains("`scratch`"), "{err}");
    let scratch = gpu.zeros("scratch", &[t, vocab]).unwrap();
    let err = b
        .lm_head_cross_entropy_backward(&h, &w, &y, &row, &row, &scratch, &row, t, GradWrite::Overwrite)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`dh`"), "{err}");
    let odd = gpu.upload_weight_blocked("w", &random(vocab * 6, 0.5, 1), vocab, 6).unwrap();
    let err = b.lm_head_cross_entropy(&h, &odd, &y, &scratch, &stats, &row, &row, t).unwrap_err().to_string();
    assert!(err.contains("multiple of 8"), "{err}");
    assert!(b.is_empty(), "a refused launch records nothing");
}

/// The row gather and scatter around the cross-entropy of the rows with a target (`LmRows`): rows
/// taken in any order, written back to their places, other rows untouched; mis-sized maps are errors.
#[test]
fn row_gather_and_scatter_move_whole_rows() {
    let gpu = gpu();
    let (t, d) = (11usize, 24usize);
    let x = random(t * d, 1.0, 70);
    let rows = [9u32, 0, 4, 5, 10];
    let (xg, map) = (gpu.upload_f32("x", &x, &[t, d]).unwrap(), gpu.upload_u32("rows", &rows, &[5]).unwrap());
    let picked = gpu.zeros("picked", &[t, d]).unwrap();
    let prior = random(t * d, 1.0, 71);
    let back = gpu.upload_f32("back", &prior, &[t, d]).unwrap();
    let mut b = gpu.batch();
    b.gather_rows(&xg, &map, &picked, rows.len(), t, d).unwrap();
    b.scatter_rows(&picked, &map, &back, rows.len(), t, d).unwrap();
    b.submit().unwrap();
    let got = gpu.read_f32(&picked).unwrap();
    for (i, &r) in rows.iter().enumerate() {
        assert_eq!(&got[i * d..(i + 1) * d], &x[r as usize * d..(r as usize + 1) * d], "gathered row {i}");
    }
    let got = gpu.read_f32(&back).unwrap();
    for r in 0..t {
        let want = if rows.contains(&(r as u32)) { &x } else { &prior };
        assert_eq!(&got[r * d..(r + 1) * d], &want[r * d..(r + 1) * d], "row {r} after the scatter");
    }
    let mut b = gpu.batch();
    let err = b.gather_rows(&xg, &map, &picked, 6, t, d).unwrap_err().to_string();
    assert!(err.contains("gather_rows") && err.contains("`rows`"), "{err}");
}
