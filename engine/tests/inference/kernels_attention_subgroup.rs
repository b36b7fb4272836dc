//! attention_subgroup.wgsl (inference attention, one subgroup of eight per (head, token), online
//! softmax) against `cpu_ref::attention_forward`: head sizes 32 to 256, grouped-query heads, rows of
//! two cache slots with different key counts in one launch, a key walk near lavapipe's loop budget with
//! large values at its end (a cut-off walk fails), and the hosts' choice: the subgroup kernel where it
//! applies, attention.wgsl's fused kernel past the budget or without subgroups.

use crate::common::{assert_close, random};

use babelrl::gpu::cpu_ref::{self, AttnShape, TokenInfo};
use babelrl::gpu::kernels::AttnParams;
use babelrl::gpu::{Gpu, GpuOptions};

const SUBGROUP_ENTRY: &str = "attention_subgroup.wgsl::attn_subgroup_forward";
const FUSED_ENTRY: &str = "attention.wgsl::attn_fused_forward";

/// One launch over `tok` (slots 0 and 1 of a `ctx`-position cache) against the reference; returns the
/// entry points that ran.
fn check(
    gpu: &Gpu,
    n_head: usize,
    n_kv_head: usize,
    hd: usize,
    ctx: usize,
    tok: &[TokenInfo],
    seed: u64,
) -> Vec<String> {
    let s = AttnShape { n_head, n_kv_head, head_dim: hd, ctx };
    let cache_len = 2 * n_kv_head * ctx * hd;
    let keys = random(cache_len, 1.0, seed);
    // The last 64 positions of every (slot, head) carry large values: a walk that stops early is wrong.
    let mut values = random(cache_len, 1.0, seed + 1);
    for row in 0..2 * n_kv_head {
        let end = (row + 1) * ctx * hd;
        values[end - 64.min(ctx) * hd..end].iter_mut().for_each(|v| *v += 50.0);
    }
    let t = tok.len();
    let q = random(t * n_head * hd, 0.5, seed + 2);
    let want = cpu_ref::attention_forward(s, tok, &q, &keys, &values);
    let span = tok.iter().map(|i| i.n_keys).max().unwrap();
    let p = params(t, (n_head, n_kv_head, hd), ctx, span);
    let tok_gpu = gpu.upload_u32("tok", &TokenInfo::words(tok), &[t, 4]).unwrap();
    let q_gpu = gpu.upload_f32("q", &q, &[t, n_head, hd]).unwrap();
    let k_gpu = gpu.upload_f32("k", &keys, &[cache_len]).unwrap();
    let v_gpu = gpu.upload_f32("v", &values, &[cache_len]).unwrap();
    let scores = gpu.zeros("scores", &[t, n_head, span as usize]).unwrap();
    let out = gpu.zeros("out", &[t, n_head * hd]).unwrap();
    gpu.take_profile();
    let mut b = gpu.batch();
    b.attention(&p, &tok_gpu, &q_gpu, &k_gpu, &v_gpu, &scores, &out).unwrap();
    assert_eq!(b.len(), 1, "one launch");
    b.submit().unwrap();
    let what = format!("attention H {n_head} Hkv {n_kv_head} hd {hd} span {span}");
    assert_close(&what, &gpu.read_f32(&out).unwrap(), &want, 1e-4, 1e-4);
    // Entry points without their pipeline constants (`…;QUADS=2`).
    gpu.take_profile()
        .into_iter()
        .map(|k| k.kernel.split(';').next().unwrap_or_default().to_string())
        .collect()
}

/// Attention's parameters for `t` rows of (H, Hkv, hd) heads over `ctx` positions, `span` keys at most.
fn params(t: usize, (n_head, n_kv_head, hd): (usize, usize, usize), ctx: usize, span: u32) -> AttnParams {
    AttnParams {
        t: t as u32,
        n_head: n_head as u32,
        n_kv_head: n_kv_head as u32,
        head_dim: hd as u32,
        ctx: ctx as u32,
        span,
        flags: 0,
        eps: 0.0,
    }
}

/// Decode rows of slot 1 among prefill rows of slot 0, as a batch of generations mixes them.
fn mixed_rows(ctx: usize) -> Vec<TokenInfo> {
    let mut tok: Vec<TokenInfo> = (0..5).map(|p| TokenInfo { pos: p, slot: 0, n_keys: p + 1 }).collect();
    tok.push(TokenInfo { pos: ctx as u32 - 1, slot: 1, n_keys: ctx as u32 });
    tok.push(TokenInfo { pos: 40, slot: 1, n_keys: 41 });
    tok
}

fn profiling(disable_subgroups: bool) -> std::sync::Arc<Gpu> {
    Gpu::new(&GpuOptions { profile: true, disable_subgroups, ..GpuOptions::from_env() }).unwrap()
}

#[test]
fn subgroup_attention_matches_reference_for_every_head_size() {
    let gpu = profiling(false);
    let subgroups = gpu.subgroup_matmul_rows().is_some();
    for (i, &(n_head, n_kv_head, hd)) in
        [(4usize, 2usize, 32usize), (9, 3, 64), (2, 1, 128), (2, 2, 256)].iter().enumerate()
    {
        let ran = check(&gpu, n_head, n_kv_head, hd, 200, &mixed_rows(200), 10 * i as u64);
        let want = if subgroups { SUBGROUP_ENTRY } else { FUSED_ENTRY };
        assert_eq!(ran, [want], "hd {hd}");
    }
}

/// hd = 64 (two quads a lane, five loop iterations a key if nothing unrolls): 11000 keys stay within
/// the budget and take the subgroup kernel; at hd = 256 (17 a key) 4000 keys do not, and take the fused
/// kernel, which must agree too.
#[test]
fn subgroup_attention_walks_long_contexts_and_hands_longer_ones_to_the_fused_kernel() {
    let gpu = profiling(false);
    let subgroups = gpu.subgroup_matmul_rows().is_some();
    let ran = check(&gpu, 2, 1, 64, 11000, &mixed_rows(11000), 100);
    assert_eq!(ran, [if subgroups { SUBGROUP_ENTRY } else { FUSED_ENTRY }]);
    let ran = check(&gpu, 2, 1, 256, 4000, &mixed_rows(4000), 200);
    assert_eq!(ran, [FUSED_ENTRY]);
}

#[test]
fn without_subgroups_the_fused_kernel_runs() {
    let gpu = profiling(true);
    assert_eq!(check(&gpu, 9, 3, 64, 200, &mixed_rows(200), 300), [FUSED_ENTRY]);
}

/// attention_train (the forward that saves lse for the backward) takes the subgroup kernel's training
/// entry on lavapipe and agrees with the reference's output and log-sum-exp.
#[test]
fn subgroup_training_forward_saves_the_reference_lse() {
    let gpu = profiling(false);
    let (n_head, n_kv_head, hd, ctx) = (4usize, 2usize, 64usize, 300usize);
    let s = AttnShape { n_head, n_kv_head, head_dim: hd, ctx };
    let tok = mixed_rows(ctx);
    let t = tok.len();
    let cache_len = 2 * n_kv_head * ctx * hd;
    let (keys, values, q) =
        (random(cache_len, 1.0, 401), random(cache_len, 1.0, 402), random(t * n_head * hd, 1.0, 403));
    let want_out = cpu_ref::attention_forward(s, &tok, &q, &keys, &values);
    let want_lse = cpu_ref::attention_lse(s, &tok, &q, &keys);
    let span = tok.iter().map(|i| i.n_keys).max().unwrap();
    let p = params(t, (n_head, n_kv_head, hd), ctx, span);
    let tok_gpu = gpu.upload_u32("tok", &TokenInfo::words(&tok), &[t, 4]).unwrap();
    let q_gpu = gpu.upload_f32("q", &q, &[t, n_head, hd]).unwrap();
    let k_gpu = gpu.upload_f32("k", &keys, &[cache_len]).unwrap();
    let v_gpu = gpu.upload_f32("v", &values, &[cache_len]).unwrap();
    let scores = gpu.zeros("scores", &[t, n_head, span as usize]).unwrap();
    let out = gpu.zeros("out", &[t, n_head * hd]).unwrap();
    let lse = gpu.zeros("lse", &[t, n_head]).unwrap();
    gpu.take_profile();
    let mut b = gpu.batch();
    b.attention_train(&p, &tok_gpu, &q_gpu, &k_gpu, &v_gpu, &scores, &out, &lse).unwrap();
    b.submit().unwrap();
    assert_close("training attention out", &gpu.read_f32(&out).unwrap(), &want_out, 1e-5, 1e-4);
    assert_close("training attention lse", &gpu.read_f32(&lse).unwrap(), &want_lse, 1e-5, 1e-5);
    let ran: Vec<String> = gpu.take_profile().into_iter().map(|k| k.kernel).collect();
    if gpu.subgroup_matmul_rows().is_some() {
        assert!(
            ran.iter().all(|k| k.starts_with("attention_subgroup.wgsl::attn_subgroup_train_forward")),
            "{ran:?}"
        );
    } else {
        assert!(ran.iter().any(|k| k.ends_with("::attn_softmax_lse_forward")), "{ran:?}");
    }
}
