//! Launch grids wider than the adapter's per-dimension workgroup limit fold into a second grid
//! dimension (`kernels::split_groups`). Real inputs reach the limit only at huge sizes (the GPU
//! family's few-row matmul on a 151,936-row LM head, see `kernels_gpu_family.rs`), so here every
//! kernel of both families runs with the fold limit lowered to one workgroup
//! (`GpuOptions::max_workgroups_per_dimension`, `BABELRL_MAX_WORKGROUPS`) against its reference: a
//! shader that rebuilt a folded index wrongly would skip or repeat columns.

use crate::common;
use crate::kernels;
use crate::kernels_backward;
use crate::kernels_dropout;
use crate::kernels_gpu_family::{FEW_ROWS, MANY_ROWS, check_shapes};

use std::sync::Arc;

use babelrl::gpu::cpu_ref;
use babelrl::gpu::{Gpu, GpuOptions, KernelProfile};
use common::{assert_close, random};
use half::f16;

fn folded(kernels: KernelProfile, subgroups: bool) -> Arc<Gpu> {
    Gpu::new(&GpuOptions {
        kernels: Some(kernels),
        disable_subgroups: !subgroups,
        max_workgroups_per_dimension: Some(1),
        ..GpuOptions::from_env()
    })
    .unwrap()
}

/// Launches whose x count the shared kernel tests leave at one workgroup, made wide enough to fold:
/// gathers of 300 columns, log-probs over 67 chunks and over 70 rows, pooling of 70 sequences.
fn check_wide_gathers_logprobs_and_pooling(gpu: &Gpu) {
    let (vocab, dim) = (5usize, 300usize);
    let table: Vec<f16> = random(vocab * dim, 1.0, 1).iter().map(|&v| f16::from_f32(v)).collect();
    let ids = [4u32, 0, 2];
    let tg = gpu.upload_weight_f16("table", &table, vocab, dim).unwrap();
    let idg = gpu.upload_u32("ids", &ids, &[3]).unwrap();
    let rows = gpu.zeros("rows", &[3, dim]).unwrap();
    let summed = gpu.zeros("summed", &[3, dim]).unwrap();
    let mut b = gpu.batch();
    b.embed_rows(&idg, &tg, &rows, 3).unwrap();
    b.embed_rows_add(&idg, &tg, &summed, 3).unwrap();
    b.embed_rows_add(&idg, &tg, &summed, 3).unwrap();
    b.submit().unwrap();
    let want = cpu_ref::embed_rows_forward(&ids, &table, dim);
    assert_close("wide embed_rows", &gpu.read_f32(&rows).unwrap(), &want, 0.0, 0.0);
    let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
    assert_close("wide embed_rows_add", &gpu.read_f32(&summed).unwrap(), &twice, 0.0, 0.0);

    for (rows, vocab) in [(2usize, 66 * 1024 + 5), (70, 8)] {
        let logits = random(rows * vocab, 8.0, rows as u64);
        let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919) % vocab) as u32).collect();
        let lg = gpu.upload_f32("logits", &logits, &[rows, vocab]).unwrap();
        let tgg = gpu.upload_u32("targets", &targets, &[rows]).unwrap();
        let partial = gpu.zeros("partial", &[rows, vocab.div_ceil(1024), 2]).unwrap();
        let lp = gpu.zeros("lp", &[rows]).unwrap();
        let mut b = gpu.batch();
        b.logprob(&lg, &tgg, &partial, &lp, rows, vocab).unwrap();
        b.submit().unwrap();
        let want = cpu_ref::logprob_forward(&logits, &targets, vocab);
        assert_close(&format!("logprob {rows}×{vocab}"), &gpu.read_f32(&lp).unwrap(), &want, 1e-4, 1e-5);
    }

    let (batch, dim) = (70usize, 3usize);
    let spans: Vec<(u32, u32)> = (0..batch as u32).map(|b| (b, 1 + b % 3)).collect();
    let x = random((batch + 2) * dim, 1.0, 5);
    let xg = gpu.upload_f32("x", &x, &[batch + 2, dim]).unwrap();
    let words: Vec<u32> = spans.iter().flat_map(|&(s, l)| [s, l]).collect();
    let sg = gpu.upload_u32("spans", &words, &[batch, 2]).unwrap();
    let pooled = gpu.zeros("pooled", &[batch, dim]).unwrap();
    let mut b = gpu.batch();
    b.mean_pool_l2(&xg, &sg, &pooled, batch, dim).unwrap();
    b.submit().unwrap();
    let want = cpu_ref::mean_pool_l2_forward(&x, &spans, dim);
    assert_close("wide mean_pool_l2", &gpu.read_f32(&pooled).unwrap(), &want, 1e-6, 1e-5);
}

fn check_every_kernel(gpu: &Gpu) {
    kernels::check_matmul_awkward_sizes(gpu);
    kernels::check_rms_norm(gpu);
    kernels::check_layer_norm(gpu);
    kernels::check_qkv_split_and_attention(gpu);
    kernels::check_elementwise(gpu);
    kernels::check_blocked_weights(gpu);
    check_wide_gathers_logprobs_and_pooling(gpu);
}

#[test]
fn cpu_family_kernels_match_reference_with_every_grid_folded() {
    check_every_kernel(&folded(KernelProfile::Cpu, false));
}

#[test]
fn gpu_family_kernels_match_reference_with_every_grid_folded() {
    let gpu = folded(KernelProfile::Gpu, true);
    check_every_kernel(&gpu);
    check_shapes(&gpu, MANY_ROWS);
    // The few-row matmul both with and without subgroup operations.
    check_shapes(&gpu, FEW_ROWS);
    check_shapes(&folded(KernelProfile::Gpu, false), FEW_ROWS);
}

#[test]
fn backward_kernels_match_reference_with_every_grid_folded() {
    let gpu = folded(KernelProfile::Cpu, false);
    kernels_backward::check_qkv_split_backward(&gpu);
    kernels_backward::check_attention_train_and_backward(&gpu);
    kernels_backward::check_shared_prompt_grad(&gpu);
    kernels_dropout::check_dropout(&gpu);
}
