//! Plain-Rust references of every kernel: simple loops, no tricks, the ground truth for kernel tests.
//! Shapes and conventions are those of the WGSL entry points of the same name.

use half::f16;

/// y (T, N) = x (T, K) · wᵀ (+ bias) (+ residual), w (N, K) given as f16.
pub fn matmul_forward(
    x: &[f32],
    w: &[f16],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    t: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let w: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    matmul_forward_f32(x, &w, bias, residual, t, n, k)
}

/// [`matmul_forward`] with w (N, K) given as f32: a packed weight's values (`PackedHost::dequantize`),
/// the reference of the packed decode kernels (matmul_decode.wgsl).
pub fn matmul_forward_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    t: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; t * n];
    for r in 0..t {
        for c in 0..n {
            let mut acc = 0.0f64;
            for i in 0..k {
                acc += x[r * k + i] as f64 * w[c * k + i] as f64;
            }
            let mut v = acc as f32;
            if let Some(b) = bias {
                v += b[c];
            }
            if let Some(res) = residual {
                v += res[r * n + c];
            }
            y[r * n + c] = v;
        }
    }
    y
}

/// dX (T, K) = dY (T, N) · w, w (N, K) given as f16: the frozen linear's input gradient.
pub fn matmul_backward_dx(dy: &[f32], w: &[f16], t: usize, n: usize, k: usize) -> Vec<f32> {
    let mut dx = vec![0.0; t * k];
    for r in 0..t {
        for c in 0..k {
            let acc: f64 = (0..n).map(|j| dy[r * n + j] as f64 * w[j * k + c].to_f64()).sum();
            dx[r * k + c] = acc as f32;
        }
    }
    dx
}

/// out (R, D) = x[src(r)] / sqrt(mean(x²) + eps) · w, src(r) = rows[r] if given.
pub fn rms_norm_forward(x: &[f32], w: &[f32], rows_map: Option<&[u32]>, rows: usize, eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0.0; rows * d];
    for r in 0..rows {
        let src = rows_map.map_or(r, |m| m[r] as usize);
        let row = &x[src * d..(src + 1) * d];
        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..d {
            out[r * d + i] = (row[i] as f64 * inv) as f32 * w[i];
        }
    }
    out
}

/// inv_rms (R) = 1 / sqrt(mean(x[r]²) + eps): what `rms_norm_train_forward` saves for the backward.
pub fn rms_norm_inv(x: &[f32], rows: usize, dim: usize, eps: f32) -> Vec<f32> {
    (0..rows)
        .map(|r| {
            let ms = x[r * dim..(r + 1) * dim].iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
            (1.0 / (ms + eps as f64).sqrt()) as f32
        })
        .collect()
}

/// dx (R, D) of out = x · inv · w: inv·(w ⊙ dy) − x · inv³ / D · Σ w ⊙ dy ⊙ x, inv recomputed in f64.
/// The frozen weight gets no gradient.
pub fn rms_norm_backward(x: &[f32], w: &[f32], dy: &[f32], rows: usize, eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut dx = vec![0.0; rows * d];
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        let g: Vec<f64> = (0..d).map(|i| w[i] as f64 * dy[r * d + i] as f64).collect();
        let dot: f64 = (0..d).map(|i| g[i] * row[i] as f64).sum();
        let c = dot * inv.powi(3) / d as f64;
        for i in 0..d {
            dx[r * d + i] = (inv * g[i] - c * row[i] as f64) as f32;
        }
    }
    dx
}

/// out (R, D) = (x − mean) / sqrt(var + eps) · w + b.
pub fn layer_norm_forward(x: &[f32], w: &[f32], b: &[f32], rows: usize, eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0.0; rows * d];
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for i in 0..d {
            out[r * d + i] = ((row[i] as f64 - mean) * inv) as f32 * w[i] + b[i];
        }
    }
    out
}

/// Rotary table (P, hd/2) of (cos, sin), computed as Hugging Face does: inv_freq in f32, angle in f32.
pub fn rope_table(positions: usize, head_dim: usize, theta: f32) -> Vec<[f32; 2]> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut table = Vec::with_capacity(positions * half);
    for pos in 0..positions {
        for f in &inv_freq {
            let angle = (pos as f32 * f) as f64;
            table.push([angle.cos() as f32, angle.sin() as f32]);
        }
    }
    table
}

/// Per-token routing for attention: (position, cache slot, number of keys attended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInfo {
    pub pos: u32,
    pub slot: u32,
    pub n_keys: u32,
}

impl TokenInfo {
    /// The `tok` buffer of the attention kernels: (position, slot, key count, 0) per token.
    pub fn words(tokens: &[TokenInfo]) -> Vec<u32> {
        tokens.iter().flat_map(|i| [i.pos, i.slot, i.n_keys, 0]).collect()
    }

    /// The `slot_tokens` buffer of attention's backward: for each of `slots` cache slots, the range
    /// [first, end) of token indices that holds every token of that slot ([0, 0) for none).
    pub fn slot_ranges(tokens: &[TokenInfo], slots: usize) -> Vec<u32> {
        let mut ranges = vec![[u32::MAX, 0u32]; slots];
        for (t, info) in tokens.iter().enumerate() {
            let Some(r) = ranges.get_mut(info.slot as usize) else {
                panic!("slot_ranges: token {t} is in slot {} of {slots}", info.slot);
            };
            *r = [r[0].min(t as u32), r[1].max(t as u32 + 1)];
        }
        ranges.iter().flat_map(|&[a, b]| if b == 0 { [0, 0] } else { [a, b] }).collect()
    }
}

/// Attention shapes for the reference.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Cache positions per slot.
    pub ctx: usize,
}

/// Splits qkv (T, (H+2Hkv)·hd) into q (T, H, hd) and writes k, v into the caches (S, Hkv, C, hd),
/// with optional per-head RMSNorm (weights (2, hd)) and rotate-half RoPE.
pub fn qkv_split_forward(
    s: AttnShape,
    tok: &[TokenInfo],
    qkv: &[f32],
    rope: Option<&[[f32; 2]]>,
    qk_norm: Option<(&[f32], f32)>,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) -> Vec<f32> {
    let hd = s.head_dim;
    let heads = s.n_head + 2 * s.n_kv_head;
    let mut q = vec![0.0; tok.len() * s.n_head * hd];
    for (t, info) in tok.iter().enumerate() {
        for j in 0..heads {
            let mut v: Vec<f32> = qkv[(t * heads + j) * hd..(t * heads + j + 1) * hd].to_vec();
            let cache_at =
                |h: usize| ((info.slot as usize * s.n_kv_head + h) * s.ctx + info.pos as usize) * hd;
            if j >= s.n_head + s.n_kv_head {
                let at = cache_at(j - s.n_head - s.n_kv_head);
                v_cache[at..at + hd].copy_from_slice(&v);
                continue;
            }
            if let Some((w, eps)) = qk_norm {
                let w = if j < s.n_head { &w[..hd] } else { &w[hd..2 * hd] };
                let ms = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / hd as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                for i in 0..hd {
                    v[i] = (v[i] as f64 * inv) as f32 * w[i];
                }
            }
            if let Some(table) = rope {
                let half = hd / 2;
                let rotated: Vec<f32> = (0..hd)
                    .map(|i| {
                        let [c, sn] = table[info.pos as usize * half + i % half];
                        if i < half { v[i] * c - v[i + half] * sn } else { v[i] * c + v[i - half] * sn }
                    })
                    .collect();
                v = rotated;
            }
            if j < s.n_head {
                q[(t * s.n_head + j) * hd..(t * s.n_head + j + 1) * hd].copy_from_slice(&v);
            } else {
                let at = cache_at(j - s.n_head);
                k_cache[at..at + hd].copy_from_slice(&v);
            }
        }
    }
    q
}

/// Gradients of attention's inputs: dq (T, H, hd) and dk, dv in the caches' layout (S, Hkv, C, hd).
#[derive(Debug, Clone)]
pub struct AttnGrads {
    pub dq: Vec<f32>,
    pub dk_cache: Vec<f32>,
    pub dv_cache: Vec<f32>,
}

/// dqkv (T, (H+2Hkv)·hd) of [`qkv_split_forward`] from the gradients of q and of the cache entries each
/// token wrote: the rotation undone, then the per-head RMSNorm's backward (frozen norm weights).
pub fn qkv_split_backward(
    s: AttnShape,
    tok: &[TokenInfo],
    qkv: &[f32],
    rope: Option<&[[f32; 2]]>,
    qk_norm: Option<(&[f32], f32)>,
    grads: &AttnGrads,
) -> Vec<f32> {
    let hd = s.head_dim;
    let half = hd / 2;
    let heads = s.n_head + 2 * s.n_kv_head;
    let mut dqkv = vec![0.0; qkv.len()];
    for (t, info) in tok.iter().enumerate() {
        let cache_at = |h: usize| ((info.slot as usize * s.n_kv_head + h) * s.ctx + info.pos as usize) * hd;
        for j in 0..heads {
            let src = (t * heads + j) * hd;
            let dy: &[f32] = if j < s.n_head {
                &grads.dq[(t * s.n_head + j) * hd..][..hd]
            } else if j < s.n_head + s.n_kv_head {
                &grads.dk_cache[cache_at(j - s.n_head)..][..hd]
            } else {
                let at = cache_at(j - s.n_head - s.n_kv_head);
                dqkv[src..src + hd].copy_from_slice(&grads.dv_cache[at..at + hd]);
                continue;
            };
            let mut g: Vec<f64> = dy.iter().map(|v| *v as f64).collect();
            if let Some(table) = rope {
                g = (0..hd)
                    .map(|i| {
                        let [c, sn] = table[info.pos as usize * half + i % half];
                        let (c, sn) = (c as f64, sn as f64);
                        if i < half {
                            dy[i] as f64 * c + dy[i + half] as f64 * sn
                        } else {
                            dy[i] as f64 * c - dy[i - half] as f64 * sn
                        }
                    })
                    .collect();
            }
            let x = &qkv[src..src + hd];
            if let Some((w, eps)) = qk_norm {
                let w = if j < s.n_head { &w[..hd] } else { &w[hd..2 * hd] };
                let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / hd as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                let gw: Vec<f64> = (0..hd).map(|i| g[i] * w[i] as f64).collect();
                let dot: f64 = (0..hd).map(|i| gw[i] * x[i] as f64).sum();
                let c = dot * inv.powi(3) / hd as f64;
                g = (0..hd).map(|i| inv * gw[i] - c * x[i] as f64).collect();
            }
            for i in 0..hd {
                dqkv[src + i] = g[i] as f32;
            }
        }
    }
    dqkv
}

/// out (T, H·hd): softmax(q·kᵀ/√hd over keys 0..n_keys) · v, grouped-query heads.
pub fn attention_forward(
    s: AttnShape,
    tok: &[TokenInfo],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
) -> Vec<f32> {
    let hd = s.head_dim;
    let group = s.n_head / s.n_kv_head;
    let mut out = vec![0.0; tok.len() * s.n_head * hd];
    for (t, info) in tok.iter().enumerate() {
        for h in 0..s.n_head {
            let kvh = h / group;
            let base = (info.slot as usize * s.n_kv_head + kvh) * s.ctx;
            let qv = &q[(t * s.n_head + h) * hd..(t * s.n_head + h + 1) * hd];
            let scores: Vec<f64> = (0..info.n_keys as usize)
                .map(|j| {
                    let kv = &k_cache[(base + j) * hd..(base + j + 1) * hd];
                    qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
            for i in 0..hd {
                let acc: f64 = scores
                    .iter()
                    .enumerate()
                    .map(|(j, x)| (x - m).exp() / z * v_cache[(base + j) * hd + i] as f64)
                    .sum();
                out[(t * s.n_head + h) * hd + i] = acc as f32;
            }
        }
    }
    out
}

/// Scores of one (token, head) row, q·k/√hd over its keys, and the row's cache base, in f64.
fn attention_row(
    s: AttnShape,
    info: TokenInfo,
    q: &[f32],
    k_cache: &[f32],
    t: usize,
    h: usize,
) -> (Vec<f64>, usize) {
    let hd = s.head_dim;
    let kvh = h / (s.n_head / s.n_kv_head);
    let base = (info.slot as usize * s.n_kv_head + kvh) * s.ctx;
    let qv = &q[(t * s.n_head + h) * hd..][..hd];
    let scores = (0..info.n_keys as usize)
        .map(|j| {
            let kv = &k_cache[(base + j) * hd..][..hd];
            qv.iter().zip(kv).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (hd as f64).sqrt()
        })
        .collect();
    (scores, base)
}

/// lse (T, H) = log Σⱼ exp(q·kⱼ/√hd): what `attn_softmax_lse_forward` saves for the backward.
pub fn attention_lse(s: AttnShape, tok: &[TokenInfo], q: &[f32], k_cache: &[f32]) -> Vec<f32> {
    let mut lse = Vec::with_capacity(tok.len() * s.n_head);
    for (t, info) in tok.iter().enumerate() {
        for h in 0..s.n_head {
            let (scores, _) = attention_row(s, *info, q, k_cache, t, h);
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            lse.push((m + scores.iter().map(|x| (x - m).exp()).sum::<f64>().ln()) as f32);
        }
    }
    lse
}

/// Gradients of [`attention_forward`] given dout (T, H·hd): dq, and dk, dv summed over every token
/// (and head of the group) that attends to each cache entry; entries no token attends get zero.
pub fn attention_backward(
    s: AttnShape,
    tok: &[TokenInfo],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    dout: &[f32],
) -> AttnGrads {
    let hd = s.head_dim;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut dq = vec![0.0f64; q.len()];
    let mut dk = vec![0.0f64; k_cache.len()];
    let mut dv = vec![0.0f64; v_cache.len()];
    for (t, info) in tok.iter().enumerate() {
        for h in 0..s.n_head {
            let (scores, base) = attention_row(s, *info, q, k_cache, t, h);
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
            let row = (t * s.n_head + h) * hd;
            let probs: Vec<f64> = scores.iter().map(|x| (x - m).exp() / z).collect();
            let dp: Vec<f64> = (0..probs.len())
                .map(|j| (0..hd).map(|i| dout[row + i] as f64 * v_cache[(base + j) * hd + i] as f64).sum())
                .collect();
            let delta: f64 = probs.iter().zip(&dp).map(|(p, d)| p * d).sum();
            for (j, p) in probs.iter().enumerate() {
                let ds = p * (dp[j] - delta) * scale;
                for i in 0..hd {
                    dq[row + i] += ds * k_cache[(base + j) * hd + i] as f64;
                    dk[(base + j) * hd + i] += ds * q[row + i] as f64;
                    dv[(base + j) * hd + i] += p * dout[row + i] as f64;
                }
            }
        }
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    AttnGrads { dq: to_f32(dq), dk_cache: to_f32(dk), dv_cache: to_f32(dv) }
}

/// What `shared_prompt_grad_backward` does to one dK or dV buffer (S, Hkv, ctx, hd):
/// `grad[leader, h, 0 .. len, :] += Σ_f grad[f, h, 0 .. len, :]` (summed in f64), followers unchanged.
pub fn shared_prompt_grad_into_leader(
    grad: &mut [f32],
    s: AttnShape,
    leader: usize,
    followers: &[usize],
    len: usize,
) {
    let hd = s.head_dim;
    let at = |slot: usize, h: usize| (slot * s.n_kv_head + h) * s.ctx * hd;
    for h in 0..s.n_kv_head {
        for i in 0..len * hd {
            let sum: f64 = followers.iter().map(|&f| grad[at(f, h) + i] as f64).sum();
            let x = &mut grad[at(leader, h) + i];
            *x = (*x as f64 + sum) as f32;
        }
    }
}

/// out (T, D) = table[ids[t]] for an f16 table (V, D).
pub fn embed_rows_forward(ids: &[u32], table: &[f16], dim: usize) -> Vec<f32> {
    ids.iter()
        .flat_map(|&id| table[id as usize * dim..(id as usize + 1) * dim].iter().map(|h| h.to_f32()))
        .collect()
}

/// act (T, I) = silu(gu[:, :I]) · gu[:, I:].
pub fn swiglu_forward(gu: &[f32], t: usize, inter: usize) -> Vec<f32> {
    let mut out = vec![0.0; t * inter];
    for r in 0..t {
        for i in 0..inter {
            let g = gu[r * 2 * inter + i] as f64;
            let u = gu[r * 2 * inter + inter + i] as f64;
            out[r * inter + i] = (g / (1.0 + (-g).exp()) * u) as f32;
        }
    }
    out
}

/// act (T, I) = silu(x · gateᵀ) · (x · upᵀ) for w (2I, K) holding the gate rows then the up rows, given
/// as f16: what the matmuls' SwiGLU epilogue computes (`MATMUL_SWIGLU`), each dot product rounded to f32
/// as [`matmul_forward`] rounds it.
pub fn matmul_swiglu_forward(x: &[f32], w: &[f16], t: usize, inter: usize, k: usize) -> Vec<f32> {
    swiglu_forward(&matmul_forward(x, w, None, None, t, 2 * inter, k), t, inter)
}

/// dgu (T, 2I) = (d gate, d up) of act = silu(g) · u: dact · u · σ(g) · (1 + g(1 − σ(g))), dact · silu(g).
pub fn swiglu_backward(gu: &[f32], dact: &[f32], t: usize, inter: usize) -> Vec<f32> {
    let mut dgu = vec![0.0; t * 2 * inter];
    for r in 0..t {
        for i in 0..inter {
            let at = r * 2 * inter + i;
            let (g, u, d) = (gu[at] as f64, gu[at + inter] as f64, dact[r * inter + i] as f64);
            let sg = 1.0 / (1.0 + (-g).exp());
            dgu[at] = (d * u * sg * (1.0 + g * (1.0 - sg))) as f32;
            dgu[at + inter] = (d * g * sg) as f32;
        }
    }
    dgu
}

/// Exact GELU, x · Φ(x), through libm's erf.
pub fn gelu_forward(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| (0.5 * v as f64 * (1.0 + libm::erf(v as f64 / std::f64::consts::SQRT_2))) as f32)
        .collect()
}

/// out[r] = logits[r, target[r]] − logsumexp(logits[r]).
pub fn logprob_forward(logits: &[f32], targets: &[u32], vocab: usize) -> Vec<f32> {
    targets
        .iter()
        .enumerate()
        .map(|(r, &t)| {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|x| (*x as f64 - m).exp()).sum();
            (row[t as usize] as f64 - m - z.ln()) as f32
        })
        .collect()
}

/// Logits of one row h (D) against every row of w (V, D) given as f16, in f64.
fn lm_head_row(h: &[f32], w: &[f16], dim: usize) -> Vec<f64> {
    w.chunks(dim).map(|wv| wv.iter().zip(h).map(|(a, b)| a.to_f64() * *b as f64).sum()).collect()
}

fn log_sum_exp(logits: &[f64]) -> f64 {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln()
}

/// The LM head's cross-entropy per row of h (T, D) against w (V, D) given as f16: (lse, nll) with
/// lse_t = log Σ_v exp(h_t · w_v) and nll_t = lse_t − h_t · w_{y_t}; nll_t = 0 for a target ≥ V (ignored).
pub fn cross_entropy_forward(h: &[f32], w: &[f16], targets: &[u32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let vocab = w.len() / dim;
    let mut lse = Vec::with_capacity(targets.len());
    let mut nll = Vec::with_capacity(targets.len());
    for (t, &y) in targets.iter().enumerate() {
        let logits = lm_head_row(&h[t * dim..(t + 1) * dim], w, dim);
        let z = log_sum_exp(&logits);
        lse.push(z as f32);
        nll.push(if (y as usize) < vocab { (z - logits[y as usize]) as f32 } else { 0.0 });
    }
    (lse, nll)
}

/// dh (T, D) = Σ_v g_t · (softmax(h_t · wᵀ)_v − 1[v = y_t]) · w_v: the gradient of Σ_t g_t · nll_t; zero
/// rows for a target ≥ V.
pub fn cross_entropy_backward(h: &[f32], w: &[f16], targets: &[u32], grad: &[f32], dim: usize) -> Vec<f32> {
    let vocab = w.len() / dim;
    let mut dh = vec![0.0; targets.len() * dim];
    for (t, &y) in targets.iter().enumerate() {
        if y as usize >= vocab {
            continue;
        }
        let logits = lm_head_row(&h[t * dim..(t + 1) * dim], w, dim);
        let z = log_sum_exp(&logits);
        let mut acc = vec![0.0f64; dim];
        for (v, l) in logits.iter().enumerate() {
            let d = (l - z).exp() - (v == y as usize) as u8 as f64;
            for (a, wv) in acc.iter_mut().zip(&w[v * dim..(v + 1) * dim]) {
                *a += d * wv.to_f64();
            }
        }
        for (o, a) in dh[t * dim..(t + 1) * dim].iter_mut().zip(acc) {
            *o = (a * grad[t] as f64) as f32;
        }
    }
    dh
}

/// out (B, D): mean of rows [start, start + len) per span, L2-normalised.
pub fn mean_pool_l2_forward(x: &[f32], spans: &[(u32, u32)], dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(spans.len() * dim);
    for &(start, len) in spans {
        let mean: Vec<f64> = (0..dim)
            .map(|i| {
                (0..len as usize).map(|r| x[(start as usize + r) * dim + i] as f64).sum::<f64>()
                    / len.max(1) as f64
            })
            .collect();
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        out.extend(mean.iter().map(|v| (v / norm) as f32));
    }
    out
}

/// out (T, D) += table[ids[t] − first] for ids in [first, first + V) of an f16 table (V, D); other rows
/// unchanged. Accumulated in f32, as the kernel does.
pub fn embed_rows_add_forward(out: &mut [f32], ids: &[u32], table: &[f16], first: usize, dim: usize) {
    let rows = table.len() / dim;
    for (t, &id) in ids.iter().enumerate() {
        let Some(row) = (id as usize).checked_sub(first).filter(|&r| r < rows) else { continue };
        for i in 0..dim {
            out[t * dim + i] += table[row * dim + i].to_f32();
        }
    }
}

/// LoRA forward of one projection: y[t, n_off + n] += scale · Σ_j B[n, j] · Σ_i A[j, i] · x[t, i], for
/// x (T, K), A (R, K), B (N, R) and y (T, ldy); returns u = x · Aᵀ (T, R) as the kernel keeps it.
#[allow(clippy::too_many_arguments)]
pub fn lora_forward(
    y: &mut [f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    scale: f32,
    (t, k, r, n): (usize, usize, usize, usize),
    ldy: usize,
    n_off: usize,
) -> Vec<f32> {
    let mut u = vec![0.0f64; t * r];
    for row in 0..t {
        for j in 0..r {
            u[row * r + j] = (0..k).map(|i| x[row * k + i] as f64 * a[j * k + i] as f64).sum();
        }
        for c in 0..n {
            let acc: f64 = (0..r).map(|j| u[row * r + j] * b[c * r + j] as f64).sum();
            let at = row * ldy + n_off + c;
            y[at] = (y[at] as f64 + scale as f64 * acc) as f32;
        }
    }
    u.into_iter().map(|v| v as f32).collect()
}

/// Gradients of one LoRA projection (see `lora_forward`), given dy (T, ldy) of which columns
/// n_off .. n_off + N are the projection's and u = x · Aᵀ from the forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraGrads {
    /// (T, R) = scale · dy[:, slice] · B.
    pub du: Vec<f32>,
    /// (R, K) = duᵀ · x.
    pub da: Vec<f32>,
    /// (N, R) = scale · dy[:, slice]ᵀ · u.
    pub db: Vec<f32>,
    /// (T, K) = du · A (the adapter's share of dx).
    pub dx: Vec<f32>,
}

/// Backward of `lora_forward`, in f64 from the f32 inputs.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    dy: &[f32],
    x: &[f32],
    a: &[f32],
    b: &[f32],
    u: &[f32],
    scale: f32,
    (t, k, r, n): (usize, usize, usize, usize),
    ldy: usize,
    n_off: usize,
) -> LoraGrads {
    let s = scale as f64;
    let g = |row: usize, c: usize| dy[row * ldy + n_off + c] as f64;
    let du: Vec<f64> =
        (0..t * r).map(|i| s * (0..n).map(|c| g(i / r, c) * b[c * r + i % r] as f64).sum::<f64>()).collect();
    let da = (0..r * k)
        .map(|i| (0..t).map(|row| du[row * r + i / k] * x[row * k + i % k] as f64).sum::<f64>() as f32)
        .collect();
    let db = (0..n * r)
        .map(|i| (s * (0..t).map(|row| g(row, i / r) * u[row * r + i % r] as f64).sum::<f64>()) as f32)
        .collect();
    let dx = (0..t * k)
        .map(|i| (0..r).map(|j| du[(i / k) * r + j] * a[j * k + i % k] as f64).sum::<f64>() as f32)
        .collect();
    LoraGrads { du: du.into_iter().map(|v| v as f32).collect(), da, db, dx }
}

/// The PCG hash of Jarzynski & Olano, "Hash Functions for GPU Rendering" (JCGT 2020), in wrapping u32
/// arithmetic: state = v · 747796405 + 2891336453; word = ((state >> ((state >> 28) + 4)) ^ state) ·
/// 277803737; (word >> 22) ^ word.
fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Whether LoRA's input dropout with probability `p` and mask `seed` keeps element `i`: with
/// h = pcg(pcg(pcg(i) ^ seed_lo) ^ seed_hi) over the seed's low and high 32 bits, keep when
/// h >> 8 (24 bits) ≥ u32(p · 2²⁴). p = 0 keeps every element.
pub fn dropout_keep(seed: u64, i: u32, p: f32) -> bool {
    let h = pcg_hash(pcg_hash(pcg_hash(i) ^ seed as u32) ^ (seed >> 32) as u32);
    (h >> 8) >= (p * 16_777_216.0) as u32
}

/// out[i] = x[i] · s where [`dropout_keep`] keeps element i, else 0, with s = 1 / (1 − p) rounded to f32
/// (torch's scaling; p in [0, 1)).
pub fn dropout_forward(x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    let s = 1.0 / (1.0 - p);
    (0..x.len()).map(|i| if dropout_keep(seed, i as u32, p) { x[i] * s } else { 0.0 }).collect()
}

/// The gradient of [`dropout_forward`] with the same mask: dy[i] · s where element i was kept, else 0
/// (the kernel adds this into dx).
pub fn dropout_backward(dy: &[f32], p: f32, seed: u64) -> Vec<f32> {
    dropout_forward(dy, p, seed)
}

/// Global gradient norm and clip coefficient as `torch.nn.utils.clip_grad_norm_` on the gradients
/// scaled by `grad_scale`: norm = grad_scale · ‖grads‖₂ (accumulated in f64),
/// coef = min(max_norm / (norm + 1e-6), 1) in f32, or 1 without `max_norm`. Returns (norm, coef).
pub fn clip_grad_norm(grads: &[&[f32]], grad_scale: f32, max_norm: Option<f32>) -> (f32, f32) {
    let sum: f64 = grads.iter().flat_map(|g| g.iter()).map(|&x| (x as f64) * (x as f64)).sum();
    let norm = (sum.sqrt() * grad_scale as f64) as f32;
    let coef = max_norm.map_or(1.0, |m| (m / (norm + 1e-6)).min(1.0));
    (norm, coef)
}

/// One AdamW update in place, the f32 operations of torch's `_single_tensor_adam` (decoupled weight
/// decay) in torch's order: g = (grad · grad_scale) · coef; p ·= 1 − lr·wd; m = lerp(m, g, 1 − β1) as
/// one fused multiply-add (torch's vectorised CPU lerp); v = v·β2 + ((1 − β2)·g)·g;
/// p += (−lr/bc1 · m) / (sqrt(v)/sqrt(bc2) + eps).
pub fn adamw_step(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    coef: f32,
    s: &crate::gpu::kernels_optim::AdamwScalars,
) {
    for i in 0..param.len() {
        let g = (grad[i] * s.grad_scale) * coef;
        let p = param[i] * s.decay;
        let m0 = exp_avg[i];
        let m = if s.lerp_weight < 0.5 {
            s.lerp_weight.mul_add(g - m0, m0)
        } else {
            (s.lerp_weight - 1.0).mul_add(g - m0, g)
        };
        let v = exp_avg_sq[i] * s.beta2 + (s.one_minus_beta2 * g) * g;
        let denom = v.sqrt() / s.bc2_sqrt + s.eps;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p + (s.neg_step_size * m) / denom;
    }
}
