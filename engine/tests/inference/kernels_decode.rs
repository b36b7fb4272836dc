//! The decode matmuls (matmul_decode.wgsl: T ≤ 4 rows, ≤ 8 over packed weights, on the CPU family with
//! subgroups of eight, f16 weights or packed GGUF blocks) and the f16 expansion of packed weights (dequant.wgsl) against the
//! plain-Rust reference on awkward sizes, with bias/residual, row blocks and folded grids; the packed
//! blocks against the loader's own dequantization (`quant::dequantize`); which kernel runs for which
//! shape; and SmolLM2 decoded greedily with packed weights against the f16 (dequantize-on-load) path.

use crate::common;
use crate::kernels::check_matmul;

use std::sync::Arc;

use babelrl::gpu::cpu_ref::{self, TokenInfo};
use babelrl::gpu::kernels::GradWrite;
use babelrl::gpu::{Gpu, GpuOptions, KernelProfile, PackedHost, SubgroupMatmulRows};
use babelrl::model::quant::{GgmlType, dequantize, pack_blocks};
use babelrl::model::{LoadOptions, load_language_model_with};
use common::{assert_close_by, random};
use half::f16;
use rand::{Rng, SeedableRng};

/// The CPU family on the adapter, every launch profiled, grids folded at `fold` if given; `None` (and
/// a skip line) where the decode kernels do not run (no subgroups of exactly eight lanes).
fn decoding(fold: Option<u32>, decode: bool) -> Option<Arc<Gpu>> {
    let gpu = Gpu::new(&GpuOptions {
        kernels: Some(KernelProfile::Cpu),
        disable_subgroups: false,
        subgroup_matmul_rows: Some(SubgroupMatmulRows::DEFAULT),
        disable_decode_matmul: !decode,
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
    assert_eq!(gpu.decode_matmul(), decode);
    Some(gpu)
}

/// The kernels launched since the last call, by label, in order of time spent.
fn kernels(gpu: &Gpu) -> Vec<String> {
    gpu.take_profile().into_iter().map(|p| p.kernel).collect()
}

fn decode_kernel(entry: &str, t: usize) -> String {
    format!("matmul_decode.wgsl::{entry};ROWS={t}")
}

/// The decode pipelines `t` rows over packed weights take, sorted: launches of at most four rows
/// (5 to 8 rows: four, then the rest).
fn packed_decode_kernels(entry: &str, t: usize) -> Vec<String> {
    let mut rows = vec![t.min(4)];
    if t > 4 && t - 4 != 4 {
        rows.push(t - 4);
    }
    let mut names: Vec<String> = rows.into_iter().map(|r| decode_kernel(entry, r)).collect();
    names.sort();
    names
}

/// T = 1..4; N below, at and past the 32 columns of a workgroup and past four of them; K from one
/// chunk of eight to past a step of 64 (partial last step: 72, 584) and SmolLM2's widths.
const F16_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 8),
    (2, 7, 24),
    (3, 31, 64),
    (4, 32, 72),
    (1, 33, 576),
    (2, 130, 584),
    (3, 5, 1536),
    (4, 97, 40),
    (1, 258, 576),
];

#[test]
fn decode_f16_matches_reference_on_awkward_sizes() {
    for fold in [None, Some(1)] {
        let Some(gpu) = decoding(fold, true) else { return };
        kernels(&gpu);
        for (i, &(t, n, k)) in F16_SHAPES.iter().enumerate() {
            check_matmul(&gpu, t, n, k, i % 2 == 0, i % 4 >= 2, 5000 + i as u64);
            assert_eq!(kernels(&gpu), [decode_kernel("matmul_decode_f16", t)], "t={t} n={n} k={k}");
        }
    }
}

/// K not a multiple of 8 (the f16 decode kernel loads eight halves at a time) keeps the per-lane
/// kernels; five rows go to the broadcast kernel; `BABELRL_DECODE_MATMUL=0` keeps the per-lane ones.
#[test]
fn decode_kernels_are_picked_by_rows_and_k() {
    let Some(gpu) = decoding(None, true) else { return };
    kernels(&gpu);
    check_matmul(&gpu, 2, 33, 6, true, true, 1);
    assert_eq!(kernels(&gpu), ["matmul.wgsl::matmul_forward_scalar"]);
    check_matmul(&gpu, 5, 33, 64, true, false, 2);
    assert_eq!(kernels(&gpu), ["matmul_subgroup.wgsl::matmul_forward_subgroup_1row"]);
    let Some(off) = decoding(None, false) else { return };
    kernels(&off);
    check_matmul(&off, 1, 33, 64, false, true, 3);
    assert_eq!(kernels(&off), ["matmul.wgsl::matmul_forward_cols4"]);
}

/// Random GGUF blocks of `ty` for a `[rows, cols]` tensor: scales of either sign around 0.01, all
/// quantized values.
fn gguf_blocks(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (block, size) = ty.block_layout();
    let mut bytes = Vec::with_capacity(rows * cols / block * size);
    for _ in 0..rows * cols / block {
        let scale =
            |rng: &mut rand_chacha::ChaCha8Rng| f16::from_f32(rng.random_range(-0.02..0.02)).to_le_bytes();
        bytes.extend(scale(&mut rng));
        if ty == GgmlType::Q4_1 {
            bytes.extend(scale(&mut rng));
        }
        let quants = match ty {
            GgmlType::Q8_0 => 32,
            _ => 16,
        };
        bytes.extend((0..quants).map(|_| rng.random::<u8>()));
    }
    bytes
}

/// A packed weight and its values as the loader dequantizes them (f32).
fn packed(ty: GgmlType, n: usize, k: usize, seed: u64) -> (PackedHost, Vec<f32>) {
    let bytes = gguf_blocks(ty, n, k, seed);
    let mut want = vec![0.0; n * k];
    dequantize(ty, &bytes, &mut want).unwrap();
    let host = pack_blocks(ty, &bytes, n, k).unwrap().expect("a packable type");
    (host, want)
}

/// Error bound of an f32 sum of the block-wise terms d·Σq·x and m·Σx: 2K roundings of the largest
/// magnitudes it passes through (|x|·(|d·q| + |m|) per value), plus the epilogue's additions.
fn packed_tolerance(x: &[f32], w: &PackedHost, extra: &[f32], t: usize) -> Vec<f32> {
    let (n, k) = (w.rows, w.cols);
    let values = w.dequantize();
    let offset = |c: usize, i: usize| f16::from_bits((w.scales[c * (k / 32) + i / 32] >> 16) as u16).to_f32();
    let mut tol = vec![0.0; t * n];
    for r in 0..t {
        for c in 0..n {
            let s: f32 = (0..k)
                .map(|i| {
                    let m = offset(c, i);
                    x[r * k + i].abs() * ((values[c * k + i] - m).abs() + m.abs())
                })
                .sum();
            tol[r * n + c] = 2.0 * k as f32 * f32::EPSILON * (s + extra[r * n + c]) + 1e-6;
        }
    }
    tol
}

/// y = x · wᵀ + bias + residual for a packed weight, against the reference on the loader's values
/// (`values`, rounded to f16 first where the launch runs on the f16 expansion).
fn check_packed(gpu: &Gpu, ty: GgmlType, t: usize, n: usize, k: usize, expanded: bool, seed: u64) {
    let (host, values) = packed(ty, n, k, seed);
    assert_eq!(host.dequantize(), values, "{ty:?}: packed blocks dequantize as the loader does");
    let values: Vec<f32> =
        if expanded { values.iter().map(|&v| f16::from_f32(v).to_f32()).collect() } else { values };
    let x = random(t * k, 1.0, seed + 1);
    let b = random(n, 1.0, seed + 2);
    let res = random(t * n, 1.0, seed + 3);
    let want = cpu_ref::matmul_forward_f32(&x, &values, Some(&b), Some(&res), t, n, k);
    let extra: Vec<f32> = (0..t * n).map(|o| b[o % n].abs() + res[o].abs()).collect();
    let tol = packed_tolerance(&x, &host, &extra, t);
    let xg = gpu.upload_f32("x", &x, &[t, k]).unwrap();
    let wg = gpu.upload_packed("w", &host).unwrap();
    let bg = gpu.upload_f32("b", &b, &[n]).unwrap();
    let rg = gpu.upload_f32("r", &res, &[t, n]).unwrap();
    let y = gpu.zeros("y", &[t, n]).unwrap();
    let mut batch = gpu.batch();
    batch.matmul(&xg, &wg, Some(&bg), Some(&rg), &y, t).unwrap();
    batch.submit().unwrap();
    let got = gpu.read_f32(&y).unwrap();
    assert_close_by(&format!("packed {ty:?} matmul t={t} n={n} k={k}"), &got, &want, |i| tol[i]);
}

const PACKED_TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];

/// T = 1..8 (5 to 8 in two launches), N around the 32 columns of a workgroup, K one block and SmolLM2's
/// widths.
const PACKED_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 32),
    (2, 31, 64),
    (3, 33, 96),
    (4, 64, 576),
    (1, 130, 1536),
    (2, 5, 576),
    (5, 33, 96),
    (6, 31, 576),
    (7, 130, 64),
    (8, 64, 1536),
];

#[test]
fn decode_packed_matches_reference_on_awkward_sizes() {
    for fold in [None, Some(1)] {
        let Some(gpu) = decoding(fold, true) else { return };
        kernels(&gpu);
        for (i, &(t, n, k)) in PACKED_SHAPES.iter().enumerate() {
            for ty in PACKED_TYPES {
                check_packed(&gpu, ty, t, n, k, false, 7000 + 10 * i as u64);
                let entry = if ty == GgmlType::Q8_0 { "matmul_decode_q8" } else { "matmul_decode_q4" };
                let mut ran = kernels(&gpu);
                ran.sort();
                assert_eq!(ran, packed_decode_kernels(entry, t), "{ty:?} t={t} n={n} k={k}");
            }
        }
    }
}

/// Launches that cannot read blocks (nine rows and more; adapters or settings without the decode
/// kernels) run on the f16 expansion, which matches the loader's values rounded to f16.
#[test]
fn packed_weights_expand_for_other_launches() {
    for (decode, t) in [(true, 9), (true, 37), (false, 1), (false, 3)] {
        let Some(gpu) = decoding(None, decode) else { return };
        for ty in PACKED_TYPES {
            kernels(&gpu);
            check_packed(&gpu, ty, t, 45, 96, true, 9000 + t as u64);
            let ran = kernels(&gpu);
            let entry = if ty == GgmlType::Q8_0 { "dequant_q8_forward" } else { "dequant_q4_forward" };
            assert!(ran.contains(&format!("dequant.wgsl::{entry}")), "{ty:?} t={t}: {ran:?}");
            assert_eq!(ran.len(), 2, "{ran:?}");
        }
    }
}

/// The backward dX of a packed weight runs on its expansion: the same as on the f16 weight uploaded
/// from the loader's values.
#[test]
fn packed_backward_dx_matches_its_f16_expansion() {
    let gpu = common::gpu();
    let (t, n, k) = (3, 40, 64);
    for ty in PACKED_TYPES {
        let (host, values) = packed(ty, n, k, 11);
        let w16: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        let dy = random(t * n, 1.0, 12);
        let want = cpu_ref::matmul_backward_dx(&dy, &w16, t, n, k);
        let dyg = gpu.upload_f32("dy", &dy, &[t, n]).unwrap();
        let dx = gpu.zeros("dx", &[t, k]).unwrap();
        let wg = gpu.upload_packed("w", &host).unwrap();
        let mut b = gpu.batch();
        b.matmul_backward_dx(&dyg, &wg, &dx, t, n, 0, GradWrite::Overwrite).unwrap();
        b.submit().unwrap();
        assert_close_by(&format!("{ty:?} dX"), &gpu.read_f32(&dx).unwrap(), &want, |i| {
            1e-5 * (1.0 + want[i].abs())
        });
    }
}

/// A kernel that reads only f16 weights refuses a packed one with a message saying what to do.
#[test]
fn f16_only_kernels_refuse_packed_weights() {
    let gpu = common::gpu();
    let (host, _) = packed(GgmlType::Q4_1, 4, 32, 14);
    let wg = gpu.upload_packed("w", &host).unwrap();
    let ids = gpu.upload_u32("ids", &[0, 1], &[2]).unwrap();
    let out = gpu.zeros("out", &[2, 32]).unwrap();
    let err = gpu.batch().embed_rows_add(&ids, &wg, &out, 2).unwrap_err().to_string();
    assert!(err.contains("packed") && err.contains("expand_packed"), "{err}");
    // Mis-sized packed words are refused at upload.
    let mut short = host.clone();
    short.scales.pop();
    assert!(gpu.upload_packed("short", &short).is_err());
}

/// SmolLM2-135M-Instruct (GGUF Q4_1 layers, Q8_0 embedding) with packed layer weights against the same
/// file dequantized on load: a prompt prefilled (the expansion path), then greedy decoding of two
/// sequences one token each a step (T = 2, the Q4 decode kernel), each path feeding its own argmax.
/// The tokens must agree; the logits differ only by the f16 rounding of the dequantized weights in the
/// f16 path (relative 2⁻¹¹ per weight, through 30 layers): the tolerance, 0.05 on logits of magnitude
/// ~10–20, is a few times the largest difference measured (see the printed figure).
#[test]
fn smollm2_greedy_decode_with_packed_weights_matches_f16() {
    let Some(dir) = common::model_dir("smollm2-135m-instruct") else { return };
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let gpu = common::gpu();
    let load = |packed| load_language_model_with(gpu.clone(), &path, &LoadOptions { packed_weights: packed });
    let f16_model = load(false).unwrap();
    let packed_model = load(true).unwrap();
    assert!(
        packed_model.decoder.weight_bytes() * 2 < f16_model.decoder.weight_bytes(),
        "packed {} bytes against f16 {}",
        packed_model.decoder.weight_bytes(),
        f16_model.decoder.weight_bytes()
    );
    let tokenizer = f16_model.tokenizer().unwrap();
    let prompts = ["The three largest cities of France are", "def fibonacci(n):"];
    let steps = 12;
    let run = |model: &babelrl::model::Decoder| -> (Vec<Vec<u32>>, Vec<f32>) {
        let cache = model.new_cache(2, 64).unwrap();
        let (mut tokens, mut info, mut last) = (Vec::new(), Vec::new(), Vec::new());
        for (slot, p) in prompts.iter().enumerate() {
            let ids = tokenizer.encode(p, true).unwrap();
            for (pos, &id) in ids.iter().enumerate() {
                tokens.push(id);
                info.push(TokenInfo { pos: pos as u32, slot: slot as u32, n_keys: pos as u32 + 1 });
            }
            last.push(tokens.len() as u32 - 1);
        }
        let mut pos: Vec<u32> = (0..2).map(|s| info.iter().filter(|i| i.slot == s).count() as u32).collect();
        let vocab = model.config().vocab;
        let mut logits = model.read_logits(&model.forward(&cache, &tokens, &info, &last).unwrap()).unwrap();
        let mut all_logits = logits.clone();
        let mut out = vec![Vec::new(), Vec::new()];
        for _ in 0..steps {
            let next: Vec<u32> = logits.chunks(vocab).map(argmax).collect();
            for (s, &id) in next.iter().enumerate() {
                out[s].push(id);
            }
            let info: Vec<TokenInfo> =
                (0..2).map(|s| TokenInfo { pos: pos[s], slot: s as u32, n_keys: pos[s] + 1 }).collect();
            pos.iter_mut().for_each(|p| *p += 1);
            logits = model.read_logits(&model.forward(&cache, &next, &info, &[0, 1]).unwrap()).unwrap();
            all_logits.extend_from_slice(&logits);
        }
        (out, all_logits)
    };
    let (want_tokens, want_logits) = run(&f16_model.decoder);
    let (got_tokens, got_logits) = run(&packed_model.decoder);
    assert_eq!(got_tokens, want_tokens, "greedy tokens with packed weights");
    assert_close_by("SmolLM2 logits, packed against f16", &got_logits, &want_logits, |_| 0.05);
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
        as u32
}

/// The gate/up matmul's SwiGLU epilogue in the decode kernels, f16 and packed: equal bit for bit to the
/// decode matmul followed by `swiglu` (f16 also against the reference, in `check_matmul_swiglu`), with
/// the decode kernel the one that ran (the profile lists each kernel once).
#[test]
fn decode_kernels_take_the_swiglu_epilogue() {
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    for fold in [None, Some(1)] {
        let Some(gpu) = decoding(fold, true) else { return };
        kernels(&gpu);
        for (i, &(t, inter, k)) in [(1, 1, 8), (2, 17, 64), (3, 33, 576), (4, 130, 72)].iter().enumerate() {
            crate::kernels::check_matmul_swiglu(&gpu, t, inter, k, 8000 + i as u64);
            let f16 = decode_kernel("matmul_decode_f16", t);
            let want = sorted(vec![f16, "elementwise.wgsl::swiglu_forward".into()]);
            assert_eq!(sorted(kernels(&gpu)), want, "t={t} inter={inter} k={k}");
        }
        for ty in PACKED_TYPES {
            for (t, inter, k) in [(1, 3, 64), (4, 48, 576), (2, 33, 32), (6, 17, 64)] {
                let (host, _) = packed(ty, 2 * inter, k, 9000 + t as u64);
                let x = random(t * k, 1.0, 9100 + inter as u64);
                let xg = gpu.upload_f32("x", &x, &[t, k]).unwrap();
                let wg = gpu.upload_packed("w", &host).unwrap();
                let act = gpu.zeros("act", &[t, inter]).unwrap();
                let gu = gpu.zeros("gu", &[t, 2 * inter]).unwrap();
                let act2 = gpu.zeros("act2", &[t, inter]).unwrap();
                let mut batch = gpu.batch();
                batch.matmul_swiglu(&xg, &wg, &act, t).unwrap();
                batch.matmul(&xg, &wg, None, None, &gu, t).unwrap();
                batch.swiglu(&gu, &act2, t, inter).unwrap();
                batch.submit().unwrap();
                let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(gpu.read_f32(&act).unwrap()),
                    bits(gpu.read_f32(&act2).unwrap()),
                    "packed {ty:?} t={t} inter={inter} k={k}: the epilogue equals matmul then swiglu"
                );
                let entry = if ty == GgmlType::Q8_0 { "matmul_decode_q8" } else { "matmul_decode_q4" };
                let mut want = packed_decode_kernels(entry, t);
                want.push("elementwise.wgsl::swiglu_forward".into());
                let want = sorted(want);
                assert_eq!(sorted(kernels(&gpu)), want, "packed {ty:?} t={t}");
            }
        }
    }
}
