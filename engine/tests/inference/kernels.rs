//! Every kernel against its plain-Rust reference (`babelrl::gpu::cpu_ref`) on random inputs, including
//! sizes that do not divide the workgroup size (64) or the four-row matmul tile.

use crate::common;

use babelrl::gpu::Gpu;
use babelrl::gpu::cpu_ref::{self, AttnShape, TokenInfo};
use babelrl::gpu::kernels::{ATTN_QK_NORM, ATTN_ROPE, AttnParams};
use common::{assert_close, assert_close_by, gpu, random};
use half::f16;

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

/// f32 accumulation of K products vs an f64 reference: |error| ≤ γ_K · Σ|xᵢwᵢ| with γ_K ≈ K·ε.
/// The f32 rounding bound of y = x·wᵀ (+ bias) (+ residual) summed in any order: k·ε·Σ|x w| for the dot
/// product, plus one rounding (ε of everything summed) for each of the bias and residual additions.
fn matmul_tolerance(
    x: &[f32],
    w: &[f16],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    (t, n, k): (usize, usize, usize),
) -> Vec<f32> {
    let mut tol = vec![0.0; t * n];
    for r in 0..t {
        for c in 0..n {
            let s: f32 = (0..k).map(|i| (x[r * k + i] * w[c * k + i].to_f32()).abs()).sum();
            let b = bias.map_or(0.0, |b| b[c].abs());
            let res = residual.map_or(0.0, |v| v[r * n + c].abs());
            let adds = bias.is_some() as u32 + residual.is_some() as u32;
            tol[r * n + c] = k as f32 * f32::EPSILON * s + adds as f32 * f32::EPSILON * (s + b + res) + 1e-7;
        }
    }
    tol
}

pub(crate) fn check_matmul(gpu: &Gpu, t: usize, n: usize, k: usize, bias: bool, residual: bool, seed: u64) {
    let x = random(t * k, 1.0, seed);
    let w = to_f16(&random(n * k, 0.5, seed + 1));
    let b = random(n, 1.0, seed + 2);
    let res = random(t * n, 1.0, seed + 3);
    let want = cpu_ref::matmul_forward(&x, &w, bias.then_some(&b[..]), residual.then_some(&res[..]), t, n, k);
    let xg = gpu.upload_f32("x", &x, &[t, k]).unwrap();
    let wg = gpu.upload_weight_f16("w", &w, n, k).unwrap();
    let bg = gpu.upload_f32("b", &b, &[n]).unwrap();
    let rg = gpu.upload_f32("r", &res, &[t, n]).unwrap();
    let y = gpu.zeros("y", &[t, n]).unwrap();
    let mut batch = gpu.batch();
    batch.matmul(&xg, &wg, bias.then_some(&bg), residual.then_some(&rg), &y, t).unwrap();
    batch.submit().unwrap();
    let got = gpu.read_f32(&y).unwrap();
    let tol = matmul_tolerance(&x, &w, bias.then_some(&b[..]), residual.then_some(&res[..]), (t, n, k));
    assert_close_by(&format!("matmul t={t} n={n} k={k}"), &got, &want, |i| tol[i]);
}

#[test]
fn matmul_matches_reference_on_awkward_sizes() {
    check_matmul_awkward_sizes(&gpu());
}

pub(crate) fn check_matmul_awkward_sizes(gpu: &Gpu) {
    // (T, N, K): T below 4 (column-tiled path) or not a multiple of 4, N not a multiple of 4 or 64,
    // K a multiple of 8 (vector paths) or only of 2 (scalar).
    for (i, &(t, n, k)) in [
        (1, 1, 8),
        (1, 258, 576),
        (2, 7, 24),
        (3, 65, 16),
        (5, 130, 64),
        (8, 64, 576),
        (13, 97, 40),
        (2, 33, 6),
        (7, 70, 74),
        (4, 3, 2),
    ]
    .iter()
    .enumerate()
    {
        check_matmul(gpu, t, n, k, i % 2 == 0, i % 3 == 0, i as u64 * 10);
    }
    // A random case that once failed by one rounding of the bias and residual additions (K = 2, |y| ≈ 1.4),
    // which the tolerance did not count.
    for flags in 0..4u8 {
        check_matmul(gpu, 19, 134, 2, flags & 1 == 1, flags & 2 == 2, 19_939);
    }
}

/// The SwiGLU epilogue (`Batch::matmul_swiglu`) for x (T, K) and a gate/up weight (2I, K): against the
/// reference, and bit for bit against the plain matmul into (T, 2I) followed by `Batch::swiglu` on the
/// same adapter (each output's two dot products are computed as the plain kernel computes them).
pub(crate) fn check_matmul_swiglu(gpu: &Gpu, t: usize, inter: usize, k: usize, seed: u64) {
    let x = random(t * k, 1.0, seed);
    let w = to_f16(&random(2 * inter * k, 0.5, seed + 1));
    let gu = cpu_ref::matmul_forward(&x, &w, None, None, t, 2 * inter, k);
    let want = cpu_ref::matmul_swiglu_forward(&x, &w, t, inter, k);
    let xg = gpu.upload_f32("x", &x, &[t, k]).unwrap();
    let wg = gpu.upload_weight_f16("w", &w, 2 * inter, k).unwrap();
    let act = gpu.zeros("act", &[t, inter]).unwrap();
    let gug = gpu.zeros("gu", &[t, 2 * inter]).unwrap();
    let act2 = gpu.zeros("act2", &[t, inter]).unwrap();
    let mut batch = gpu.batch();
    batch.matmul_swiglu(&xg, &wg, &act, t).unwrap();
    batch.matmul(&xg, &wg, None, None, &gug, t).unwrap();
    batch.swiglu(&gug, &act2, t, inter).unwrap();
    batch.submit().unwrap();
    let got = gpu.read_f32(&act).unwrap();
    let what = format!("matmul_swiglu t={t} inter={inter} k={k}");
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        gpu.read_f32(&act2).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "{what}: the epilogue equals matmul then swiglu bit for bit"
    );
    // d(silu(g)·u) = silu'(g)·u·dg + silu(g)·du with |silu'| < 1.1, each dot product off by at most
    // its matmul tolerance; then the epilogue's own few roundings.
    let tol = matmul_tolerance(&x, &w, None, None, (t, 2 * inter, k));
    let silu = |g: f32| g / (1.0 + (-g).exp());
    assert_close_by(&what, &got, &want, |o| {
        let (r, c) = (o / inter, o % inter);
        let (g, u) = (gu[r * 2 * inter + c], gu[r * 2 * inter + inter + c]);
        let (eg, eu) = (tol[r * 2 * inter + c], tol[r * 2 * inter + inter + c]);
        1.1 * u.abs() * eg + silu(g).abs() * eu + 8.0 * f32::EPSILON * want[o].abs() + 1e-7
    });
}

/// Output widths below, at and past each kernel's tile (2, 4, 32 columns of output), one and several
/// row groups, K a multiple of 8 or only of 2 (the scalar kernel).
pub(crate) const SWIGLU_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 8),
    (1, 67, 576),
    (2, 3, 24),
    (3, 130, 64),
    (4, 5, 16),
    (5, 33, 64),
    (8, 64, 576),
    (9, 31, 40),
    (13, 97, 40),
    (33, 70, 64),
    (67, 65, 96),
    (2, 33, 6),
    (7, 9, 74),
];

#[test]
fn matmul_swiglu_matches_reference_on_awkward_sizes() {
    let gpu = gpu();
    for (i, &(t, inter, k)) in SWIGLU_SHAPES.iter().enumerate() {
        check_matmul_swiglu(&gpu, t, inter, k, 500 + 10 * i as u64);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]
    #[test]
    fn matmul_matches_reference_on_random_shapes(t in 1usize..20, n in 1usize..150, k2 in 1usize..50, flags in 0u8..4) {
        check_matmul(&gpu(), t, n, 2 * k2, flags & 1 == 1, flags & 2 == 2, (t * 1000 + n * 7 + k2) as u64);
    }
}

#[test]
fn rms_norm_matches_reference_with_and_without_gather() {
    check_rms_norm(&gpu());
}

pub(crate) fn check_rms_norm(gpu: &Gpu) {
    for &(rows, dim) in &[(1usize, 8usize), (67, 64), (5, 576), (130, 33)] {
        let x = random(rows * dim, 2.0, rows as u64);
        let w = random(dim, 1.0, dim as u64);
        let xg = gpu.upload_f32("x", &x, &[rows, dim]).unwrap();
        let wg = gpu.upload_f32("w", &w, &[dim]).unwrap();
        let out = gpu.zeros("out", &[rows, dim]).unwrap();
        let mut b = gpu.batch();
        b.rms_norm(&xg, &wg, None, &out, rows, 1e-5).unwrap();
        b.submit().unwrap();
        let want = cpu_ref::rms_norm_forward(&x, &w, None, rows, 1e-5);
        assert_close("rms_norm", &gpu.read_f32(&out).unwrap(), &want, 1e-6, 1e-5);

        // Gather: the last row, then the first.
        let map = [rows as u32 - 1, 0];
        let mg = gpu.upload_u32("map", &map, &[2]).unwrap();
        let out2 = gpu.zeros("out2", &[2, dim]).unwrap();
        let mut b = gpu.batch();
        b.rms_norm(&xg, &wg, Some(&mg), &out2, 2, 1e-5).unwrap();
        b.submit().unwrap();
        let want = cpu_ref::rms_norm_forward(&x, &w, Some(&map), 2, 1e-5);
        assert_close("rms_norm gather", &gpu.read_f32(&out2).unwrap(), &want, 1e-6, 1e-5);
    }
}

#[test]
fn layer_norm_matches_reference() {
    check_layer_norm(&gpu());
}

pub(crate) fn check_layer_norm(gpu: &Gpu) {
    for &(rows, dim) in &[(1usize, 16usize), (70, 384), (3, 30)] {
        let x: Vec<f32> = random(rows * dim, 3.0, 5).iter().map(|v| v + 0.7).collect();
        let (w, b) = (random(dim, 1.0, 6), random(dim, 1.0, 7));
        let (xg, wg, bg) = (
            gpu.upload_f32("x", &x, &[rows, dim]).unwrap(),
            gpu.upload_f32("w", &w, &[dim]).unwrap(),
            gpu.upload_f32("b", &b, &[dim]).unwrap(),
        );
        let out = gpu.zeros("out", &[rows, dim]).unwrap();
        let mut batch = gpu.batch();
        batch.layer_norm(&xg, &wg, &bg, &out, rows, 1e-12).unwrap();
        batch.submit().unwrap();
        let want = cpu_ref::layer_norm_forward(&x, &w, &b, rows, 1e-12);
        assert_close("layer_norm", &gpu.read_f32(&out).unwrap(), &want, 1e-5, 1e-5);
    }
}

/// Two sequences in different cache slots, a prefill of several tokens and a single decode token, with
/// grouped-query heads, per-head RMSNorm and RoPE.
#[test]
fn qkv_split_and_attention_match_reference() {
    check_qkv_split_and_attention(&gpu());
}

pub(crate) fn check_qkv_split_and_attention(gpu: &Gpu) {
    for &(n_head, n_kv_head, head_dim, qk_norm) in
        &[(4usize, 2usize, 16usize, true), (3, 1, 8, false), (2, 2, 64, false), (62, 2, 2, false)]
    {
        let s = AttnShape { n_head, n_kv_head, head_dim, ctx: 24 };
        let heads = n_head + 2 * n_kv_head;
        // Slot 1 holds 6 earlier positions written by a first pass; then a second pass mixes
        // 5 prefill tokens of slot 0 with one decode token of slot 1 at position 6.
        let first: Vec<TokenInfo> = (0..6).map(|p| TokenInfo { pos: p, slot: 1, n_keys: p + 1 }).collect();
        let mut second: Vec<TokenInfo> =
            (0..5).map(|p| TokenInfo { pos: p, slot: 0, n_keys: p + 1 }).collect();
        second.push(TokenInfo { pos: 6, slot: 1, n_keys: 7 });
        let rope = cpu_ref::rope_table(32, head_dim, 10000.0);
        let norm_w = random(2 * head_dim, 1.0, 9);
        let norm = qk_norm.then_some((&norm_w[..], 1e-6f32));

        let cache_len = 2 * n_kv_head * s.ctx * head_dim;
        let (mut kc, mut vc) = (vec![0.0; cache_len], vec![0.0; cache_len]);
        let k_gpu = gpu.zeros("k", &[cache_len]).unwrap();
        let v_gpu = gpu.zeros("v", &[cache_len]).unwrap();
        let rope_gpu = gpu.upload_f32("rope", rope.as_flattened(), &[rope.len() * 2]).unwrap();
        let norm_gpu = gpu.upload_f32("norm", &norm_w, &[2 * head_dim]).unwrap();

        for (pass, tok) in [first, second].iter().enumerate() {
            let t = tok.len();
            let qkv = random(t * heads * head_dim, 1.0, 20 + pass as u64);
            let q_ref = cpu_ref::qkv_split_forward(s, tok, &qkv, Some(&rope), norm, &mut kc, &mut vc);
            let out_ref = cpu_ref::attention_forward(s, tok, &q_ref, &kc, &vc);

            let words = TokenInfo::words(tok);
            let tok_gpu = gpu.upload_u32("tok", &words, &[t, 4]).unwrap();
            let qkv_gpu = gpu.upload_f32("qkv", &qkv, &[t, heads * head_dim]).unwrap();
            let q_gpu = gpu.zeros("q", &[t, n_head, head_dim]).unwrap();
            let span = tok.iter().map(|i| i.n_keys).max().unwrap();
            let scores = gpu.zeros("scores", &[t, n_head, span as usize]).unwrap();
            let out = gpu.zeros("out", &[t, n_head * head_dim]).unwrap();
            let p = AttnParams {
                t: t as u32,
                n_head: n_head as u32,
                n_kv_head: n_kv_head as u32,
                head_dim: head_dim as u32,
                ctx: s.ctx as u32,
                span,
                flags: ATTN_ROPE | if qk_norm { ATTN_QK_NORM } else { 0 },
                eps: 1e-6,
            };
            let mut b = gpu.batch();
            b.qkv_split(&p, &tok_gpu, &qkv_gpu, &rope_gpu, Some(&norm_gpu), &q_gpu, &k_gpu, &v_gpu).unwrap();
            b.attention(&p, &tok_gpu, &q_gpu, &k_gpu, &v_gpu, &scores, &out).unwrap();
            b.submit().unwrap();
            assert_close("q", &gpu.read_f32(&q_gpu).unwrap(), &q_ref, 1e-5, 1e-5);
            assert_close("k cache", &gpu.read_f32(&k_gpu).unwrap(), &kc, 1e-5, 1e-5);
            assert_close("v cache", &gpu.read_f32(&v_gpu).unwrap(), &vc, 0.0, 0.0);
            assert_close("attention", &gpu.read_f32(&out).unwrap(), &out_ref, 1e-5, 1e-4);
        }
    }
}

#[test]
fn embed_rows_swiglu_gelu_logprob_and_pooling_match_reference() {
    check_elementwise(&gpu());
}

pub(crate) fn check_elementwise(gpu: &Gpu) {
    // Embedding gather.
    let (vocab, dim) = (37usize, 70usize);
    let table = to_f16(&random(vocab * dim, 1.0, 1));
    let ids = [3u32, 0, 36, 3, 17];
    let tg = gpu.upload_weight_f16("table", &table, vocab, dim).unwrap();
    let idg = gpu.upload_u32("ids", &ids, &[5]).unwrap();
    let out = gpu.zeros("rows", &[5, dim]).unwrap();
    // SwiGLU on (T=3, I=67).
    let gu = random(3 * 2 * 67, 4.0, 2);
    let gug = gpu.upload_f32("gu", &gu, &[3, 134]).unwrap();
    let act = gpu.zeros("act", &[3, 67]).unwrap();
    // GELU over 131 values.
    let gx = random(131, 5.0, 3);
    let gxg = gpu.upload_f32("gelu", &gx, &[131]).unwrap();
    // Log-probs over (R=3, V=40001): longer than lavapipe's 16384-iteration loop limit, not a
    // multiple of the 1024-column chunk.
    let vocab = 40001;
    let logits = random(3 * vocab, 8.0, 4);
    let targets = [0u32, 40000, 517];
    let lg = gpu.upload_f32("logits", &logits, &[3, vocab]).unwrap();
    let tgg = gpu.upload_u32("targets", &targets, &[3]).unwrap();
    let partial = gpu.zeros("partial", &[3, vocab.div_ceil(1024), 2]).unwrap();
    let lp = gpu.zeros("lp", &[3]).unwrap();
    // Mean pooling over two spans of a (9, 66) matrix.
    let px = random(9 * 66, 1.0, 5);
    let spans = [(0u32, 4u32), (4, 5)];
    let pxg = gpu.upload_f32("px", &px, &[9, 66]).unwrap();
    let sg = gpu.upload_u32("spans", &[0, 4, 4, 5], &[2, 2]).unwrap();
    let pooled = gpu.zeros("pooled", &[2, 66]).unwrap();

    let mut b = gpu.batch();
    b.embed_rows(&idg, &tg, &out, 5).unwrap();
    b.swiglu(&gug, &act, 3, 67).unwrap();
    b.gelu(&gxg, 1, 131).unwrap();
    b.logprob(&lg, &tgg, &partial, &lp, 3, vocab).unwrap();
    b.mean_pool_l2(&pxg, &sg, &pooled, 2, 66).unwrap();
    b.submit().unwrap();

    assert_close(
        "embed_rows",
        &gpu.read_f32(&out).unwrap(),
        &cpu_ref::embed_rows_forward(&ids, &table, dim),
        0.0,
        0.0,
    );
    assert_close("swiglu", &gpu.read_f32(&act).unwrap(), &cpu_ref::swiglu_forward(&gu, 3, 67), 1e-6, 1e-5);
    assert_close("gelu", &gpu.read_f32(&gxg).unwrap(), &cpu_ref::gelu_forward(&gx), 1e-6, 1e-5);
    assert_close(
        "logprob",
        &gpu.read_f32(&lp).unwrap(),
        &cpu_ref::logprob_forward(&logits, &targets, vocab),
        1e-4,
        1e-5,
    );
    assert_close(
        "mean_pool_l2",
        &gpu.read_f32(&pooled).unwrap(),
        &cpu_ref::mean_pool_l2_forward(&px, &spans, 66),
        1e-6,
        1e-5,
    );
}

/// A weight split into row blocks (as for vocabularies beyond one storage binding) gives the same
/// gather and matmul as the whole weight, including a last block shorter than the others.
#[test]
fn blocked_weights_match_the_whole_weight() {
    check_blocked_weights(&gpu());
}

pub(crate) fn check_blocked_weights(gpu: &Gpu) {
    let (vocab, dim, t) = (23usize, 16usize, 5usize);
    let table = random(vocab * dim, 1.0, 31);
    let table16 = to_f16(&table);
    let blocked = gpu.upload_weight_in_blocks("table", &table, vocab, dim, 7).unwrap();
    assert_eq!(blocked.blocks.len(), 4);
    let ids = [22u32, 0, 7, 6, 13];
    let idg = gpu.upload_u32("ids", &ids, &[t]).unwrap();
    let x = random(t * dim, 1.0, 32);
    let xg = gpu.upload_f32("x", &x, &[t, dim]).unwrap();
    let rows = gpu.upload_f32("stale", &vec![9.0; t * dim], &[t, dim]).unwrap(); // must be overwritten
    let logits = gpu.zeros("logits", &[t, vocab]).unwrap();
    let mut b = gpu.batch();
    b.embed_rows_blocked(&idg, &blocked, &rows, t).unwrap();
    b.matmul_blocked(&xg, &blocked, &logits, t).unwrap();
    b.submit().unwrap();
    let want_rows = cpu_ref::embed_rows_forward(&ids, &table16, dim);
    assert_close("blocked embed_rows", &gpu.read_f32(&rows).unwrap(), &want_rows, 0.0, 0.0);
    let want = cpu_ref::matmul_forward(&x, &table16, None, None, t, vocab, dim);
    let tol = matmul_tolerance(&x, &table16, None, None, (t, vocab, dim));
    assert_close_by("blocked matmul", &gpu.read_f32(&logits).unwrap(), &want, |i| tol[i]);
}

/// One decode token attending to MAX_CONTEXT = 16384 keys: the longest loops the engine allows stay
/// under lavapipe's silent 16384-iteration cut-off (a truncated loop would drop the last keys' weight).
#[test]
fn attention_over_the_longest_context_matches_reference() {
    let gpu = gpu();
    let ctx = babelrl::model::decoder::MAX_CONTEXT;
    let s = AttnShape { n_head: 2, n_kv_head: 1, head_dim: 8, ctx };
    let keys = random(ctx * 8, 1.0, 41);
    // The last keys carry large values, so dropping them changes the output clearly.
    let mut values = random(ctx * 8, 1.0, 42);
    values[(ctx - 64) * 8..].iter_mut().for_each(|v| *v += 50.0);
    let q = random(2 * 8, 1.0, 43);
    let tok = [TokenInfo { pos: ctx as u32 - 1, slot: 0, n_keys: ctx as u32 }];
    let want = cpu_ref::attention_forward(s, &tok, &q, &keys, &values);

    let p = AttnParams {
        t: 1,
        n_head: 2,
        n_kv_head: 1,
        head_dim: 8,
        ctx: ctx as u32,
        span: ctx as u32,
        flags: 0,
        eps: 0.0,
    };
    let tok_gpu = gpu.upload_u32("tok", &TokenInfo::words(&tok), &[1, 4]).unwrap();
    let q_gpu = gpu.upload_f32("q", &q, &[1, 2, 8]).unwrap();
    let k_gpu = gpu.upload_f32("k", &keys, &[ctx * 8]).unwrap();
    let v_gpu = gpu.upload_f32("v", &values, &[ctx * 8]).unwrap();
    let scores = gpu.zeros("scores", &[1, 2, ctx]).unwrap();
    let out = gpu.zeros("out", &[1, 16]).unwrap();
    let mut b = gpu.batch();
    b.attention(&p, &tok_gpu, &q_gpu, &k_gpu, &v_gpu, &scores, &out).unwrap();
    b.submit().unwrap();
    assert_close("attention over 16384 keys", &gpu.read_f32(&out).unwrap(), &want, 1e-4, 1e-4);
}

/// The fused attention kernel's worst case for lavapipe's loop cut-off: 16384 keys with the largest
/// head it takes (hd = 256, one key group per feature quad), and a decode row among short prefill rows
/// of another slot in the same launch.
#[test]
fn fused_attention_over_the_longest_context_with_wide_heads_matches_reference() {
    let gpu = gpu();
    let (ctx, hd) = (babelrl::model::decoder::MAX_CONTEXT, 256usize);
    let s = AttnShape { n_head: 2, n_kv_head: 1, head_dim: hd, ctx };
    let keys = random(2 * ctx * hd, 1.0, 51);
    let mut values = random(2 * ctx * hd, 1.0, 52);
    values[(ctx - 64) * hd..ctx * hd].iter_mut().for_each(|v| *v += 50.0);
    let tok = [
        TokenInfo { pos: ctx as u32 - 1, slot: 0, n_keys: ctx as u32 },
        TokenInfo { pos: 0, slot: 1, n_keys: 1 },
        TokenInfo { pos: 69, slot: 1, n_keys: 70 },
    ];
    let q = random(3 * 2 * hd, 0.2, 53);
    let want = cpu_ref::attention_forward(s, &tok, &q, &keys, &values);
    let p = AttnParams {
        t: 3,
        n_head: 2,
        n_kv_head: 1,
        head_dim: hd as u32,
        ctx: ctx as u32,
        span: ctx as u32,
        flags: 0,
        eps: 0.0,
    };
    let tok_gpu = gpu.upload_u32("tok", &TokenInfo::words(&tok), &[3, 4]).unwrap();
    let q_gpu = gpu.upload_f32("q", &q, &[3, 2, hd]).unwrap();
    let k_gpu = gpu.upload_f32("k", &keys, &[2 * ctx * hd]).unwrap();
    let v_gpu = gpu.upload_f32("v", &values, &[2 * ctx * hd]).unwrap();
    let scores = gpu.zeros("scores", &[3, 2, ctx]).unwrap();
    let out = gpu.zeros("out", &[3, 2 * hd]).unwrap();
    let mut b = gpu.batch();
    b.attention(&p, &tok_gpu, &q_gpu, &k_gpu, &v_gpu, &scores, &out).unwrap();
    assert_eq!(b.len(), 1, "one launch");
    b.submit().unwrap();
    assert_close("fused attention over 16384 keys, hd 256", &gpu.read_f32(&out).unwrap(), &want, 1e-4, 1e-4);
}

/// A 1-D launch of more than 65535 workgroups folds into the grid's y dimension.
#[test]
fn elementwise_grid_folds_past_65535_workgroups() {
    let gpu = gpu();
    let n = 65535 * 64 + 1000;
    let x = random(n, 3.0, 44);
    let xg = gpu.upload_f32("x", &x, &[n]).unwrap();
    let mut b = gpu.batch();
    b.gelu(&xg, 1, n).unwrap();
    b.submit().unwrap();
    let got = gpu.read_f32(&xg).unwrap();
    let want = cpu_ref::gelu_forward(&x[n - 2000..]);
    assert_close("gelu tail", &got[n - 2000..], &want, 1e-6, 1e-5);
}

/// A profiling GPU (`babelrl bench --profile`) runs each step on its own: the same results as the
/// batched run, and every dispatch, copy and clear counted once under its kernel's name.
#[test]
fn profiled_batches_compute_the_same_and_count_every_step() {
    use babelrl::gpu::{Gpu, GpuOptions};
    let profiling = Gpu::new(&GpuOptions { profile: true, ..GpuOptions::from_env() }).unwrap();
    let (t, n, k) = (5, 33, 64);
    let x = random(t * k, 1.0, 1);
    let w = to_f16(&random(n * k, 0.5, 2));
    let run = |g: &Gpu| {
        let xg = g.upload_f32("x", &x, &[t, k]).unwrap();
        let wg = g.upload_weight_f16("w", &w, n, k).unwrap();
        let y = g.zeros("y", &[t, n]).unwrap();
        let y2 = g.zeros("y2", &[t, n]).unwrap();
        let mut b = g.batch();
        b.matmul(&xg, &wg, None, None, &y, t).unwrap();
        b.matmul(&xg, &wg, None, Some(&y), &y2, t).unwrap();
        b.copy(&y2.buffer, 0, &y.buffer, 0, 4 * (t * n) as u64);
        b.clear(&y2.buffer);
        b.submit().unwrap();
        (g.read_f32(&y).unwrap(), g.read_f32(&y2).unwrap())
    };
    profiling.take_profile();
    let (got, cleared) = run(&profiling);
    let profile = profiling.take_profile();
    let (want, _) = run(&gpu());
    assert_eq!(got, want, "profiled and batched runs compute the same");
    assert!(cleared.iter().all(|&v| v == 0.0));
    let calls = |name: &str| profile.iter().find(|p| p.kernel.contains(name)).map_or(0, |p| p.calls);
    assert_eq!(
        // Whichever forward matmul the adapter takes for five rows (the per-lane tile, or on subgroups
        // of eight the one-row broadcast kernel).
        (calls("::matmul_forward"), calls("copy"), calls("clear")),
        (2, 1, 1),
        "{profile:?}"
    );
    if !GpuOptions::from_env().profile {
        assert!(gpu().take_profile().is_empty(), "an ordinary GPU records nothing");
    }
}

/// A buffer too small for an inference launch is an error naming the kernel, the buffer and the
/// shape it needs, and nothing is recorded (in a release build wgpu would clamp the access instead and
/// return wrong numbers).
#[test]
fn inference_launches_reject_mis_sized_buffers() {
    let gpu = gpu();
    let (t, n, k) = (3, 8, 16);
    let x = gpu.zeros("x", &[t, k]).unwrap();
    let w = gpu.upload_weight_f16("w", &to_f16(&random(n * k, 1.0, 1)), n, k).unwrap();
    let short_y = gpu.zeros("y", &[t, n - 1]).unwrap();
    let y = gpu.zeros("y", &[t, n]).unwrap();
    let nw = gpu.zeros("norm_w", &[k]).unwrap();
    let two_rows = gpu.zeros("x2", &[2, k]).unwrap();
    let p = AttnParams { t: 1, n_head: 2, n_kv_head: 1, head_dim: 8, ctx: 4, span: 4, flags: 0, eps: 0.0 };
    let normed = AttnParams { flags: ATTN_QK_NORM, ..p };
    let tok = gpu.zeros("tok", &[1, 4]).unwrap();
    let q = gpu.zeros("q", &[1, 2, 8]).unwrap();
    let cache = gpu.zeros("cache", &[4 * 8]).unwrap();
    let short_cache = gpu.zeros("short_cache", &[3 * 8]).unwrap();
    let scores = gpu.zeros("scores", &[1, 2, 4]).unwrap();
    let out = gpu.zeros("out", &[1, 16]).unwrap();
    let gu = gpu.zeros("gu", &[t, 2 * n]).unwrap();
    let partial = gpu.zeros("partial", &[t, 1]).unwrap();
    let ids = gpu.zeros("ids", &[t]).unwrap();
    let one_id = gpu.zeros("one_id", &[1]).unwrap();

    let mut b = gpu.batch();
    let cases = [
        ("matmul: `y` is [3, 7]", b.matmul(&x, &w, None, None, &short_y, t)),
        ("matmul: `x` is [2, 16]", b.matmul(&two_rows, &w, None, None, &y, t)),
        ("matmul: `residual`", b.matmul(&x, &w, None, Some(&short_y), &y, t)),
        ("matmul: columns 2..10", b.matmul_into(&x, &w, None, None, &y, t, n, 2)),
        ("rms_norm: `x` is [2, 16]", b.rms_norm(&two_rows, &nw, None, &x, t, 1e-5)),
        ("rms_norm: `out`", b.rms_norm(&x, &nw, None, &two_rows, t, 1e-5)),
        ("layer_norm: `b`", b.layer_norm(&x, &nw, &ids, &x, t, 1e-5)),
        ("attention: `k_cache` is [24]", b.attention(&p, &tok, &q, &short_cache, &cache, &scores, &out)),
        ("attention: `scores`", b.attention(&p, &tok, &q, &cache, &cache, &tok, &out)),
        ("qkv_split: `v_cache`", b.qkv_split(&p, &tok, &cache, &cache, None, &q, &cache, &short_cache)),
        (
            "qkv_split: `qk_norm` is [3]",
            b.qkv_split(&normed, &tok, &cache, &cache, Some(&ids), &q, &cache, &cache),
        ),
        ("qkv_split: ATTN_QK_NORM", b.qkv_split(&normed, &tok, &cache, &cache, None, &q, &cache, &cache)),
        ("swiglu: `act`", b.swiglu(&gu, &short_y, t, n)),
        ("logprob: `partial` is [3, 1]", b.logprob(&y, &ids, &partial, &ids, t, n)),
        ("embed_rows: `out`", b.embed_rows(&ids, &w, &short_y, t)),
        ("embed_rows_add: `ids`", b.embed_rows_add(&one_id, &w, &x, t)),
        ("gelu: `x`", b.gelu(&short_y, t, n)),
        ("mean_pool_l2: `spans`", b.mean_pool_l2(&x, &ids, &y, t, n)),
    ];
    for (says, got) in cases {
        let e = got.expect_err(says).to_string();
        assert!(e.contains(says), "want {says:?} in: {e}");
    }
    assert!(b.is_empty(), "a refused launch recorded a dispatch");
}
