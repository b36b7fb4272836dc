//! The CPU family's subgroup-broadcast matmuls (matmul_subgroup.wgsl: weights shared across a subgroup
//! of eight in the forward, four rows or one row per lane, dY values in the backward dX) against the plain-Rust reference on awkward
//! sizes, with bias/residual, row blocks (n_off, ldy) and folded grids; that lavapipe picks them (so
//! every run of the suite here exercises them) and by which rule; and the per-lane kernels they replace,
//! still the fallback, on the same shapes.

use crate::common;
use crate::kernels::{SWIGLU_SHAPES, check_matmul, check_matmul_swiglu};
use crate::kernels_backward::check_dx_on;

use std::sync::Arc;

use babelrl::gpu::cpu_ref;
use babelrl::gpu::kernels::GradWrite;
use babelrl::gpu::{Gpu, GpuOptions, KernelProfile, SubgroupMatmulRows};
use common::{assert_close_by, random};
use half::f16;

const FORWARD: &str = "matmul_subgroup.wgsl::matmul_forward_subgroup";
const FORWARD_1ROW: &str = "matmul_subgroup.wgsl::matmul_forward_subgroup_1row";
/// Every forward from one row on to the four-rows-per-lane kernel.
const ALL_FOUR: SubgroupMatmulRows = SubgroupMatmulRows { one_per_lane: 1, four_per_lane: 1 };
/// Every forward from one row on to the one-row-per-lane kernel.
const ALL_ONE: SubgroupMatmulRows = SubgroupMatmulRows { one_per_lane: 1, four_per_lane: usize::MAX };
const BACKWARD: &str = "matmul_subgroup.wgsl::matmul_backward_dx_subgroup";

/// The CPU family with the broadcast forwards from the given rows, every launch profiled (so a test can
/// see which kernel ran), grids folded at `fold` workgroups per dimension if given. None (and a skip
/// line) where the adapter has no subgroups of eight.
fn broadcasting(rows: SubgroupMatmulRows, fold: Option<u32>) -> Option<Arc<Gpu>> {
    let gpu = Gpu::new(&GpuOptions {
        kernels: Some(KernelProfile::Cpu),
        disable_subgroups: false,
        subgroup_matmul_rows: Some(rows),
        max_workgroups_per_dimension: fold,
        profile: true,
        ..GpuOptions::from_env()
    })
    .unwrap();
    if gpu.subgroup_matmul_rows().is_none() {
        let s = &gpu.summary;
        return common::skip(format!(
            "adapter `{}` has no subgroups of exactly eight lanes (subgroups {}, size {:?})",
            s.name, s.subgroups, s.subgroup_size
        ));
    }
    Some(gpu)
}

/// Launches of `kernel` in the profile recorded since the last call.
fn launches(gpu: &Gpu, kernel: &str) -> u64 {
    gpu.take_profile().iter().filter(|p| p.kernel == kernel).map(|p| p.calls).sum()
}

/// T = 1..9, 13, 67, 130 (within one 32-row group, across several, a partial last one); N below,
/// at and past the eight columns of a workgroup; K from one step of eight to a model's width.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 8),
    (2, 7, 24),
    (3, 8, 16),
    (4, 9, 40),
    (5, 130, 64),
    (6, 17, 8),
    (7, 65, 576),
    (8, 64, 576),
    (9, 3, 120),
    (13, 97, 40),
    (67, 130, 72),
    (130, 33, 192),
];

fn check_forward_shapes(gpu: &Gpu, kernel: &str) {
    gpu.take_profile();
    for (i, &(t, n, k)) in SHAPES.iter().enumerate() {
        // Every combination of the bias and residual flags across the shapes.
        check_matmul(gpu, t, n, k, i % 2 == 0, i % 4 >= 2, 1000 + i as u64);
    }
    assert_eq!(launches(gpu, kernel), SHAPES.len() as u64, "every shape ran {kernel}");
}

#[test]
fn subgroup_forward_matches_reference_on_awkward_sizes() {
    for (rows, kernel) in [(ALL_FOUR, FORWARD), (ALL_ONE, FORWARD_1ROW)] {
        let Some(gpu) = broadcasting(rows, None) else { return };
        check_forward_shapes(&gpu, kernel);
    }
}

#[test]
fn subgroup_forward_matches_reference_with_grids_folded() {
    // One workgroup per dimension before folding: N = 130 takes 17 column groups along z.
    for (rows, kernel) in [(ALL_FOUR, FORWARD), (ALL_ONE, FORWARD_1ROW)] {
        let Some(gpu) = broadcasting(rows, Some(1)) else { return };
        check_forward_shapes(&gpu, kernel);
    }
}

/// A weight split in row blocks writes its slice of the output columns (`n_off`, row stride `ldy`)
/// and leaves the others alone; the residual is read at the same offsets.
#[test]
fn subgroup_forward_writes_its_row_block_of_the_output() {
    for (rows, kernel, fold) in
        [(ALL_FOUR, FORWARD, None), (ALL_FOUR, FORWARD, Some(1)), (ALL_ONE, FORWARD_1ROW, Some(1))]
    {
        let Some(gpu) = broadcasting(rows, fold) else { return };
        let (t, n, k, ldy, n_off) = (37, 21, 48, 60, 35);
        let x = random(t * k, 1.0, 7);
        let w: Vec<f16> = random(n * k, 0.5, 8).iter().map(|&v| f16::from_f32(v)).collect();
        let b = random(n, 1.0, 9);
        let r = random(t * ldy, 1.0, 10);
        let full = cpu_ref::matmul_forward(&x, &w, Some(&b), None, t, n, k);
        let xg = gpu.upload_f32("x", &x, &[t, k]).unwrap();
        let wg = gpu.upload_weight_f16("w", &w, n, k).unwrap();
        let bg = gpu.upload_f32("b", &b, &[n]).unwrap();
        let rg = gpu.upload_f32("r", &r, &[t, ldy]).unwrap();
        let y = gpu.upload_f32("y", &vec![-7.0; t * ldy], &[t, ldy]).unwrap();
        gpu.take_profile();
        let mut batch = gpu.batch();
        batch.matmul_into(&xg, &wg, Some(&bg), Some(&rg), &y, t, ldy, n_off).unwrap();
        batch.submit().unwrap();
        assert_eq!(launches(&gpu, kernel), 1);
        let got = gpu.read_f32(&y).unwrap();
        let want: Vec<f32> = (0..t * ldy)
            .map(|o| {
                let (row, col) = (o / ldy, o % ldy);
                if (n_off..n_off + n).contains(&col) { full[row * n + col - n_off] + r[o] } else { -7.0 }
            })
            .collect();
        assert_close_by(&format!("row block, {kernel}, fold {fold:?}"), &got, &want, |_| 1e-4);
    }
}

/// dX = dY · W with K a multiple of 8: partial groups of 64 columns (K = 8, 520), N below, at and past
/// the eight rows a subgroup walks per step, and N = 70000 in launches of 16384 rows that add up.
const DX_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 8),
    (2, 7, 16),
    (3, 8, 64),
    (4, 9, 72),
    (5, 130, 64),
    (6, 17, 520),
    (7, 70, 24),
    (8, 64, 576),
    (9, 3, 8),
    (13, 97, 40),
    (67, 30, 136),
    (130, 12, 80),
    (2, 70000, 8),
];

fn check_dx_shapes(gpu: &Gpu) {
    for (i, &(t, n, k)) in DX_SHAPES.iter().enumerate() {
        let write = if i % 2 == 0 { GradWrite::Overwrite } else { GradWrite::Accumulate };
        check_dx_on(gpu, t, n, k, write, 2000 + i as u64);
    }
}

#[test]
fn subgroup_backward_dx_matches_reference_on_awkward_sizes() {
    let Some(gpu) = broadcasting(ALL_FOUR, None) else { return };
    gpu.take_profile();
    check_dx_shapes(&gpu);
    // N = 70000 takes five launches.
    assert_eq!(launches(&gpu, BACKWARD), DX_SHAPES.len() as u64 + 4);
}

/// dY wider than the weight (a fused projection's gradient): the block reads its columns at `n_off`
/// of a row of `ldy` and adds into dX.
#[test]
fn subgroup_backward_dx_reads_its_columns_of_a_wider_dy() {
    let Some(gpu) = broadcasting(ALL_FOUR, None) else { return };
    let (t, n, k, ldy, n_off) = (11, 19, 88, 50, 23);
    let dy = random(t * ldy, 1.0, 40);
    let w: Vec<f16> = random(n * k, 0.5, 41).iter().map(|&v| f16::from_f32(v)).collect();
    let prior = random(t * k, 1.0, 42);
    let dyg = gpu.upload_f32("dy", &dy, &[t, ldy]).unwrap();
    let wg = gpu.upload_weight_f16("w", &w, n, k).unwrap();
    let dx = gpu.upload_f32("dx", &prior, &[t, k]).unwrap();
    gpu.take_profile();
    let mut b = gpu.batch();
    b.matmul_backward_dx(&dyg, &wg, &dx, t, ldy, n_off, GradWrite::Accumulate).unwrap();
    b.submit().unwrap();
    assert_eq!(launches(&gpu, BACKWARD), 1);
    let block: Vec<f32> = (0..t * n).map(|o| dy[(o / n) * ldy + n_off + o % n]).collect();
    let want: Vec<f32> =
        cpu_ref::matmul_backward_dx(&block, &w, t, n, k).iter().zip(&prior).map(|(a, b)| a + b).collect();
    assert_close_by("dx from a wider dY", &gpu.read_f32(&dx).unwrap(), &want, |i| {
        1e-5 * (1.0 + want[i].abs())
    });
}

/// lavapipe (subgroups of eight) takes the broadcast kernels by default, so the suite exercises them
/// here: the forward from 5 rows with K % 8 == 0, one row per lane below 32 rows and four from 32 (fewer
/// rows keep the per-lane kernels), the backward dX for every K % 8 == 0; other K, and
/// `BABELRL_SUBGROUPS=0`, the per-lane ones.
#[test]
fn lavapipe_picks_the_subgroup_kernels_by_shape() {
    let gpu = Gpu::new(&GpuOptions { profile: true, ..GpuOptions::from_env() }).unwrap();
    let s = &gpu.summary;
    if !s.name.to_lowercase().contains("llvmpipe") {
        let _: Option<()> = common::skip(format!("adapter `{}` is not lavapipe", s.name));
        return;
    }
    if ["BABELRL_SUBGROUP_MATMUL_ROWS", "BABELRL_SUBGROUPS", "BABELRL_DECODE_MATMUL"]
        .iter()
        .any(|v| std::env::var(v).is_ok())
    {
        let _: Option<()> = common::skip(
            "BABELRL_SUBGROUP_MATMUL_ROWS, BABELRL_SUBGROUPS or BABELRL_DECODE_MATMUL is set".into(),
        );
        return;
    }
    assert_eq!(s.subgroup_size, (8, 8), "lavapipe's subgroups");
    assert_eq!(gpu.subgroup_matmul_rows(), Some(SubgroupMatmulRows::DEFAULT));
    assert_eq!(SubgroupMatmulRows::DEFAULT, SubgroupMatmulRows { one_per_lane: 5, four_per_lane: 32 });
    let run_forward = |t: usize, k: usize| {
        gpu.take_profile();
        check_matmul(&gpu, t, 20, k, true, false, t as u64);
        let profile = gpu.take_profile();
        assert_eq!(profile.len(), 1, "{profile:?}");
        profile[0].kernel.clone()
    };
    // Up to four rows: the decode kernels (kernels_decode.rs), one pipeline per row count.
    assert_eq!(run_forward(3, 64), "matmul_decode.wgsl::matmul_decode_f16;ROWS=3");
    assert_eq!(run_forward(4, 64), "matmul_decode.wgsl::matmul_decode_f16;ROWS=4");
    assert_eq!(run_forward(5, 64), FORWARD_1ROW);
    assert_eq!(run_forward(31, 64), FORWARD_1ROW);
    assert_eq!(run_forward(32, 64), FORWARD);
    assert_eq!(run_forward(130, 576), FORWARD);
    assert_eq!(run_forward(32, 66), "matmul.wgsl::matmul_forward_scalar");
    let run_dx = |t: usize, k: usize| {
        gpu.take_profile();
        check_dx_on(&gpu, t, 9, k, GradWrite::Overwrite, k as u64);
        let profile = gpu.take_profile();
        assert_eq!(profile.len(), 1, "{profile:?}");
        profile[0].kernel.clone()
    };
    assert_eq!(run_dx(1, 64), BACKWARD);
    assert_eq!(run_dx(1, 66), "matmul.wgsl::matmul_backward_dx_scalar");

    let without = Gpu::new(&GpuOptions { disable_subgroups: true, ..GpuOptions::from_env() }).unwrap();
    assert_eq!(without.subgroup_matmul_rows(), None);
    let gpu_family =
        Gpu::new(&GpuOptions { kernels: Some(KernelProfile::Gpu), ..GpuOptions::from_env() }).unwrap();
    assert_eq!(gpu_family.subgroup_matmul_rows(), None, "the GPU family keeps its own kernels");
}

/// The per-lane kernels the broadcast ones replace stay the fallback (no subgroups, other subgroup
/// sizes): the same shapes through them.
#[test]
fn per_lane_fallback_matches_reference_on_the_same_shapes() {
    let gpu = Gpu::new(&GpuOptions {
        kernels: Some(KernelProfile::Cpu),
        disable_subgroups: true,
        profile: true,
        ..GpuOptions::from_env()
    })
    .unwrap();
    gpu.take_profile();
    for (i, &(t, n, k)) in SHAPES.iter().enumerate() {
        check_matmul(&gpu, t, n, k, i % 2 == 1, i % 4 < 2, 3000 + i as u64);
    }
    check_dx_shapes(&gpu);
    let profile = gpu.take_profile();
    assert!(profile.iter().all(|p| !p.kernel.contains("subgroup")), "{profile:?}");
}

/// The SwiGLU epilogue in both broadcast kernels (lanes 0..3 gate rows, 4..7 up rows), with grids
/// folded, and in the per-lane kernels they replace (four columns of one row, the 4×4 tile, and the
/// scalar kernel for K not a multiple of 8): against the reference and bit for bit against matmul then
/// swiglu.
#[test]
fn swiglu_epilogue_matches_reference_in_every_cpu_family_kernel() {
    for (rows, kernel) in [(ALL_FOUR, FORWARD), (ALL_ONE, FORWARD_1ROW)] {
        for fold in [None, Some(1)] {
            let Some(gpu) = broadcasting(rows, fold) else { return };
            gpu.take_profile();
            let mut vector_shapes = 0;
            for (i, &(t, inter, k)) in SWIGLU_SHAPES.iter().enumerate() {
                check_matmul_swiglu(&gpu, t, inter, k, 7000 + i as u64);
                vector_shapes += (k % 8 == 0) as u64;
            }
            // Each vector shape ran the kernel twice: the epilogue and the plain matmul it is compared with.
            assert_eq!(launches(&gpu, kernel), 2 * vector_shapes, "every shape ran {kernel}");
        }
    }
    let per_lane = Gpu::new(&GpuOptions {
        kernels: Some(KernelProfile::Cpu),
        disable_subgroups: true,
        profile: true,
        ..GpuOptions::from_env()
    })
    .unwrap();
    per_lane.take_profile();
    for (i, &(t, inter, k)) in SWIGLU_SHAPES.iter().enumerate() {
        check_matmul_swiglu(&per_lane, t, inter, k, 8000 + i as u64);
    }
    let profile = per_lane.take_profile();
    for kernel in ["matmul_forward_cols4", "matmul_forward_scalar", "matmul.wgsl::matmul_forward"] {
        assert!(profile.iter().any(|p| p.kernel.ends_with(kernel)), "{kernel} ran: {profile:?}");
    }
}
