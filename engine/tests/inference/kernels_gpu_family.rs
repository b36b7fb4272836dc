//! The GPU kernel family (chosen on real GPUs) run here by forcing it on whatever adapter exists:
//! the few-row matmul with a workgroup-memory reduction and with subgroup operations, against the
//! plain-Rust reference, and a whole greedy decode equal to the CPU family's.

use crate::common;

use std::sync::Arc;

use babelrl::generate::{SamplingConfig, generate};
use babelrl::gpu::cpu_ref;
use babelrl::gpu::{Gpu, GpuOptions, KernelProfile};
use babelrl::model::load_language_model;
use common::{assert_close_by, random, repo_root};
use half::f16;

fn gpu_family(subgroups: bool) -> Arc<Gpu> {
    let options = GpuOptions {
        kernels: Some(KernelProfile::Gpu),
        disable_subgroups: !subgroups,
        ..GpuOptions::from_env()
    };
    Gpu::new(&options).unwrap()
}

fn check_few_rows(gpu: &Gpu) {
    for (i, &(t, n, k)) in
        [(1usize, 1usize, 8usize), (1, 130, 576), (2, 65, 1536), (3, 7, 8 * 70)].iter().enumerate()
    {
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
        batch.matmul(&xg, &wg, Some(&bg), Some(&rg), &y, t);
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
