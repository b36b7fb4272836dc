//! The CPU family's broadcast LoRA products (lora_subgroup.wgsl: each value of one operand loaded once
//! per subgroup of eight and shared by broadcast) against `cpu_ref` on awkward sizes (T not a multiple
//! of 8 or 32, ranks 1 to 64, K and N not multiples of 4 or 8, slices of wider outputs), forward and
//! backward, with grids folded; that lavapipe picks them and by which rule; and the per-element kernels
//! of lora.wgsl, still the fallback (`BABELRL_SUBGROUP_LORA=0`, no subgroups, the GPU family), on the
//! same shapes.

use crate::common;

use std::sync::Arc;

use babelrl::gpu::cpu_ref;
use babelrl::gpu::kernels_lora::{LoraGradBuffers, LoraShape, OutputSlice};
use babelrl::gpu::{Gpu, GpuOptions, KernelProfile};
use common::{assert_close_by, random};

/// The broadcast entry points, in the order a forward and a backward with dx record them.
const SUBGROUP: [&str; 6] = [
    "lora_subgroup.wgsl::lora_down_subgroup",
    "lora_subgroup.wgsl::lora_up_subgroup",
    "lora_subgroup.wgsl::lora_du_subgroup",
    "lora_subgroup.wgsl::lora_db_subgroup",
    "lora_subgroup.wgsl::lora_da_subgroup",
    "lora_subgroup.wgsl::lora_dx_subgroup",
];
/// The per-element entry points they replace, in the same order.
const PER_LANE: [&str; 6] = [
    "lora.wgsl::lora_down_forward",
    "lora.wgsl::lora_up_forward",
    "lora.wgsl::lora_du_backward",
    "lora.wgsl::lora_db_backward",
    "lora.wgsl::lora_da_backward",
    "lora.wgsl::lora_dx_backward",
];

/// (T, K, R, N, ldy, n_off): T below, at and past the 32 rows of a workgroup and the 8 lanes; R = 1,
/// 3, 8, 16, 64 (one partial, one full, several column groups); K and N odd, below and past eight;
/// whole outputs and slices of fused ones (SmolLM2's v of q/k/v: K = 576, columns 768.. of 960).
const SHAPES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 8, 1, 1, 1, 0),
    (7, 37, 8, 13, 40, 20),
    (9, 66, 16, 70, 140, 70),
    (33, 5, 3, 130, 130, 0),
    (70, 20, 8, 7, 9, 1),
    (13, 3, 16, 9, 9, 0),
    (2, 160, 64, 64, 64, 0),
    (67, 576, 16, 192, 960, 768),
];

/// A CPU-family device with every launch profiled (so a test sees which kernel ran).
fn device(
    per_lane_lora: bool,
    disable_subgroups: bool,
    kernels: KernelProfile,
    fold: Option<u32>,
) -> Arc<Gpu> {
    Gpu::new(&GpuOptions {
        kernels: Some(kernels),
        disable_subgroups,
        per_lane_lora,
        max_workgroups_per_dimension: fold,
        profile: true,
        ..GpuOptions::from_env()
    })
    .unwrap()
}

/// The broadcast LoRA kernels' device, or None (and a skip line) where the adapter has no subgroups
/// of eight.
fn broadcasting(fold: Option<u32>) -> Option<Arc<Gpu>> {
    let gpu = device(false, false, KernelProfile::Cpu, fold);
    if !gpu.subgroup_lora() {
        let s = &gpu.summary;
        return common::skip(format!(
            "adapter `{}` has no subgroups of exactly eight lanes (subgroups {}, size {:?})",
            s.name, s.subgroups, s.subgroup_size
        ));
    }
    Some(gpu)
}

/// Launches per LoRA entry point since the last call, in the order of `names`; panics if a kernel of
/// the other family (`not`) ran.
fn launches(gpu: &Gpu, names: &[&str; 6], not: &[&str; 6]) -> [u64; 6] {
    let profile = gpu.take_profile();
    // Entry points without their pipeline constants (`…;ROWS=1`).
    let entry = |kernel: &str| kernel.split(';').next().unwrap_or_default().to_string();
    assert!(profile.iter().all(|p| !not.contains(&entry(&p.kernel).as_str())), "{profile:?}");
    names.map(|name| profile.iter().filter(|p| entry(&p.kernel) == name).map(|p| p.calls).sum())
}

/// f32 rounding bound of a sum of `terms` products whose absolute values add up to `mag`, onto a
/// prior value `before`.
fn bound(terms: usize, mag: f32, before: f32) -> f32 {
    (terms + 4) as f32 * f32::EPSILON * (mag + before.abs()) + 1e-6
}

/// Forward then backward of one projection on `gpu` (dx requested when `with_dx`), every output against
/// `cpu_ref` within f32 rounding of its terms (the magnitudes: `cpu_ref` on absolute values). The
/// gradients accumulate onto random values; dy is wider than the projection and only its columns count.
fn check_on(
    gpu: &Gpu,
    shape: (usize, usize, usize, usize, usize, usize),
    scale: f32,
    seed: u64,
    with_dx: bool,
) {
    let (t, k, r, n, ldy, n_off) = shape;
    let s = LoraShape { t, k, r, n };
    let dims = (t, k, r, n);
    let x = random(t * k, 1.0, seed);
    let a = random(r * k, 0.5, seed + 1);
    let b = random(n * r, 0.5, seed + 2);
    let y0 = random(t * ldy, 1.0, seed + 3);
    let dy = random(t * ldy, 1.0, seed + 4);
    let (da0, db0, dx0) =
        (random(r * k, 0.1, seed + 5), random(n * r, 0.1, seed + 6), random(t * k, 0.1, seed + 7));

    let up = |name: &str, v: &[f32], shape: &[usize]| gpu.upload_f32(name, v, shape).unwrap();
    let (xg, ag, bg, yg, dyg) = (
        up("x", &x, &[t, k]),
        up("a", &a, &[r, k]),
        up("b", &b, &[n, r]),
        up("y", &y0, &[t, ldy]),
        up("dy", &dy, &[t, ldy]),
    );
    let (dag, dbg, dxg) = (up("da", &da0, &[r, k]), up("db", &db0, &[n, r]), up("dx", &dx0, &[t, k]));
    let u = gpu.zeros("u", &[t, r]).unwrap();
    let du = gpu.zeros("du", &[t, r]).unwrap();
    let out = OutputSlice { ldy, n_off };
    let mut batch = gpu.batch();
    batch.lora_forward(&xg, &ag, &bg, scale, &u, &yg, s, out).unwrap();
    let grads = LoraGradBuffers { du: &du, da: &dag, db: &dbg, dx: with_dx.then_some(&dxg) };
    batch.lora_backward(&dyg, &xg, &ag, &bg, &u, scale, grads, s, out).unwrap();
    batch.submit().unwrap();
    let what = format!("t={t} k={k} r={r} n={n} ldy={ldy} n_off={n_off}");

    // Forward: u and y.
    let mut want_y = y0.clone();
    let want_u = cpu_ref::lora_forward(&mut want_y, &x, &a, &b, scale, dims, ldy, n_off);
    let abs = |v: &[f32]| v.iter().map(|e| e.abs()).collect::<Vec<f32>>();
    let mut mag_y = vec![0.0; t * ldy];
    let mag_u =
        cpu_ref::lora_forward(&mut mag_y, &abs(&x), &abs(&a), &abs(&b), scale.abs(), dims, ldy, n_off);
    let got_u = gpu.read_f32(&u).unwrap();
    assert_close_by(&format!("{what}: u"), &got_u, &want_u, |i| bound(k, mag_u[i], 0.0));
    assert_close_by(&format!("{what}: y"), &gpu.read_f32(&yg).unwrap(), &want_y, |i| {
        let col = i % ldy;
        if (n_off..n_off + n).contains(&col) { bound(k + r, mag_y[i], y0[i]) } else { 0.0 }
    });

    // Backward from the device's u (dB's input), against the f64 reference.
    let want = cpu_ref::lora_backward(&dy, &x, &a, &b, &got_u, scale, dims, ldy, n_off);
    let mag = cpu_ref::lora_backward(
        &abs(&dy),
        &abs(&x),
        &abs(&a),
        &abs(&b),
        &abs(&got_u),
        scale.abs(),
        dims,
        ldy,
        n_off,
    );
    let terms = t + n + k + r;
    assert_close_by(&format!("{what}: du"), &gpu.read_f32(&du).unwrap(), &want.du, |i| {
        bound(n, mag.du[i], 0.0)
    });
    for (name, got, before, want, mag) in [
        ("dA", gpu.read_f32(&dag).unwrap(), &da0, &want.da, &mag.da),
        ("dB", gpu.read_f32(&dbg).unwrap(), &db0, &want.db, &mag.db),
        ("dx", gpu.read_f32(&dxg).unwrap(), &dx0, &want.dx, &mag.dx),
    ] {
        if name == "dx" && !with_dx {
            assert_eq!(&got, before, "{what}: dx not requested but changed");
            continue;
        }
        let want: Vec<f32> = want.iter().zip(before.iter()).map(|(w, b)| w + b).collect();
        assert_close_by(&format!("{what}: {name}"), &got, &want, |i| bound(terms, mag[i], before[i]));
    }
}

/// Every shape through `gpu`, the second without dx; returns the launches of `names` (and fails if one
/// of `not` ran).
fn check_shapes(gpu: &Gpu, names: &[&str; 6], not: &[&str; 6]) -> [u64; 6] {
    gpu.take_profile();
    for (i, &shape) in SHAPES.iter().enumerate() {
        let scale = if i % 2 == 0 { 2.0 } else { -0.75 };
        check_on(gpu, shape, scale, 500 + 10 * i as u64, i != 1);
    }
    launches(gpu, names, not)
}

/// Each shape runs each product once (dx once fewer: one shape asks for no dx).
fn every_shape_ran(got: [u64; 6], names: &[&str; 6]) {
    let n = SHAPES.len() as u64;
    assert_eq!(got, [n, n, n, n, n, n - 1], "launches of {names:?}");
}

#[test]
fn subgroup_lora_matches_reference_on_awkward_sizes() {
    let Some(gpu) = broadcasting(None) else { return };
    every_shape_ran(check_shapes(&gpu, &SUBGROUP, &PER_LANE), &SUBGROUP);
}

#[test]
fn subgroup_lora_matches_reference_with_grids_folded() {
    // One workgroup per dimension before folding: 130 columns take 17 column groups along z.
    let Some(gpu) = broadcasting(Some(1)) else { return };
    every_shape_ran(check_shapes(&gpu, &SUBGROUP, &PER_LANE), &SUBGROUP);
}

/// Fewer than 32 rows (a decoded batch's T = 8) take one row per lane, more take four, and both agree
/// with the reference (SHAPES[2]: T = 9; SHAPES[7]: T = 67).
#[test]
fn subgroup_lora_takes_one_row_per_lane_below_32_rows() {
    let Some(gpu) = broadcasting(None) else { return };
    for (shape, rows) in [(SHAPES[2], "ROWS=1"), (SHAPES[7], "ROWS=4")] {
        gpu.take_profile();
        check_on(&gpu, shape, 1.5, 900, true);
        let ran: Vec<String> = gpu.take_profile().into_iter().map(|k| k.kernel).collect();
        for product in ["lora_down_subgroup", "lora_up_subgroup", "lora_du_subgroup", "lora_dx_subgroup"] {
            let want = format!("lora_subgroup.wgsl::{product};{rows}");
            assert!(ran.contains(&want), "T = {}: {want} did not run: {ran:?}", shape.0);
        }
    }
}

/// The per-element kernels stay the fallback: with `BABELRL_SUBGROUP_LORA=0`, without subgroups and
/// in the GPU family they run the same shapes, and no broadcast kernel does.
#[test]
fn per_lane_lora_fallback_matches_reference_on_the_same_shapes() {
    for (per_lane, no_subgroups, kernels) in [
        (true, false, KernelProfile::Cpu),
        (false, true, KernelProfile::Cpu),
        (false, false, KernelProfile::Gpu),
    ] {
        let gpu = device(per_lane, no_subgroups, kernels, None);
        assert!(!gpu.subgroup_lora(), "per_lane_lora {per_lane}, no subgroups {no_subgroups}, {kernels:?}");
        every_shape_ran(check_shapes(&gpu, &PER_LANE, &SUBGROUP), &PER_LANE);
    }
}

/// lavapipe (subgroups of eight) takes the broadcast LoRA kernels by default, so the rest of the suite
/// (kernels_lora, train_lora, lora_peft, train_grpo) runs them here; `BABELRL_SUBGROUP_LORA=0`
/// (`per_lane_lora`) and `BABELRL_SUBGROUPS=0` turn them off, and the GPU family never takes them.
#[test]
fn lavapipe_picks_the_subgroup_lora_kernels() {
    let gpu = Gpu::new(&GpuOptions { profile: true, ..GpuOptions::from_env() }).unwrap();
    let s = &gpu.summary;
    if !s.name.to_lowercase().contains("llvmpipe") {
        let _: Option<()> = common::skip(format!("adapter `{}` is not lavapipe", s.name));
        return;
    }
    let set = ["BABELRL_SUBGROUP_LORA", "BABELRL_SUBGROUPS", "BABELRL_KERNELS"];
    if set.iter().any(|v| std::env::var(v).is_ok()) {
        let _: Option<()> = common::skip(format!("one of {set:?} is set"));
        return;
    }
    assert!(gpu.subgroup_matmul_rows().is_some() && gpu.subgroup_lora());
    gpu.take_profile();
    check_on(&gpu, SHAPES[2], 1.0, 1, true);
    assert_eq!(launches(&gpu, &SUBGROUP, &PER_LANE), [1; 6]);
    assert!(!device(true, false, KernelProfile::Cpu, None).subgroup_lora(), "BABELRL_SUBGROUP_LORA=0");
    let without = device(false, true, KernelProfile::Cpu, None);
    assert!(without.subgroup_matmul_rows().is_none() && !without.subgroup_lora(), "BABELRL_SUBGROUPS=0");
    assert!(!device(false, false, KernelProfile::Gpu, None).subgroup_lora(), "the GPU family");
    // The switch leaves the base matmuls' choice alone.
    assert!(device(true, false, KernelProfile::Cpu, None).subgroup_matmul_rows().is_some());
}
