//! The GPU kernel family (chosen on real GPUs) run here by forcing it on whatever adapter exists:
//! the few-row matmul with a workgroup-memory reduction and with subgroup operations, and the many-row
//! matmul tiled through workgroup memory, against the plain-Rust reference; and a whole greedy decode
//! (prefill included) equal to the CPU family's.

use crate::common;
use crate::kernels::{SWIGLU_SHAPES, check_matmul_swiglu};

use std::sync::Arc;

use babelrl::generate::{SamplingConfig, generate};
use babelrl::gpu::cpu_ref;
use babelrl::gpu::{Gpu, GpuOptions, KernelProfile};
use babelrl::model::load_language_model;
use common::{assert_close_by, random, repo_root};
use half::f16;

pub(crate) fn gpu_family(subgroups: bool) -> Arc<Gpu> {
    let options = GpuOptions {
        kernels: Some(KernelProfile::Gpu),
        disable_subgroups: !subgroups,
        ..GpuOptions::from_env()
    };
    Gpu::new(&options).unwrap()
}

pub(crate) const FEW_ROWS: &[(usize, usize, usize)] =
    &[(1, 1, 8), (1, 130, 576), (2, 65, 1536), (3, 7, 8 * 70)];
// Tiles of 64 × 64 with K slices of 32: partial tiles in both directions, one row, one column, one
// slice, and K not a multiple of 32 (which falls back to the CPU family's tile).
pub(crate) const MANY_ROWS: &[(usize, usize, usize)] =
    &[(4, 1, 32), (64, 64, 64), (65, 130, 576), (130, 200, 96), (200, 3, 1536), (9, 70, 8 * 37)];

fn check_few_rows(gpu: &Gpu) {
    check_shapes(gpu, FEW_ROWS);
}

pub(crate) fn check_shapes(gpu: &Gpu, shapes: &[(usize, usize, usize)]) {
    for (i, &(t, n, k)) in shapes.iter().enumerate() {
        let x = random(t * k, 1.0, i as u64);
        let w: Vec<f16> = random(n * k, 0.5, 100 + i as u64).iter().map(|&v| f16::from_f32(v)).collect();
        let b = random(n, 1.0, 200);
        let r = random(t * n, 1.0, 300);
        let want = cpu_ref::matmul_forward(&x, &w, Some(&b), Some(&r), t, n, k);
        let xg = gpu.upload_f32("x", &x, &[t, k]).unwrap();
        let wg = gpu.upload_weight_f16("w", &w, n, k).unwrap();
        let bg = gpu.upload_f32("b", &b, &[n]).unwrap();
        let rg = gpu.upload_f32("r", &r, &[t, n]).unwrap();
        let y = gpu.zeros("y", &[t, n]).unwrap();
        let mut batch = gpu.batch();
        batch.matmul(&xg, &wg, Some(&bg), Some(&rg), &y, t).unwrap();
        batch.submit().unwrap();
        // Same bound as kernels.rs: γ_K · Σ|xᵢwᵢ| for f32 accumulation in another order.
        let tol: Vec<f32> = (0..t * n)
            .map(|o| {
                let (row, col) = (o / n, o % n);
                let s: f32 = (0..k).map(|j| (x[row * k + j] * w[col * k + j].to_f32()).abs()).sum();
                k as f32 * f32::EPSILON * s + 1e-6
            })
            .collect();
        assert_close_by(
            &format!("gpu-family matmul t={t} n={n} k={k}"),
            &gpu.read_f32(&y).unwrap(),
            &want,
            |o| tol[o],
        );
    }
}

#[test]
fn few_row_matmul_with_workgroup_reduction_matches_reference() {
    let gpu = gpu_family(false);
    assert!(!gpu.summary.subgroups);
    check_few_rows(&gpu);
}

#[test]
fn few_row_matmul_with_subgroup_reduction_matches_reference() {
    let gpu = gpu_family(true);
    if !gpu.summary.subgroups {
        let _: Option<()> =
            common::skip(format!("adapter `{}` has no subgroup operations", gpu.summary.name));
        return;
    }
    check_few_rows(&gpu);
}

/// The LM head of Qwen2.5/Qwen3 has 151,936 rows, and a real GPU's binding limit lets one block hold
/// more than 65,535: decoding with one workgroup per output column must fold its grid (x + z) rather
/// than pass the adapter's 65,535 workgroups per dimension. K is small to keep it quick.
const WIDE: &[(usize, usize, usize)] = &[(1, 70_000, 8), (2, 65_537, 16)];

#[test]
fn few_row_matmul_past_65535_output_columns_matches_reference() {
    check_shapes(&gpu_family(false), WIDE);
    let gpu = gpu_family(true);
    if gpu.summary.subgroups {
        check_shapes(&gpu, WIDE);
    }
}

#[test]
fn many_row_matmul_tiled_in_workgroup_memory_matches_reference() {
    check_shapes(&gpu_family(false), MANY_ROWS);
}

/// A weight split in row blocks writes its slice of the output columns (`n_off`, row stride `ldy`).
#[test]
fn tiled_matmul_writes_its_row_block_of_the_output() {
    let gpu = gpu_family(false);
    let (t, n, k, ldy, n_off) = (70, 90, 64, 200, 77);
    let x = random(t * k, 1.0, 7);
    let w: Vec<f16> = random(n * k, 0.5, 8).iter().map(|&v| f16::from_f32(v)).collect();
    let r = random(t * ldy, 1.0, 9);
    let full = cpu_ref::matmul_forward(&x, &w, None, None, t, n, k);
    let xg = gpu.upload_f32("x", &x, &[t, k]).unwrap();
    let wg = gpu.upload_weight_f16("w", &w, n, k).unwrap();
    let rg = gpu.upload_f32("r", &r, &[t, ldy]).unwrap();
    let y = gpu.upload_f32("y", &vec![-7.0; t * ldy], &[t, ldy]).unwrap();
    let mut batch = gpu.batch();
    batch.matmul_into(&xg, &wg, None, Some(&rg), &y, t, ldy, n_off).unwrap();
    batch.submit().unwrap();
    let got = gpu.read_f32(&y).unwrap();
    let want: Vec<f32> = (0..t * ldy)
        .map(|o| {
            let (row, col) = (o / ldy, o % ldy);
            if (n_off..n_off + n).contains(&col) { full[row * n + col - n_off] + r[o] } else { -7.0 }
        })
        .collect();
    assert_close_by("tiled matmul into a row block", &got, &want, |_| 1e-4);
}

/// The SwiGLU epilogue in the GPU family: the few-row kernels (gate and up reduced side by side, with
/// workgroup memory or subgroup operations) and the tiled one (32 gate and 32 up columns per tile), with
/// K a multiple of 32 or not (the CPU family's tile then), against the reference and bit for bit against
/// matmul then swiglu; and a gate/up weight past 65,535 output columns folding its grid.
#[test]
fn swiglu_epilogue_matches_reference_in_the_gpu_family() {
    let mut shapes = SWIGLU_SHAPES.to_vec();
    shapes.extend([(70, 40, 64), (130, 100, 32), (65, 33, 576)]);
    for subgroups in [false, true] {
        let gpu = gpu_family(subgroups);
        if subgroups && !gpu.summary.subgroups {
            continue;
        }
        for (i, &(t, inter, k)) in shapes.iter().enumerate() {
            check_matmul_swiglu(&gpu, t, inter, k, 9000 + i as u64);
        }
        check_matmul_swiglu(&gpu, 1, 65_537, 8, 9999);
    }
}

#[test]
fn greedy_decode_is_the_same_with_either_kernel_family() {
    let path = repo_root().join("tests/fixtures/tiny-llama-gguf/tiny-llama.gguf");
    let cfg = SamplingConfig { max_new_tokens: 12, ..Default::default() };
    let prompts = vec![vec![5u32, 17, 99, 3], vec![42u32]];
    let run = |gpu: Arc<Gpu>| {
        let lm = load_language_model(gpu, &path).unwrap();
        generate(&lm.decoder, lm.tokenizer().unwrap(), &prompts, &cfg, |_| {}).unwrap()
    };
    let cpu_family =
        run(Gpu::new(&GpuOptions { kernels: Some(KernelProfile::Cpu), ..GpuOptions::from_env() }).unwrap());
    let gpu_family = run(gpu_family(true));
    for (a, b) in cpu_family.iter().zip(&gpu_family) {
        assert_eq!(a.tokens, b.tokens);
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4, "log-probs {x} vs {y}");
        }
    }
}
