// Attention over a KV cache, for a flat batch of T tokens that may belong to different sequences.
// Each token carries tok[t] = (position, cache slot, number of keys it attends to, unused): causal
// decoding attends to keys 0..=position of its slot; a bidirectional encoder to its whole sequence.
//
// qkv_split_forward: per (token, head) of the fused projection qkv (T, (H + 2·Hkv)·hd):
//   optional per-head RMSNorm (Qwen3 q_norm / k_norm, weights qk_norm (2, hd)), optional rotary embedding
//   (rotate-half layout as Hugging Face; cos/sin table rope (P, hd/2, 2)), then
//   q → q_out (T, H, hd), k → k_cache (S, Hkv, C, hd) and v → v_cache at [slot, head, position].
// attn_scores_forward: s (T, H, L) = q·k / sqrt(hd) for keys j < n_keys(t) (−inf after).
// attn_softmax_forward: in place over each row of s, the first n_keys(t) entries.
// attn_values_forward: out (T, H·hd) = Σ_j s[t, h, j] · v[slot, h / (H / Hkv), j].
// No parameter gradients here; the LoRA issue adds the backward entry points.

struct Params {
    t: u32, n_head: u32, n_kv_head: u32, head_dim: u32,
    ctx: u32, span: u32, flags: u32, eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tok: array<vec4<u32>>;          // (T) position, slot, n_keys
@group(0) @binding(2) var<storage, read> qkv: array<f32>;                // (T, (H + 2 Hkv) hd)
@group(0) @binding(3) var<storage, read> rope: array<vec2<f32>>;         // (P, hd/2) cos, sin
@group(0) @binding(4) var<storage, read> qk_norm: array<f32>;            // (2, hd) or a dummy
@group(0) @binding(5) var<storage, read_write> q_out: array<f32>;        // (T, H, hd)
@group(0) @binding(6) var<storage, read_write> k_cache: array<f32>;      // (S, Hkv, C, hd)
@group(0) @binding(7) var<storage, read_write> v_cache: array<f32>;      // (S, Hkv, C, hd)

override WG: u32 = 64u;

const FLAG_QK_NORM: u32 = 1u;
const FLAG_ROPE: u32 = 2u;

// Grid: x = head j (x + z · num_workgroups.x · WG past the per-dimension limit), y = token.
@compute @workgroup_size(WG)
fn qkv_split_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let heads = p.n_head + 2u * p.n_kv_head;
    let j = gid.x + gid.z * nwg.x * WG;
    let t = gid.y;
    if (j >= heads || t >= p.t) { return; }
    let hd = p.head_dim;
    let half_d = hd / 2u;
    let info = tok[t];
    let pos = info.x;
    let slot = info.y;
    let src = t * heads * hd + j * hd;
    let is_v = j >= p.n_head + p.n_kv_head;

    var dst: u32;
    if (j < p.n_head) {
        dst = (t * p.n_head + j) * hd;
    } else if (!is_v) {
        dst = ((slot * p.n_kv_head + (j - p.n_head)) * p.ctx + pos) * hd;
    } else {
        dst = ((slot * p.n_kv_head + (j - p.n_head - p.n_kv_head)) * p.ctx + pos) * hd;
    }
    if (is_v) {
        for (var i = 0u; i < hd; i++) { v_cache[dst + i] = qkv[src + i]; }
        return;
    }

    var scale = 1.0;
    var norm_base = 0u;
    let normed = (p.flags & FLAG_QK_NORM) != 0u;
    if (normed) {
        var ss = 0.0;
        for (var i = 0u; i < hd; i++) { ss += qkv[src + i] * qkv[src + i]; }
        scale = inverseSqrt(ss / f32(hd) + p.eps);
        if (j >= p.n_head) { norm_base = hd; }
    }
    for (var i = 0u; i < half_d; i++) {
        var a = qkv[src + i] * scale;
        var b = qkv[src + i + half_d] * scale;
        if (normed) {
            a *= qk_norm[norm_base + i];
            b *= qk_norm[norm_base + i + half_d];
        }
        var ra = a;
        var rb = b;
        if ((p.flags & FLAG_ROPE) != 0u) {
            let cs = rope[pos * half_d + i];
            ra = a * cs.x - b * cs.y;
            rb = b * cs.x + a * cs.y;
        }
        if (j < p.n_head) {
            q_out[dst + i] = ra;
            q_out[dst + i + half_d] = rb;
        } else {
            k_cache[dst + i] = ra;
            k_cache[dst + i + half_d] = rb;
        }
    }
}

// Bindings of the score, softmax and value passes: each entry point uses bindings 1.. contiguously.
@group(0) @binding(2) var<storage, read> q: array<f32>;                  // scores: (T, H, hd)
@group(0) @binding(3) var<storage, read> k_in: array<f32>;               // scores: k cache (S, Hkv, C, hd)
@group(0) @binding(4) var<storage, read_write> s: array<f32>;            // scores: (T, H, L)
@group(0) @binding(2) var<storage, read_write> s_rw: array<f32>;         // softmax: (T, H, L) in place
@group(0) @binding(2) var<storage, read> v_in: array<f32>;               // values: v cache (S, Hkv, C, hd)
@group(0) @binding(3) var<storage, read> probs: array<f32>;              // values: (T, H, L)
@group(0) @binding(4) var<storage, read_write> o: array<f32>;            // values: (T, H·hd)

// Grid: x = key index j (L = p.span keys per row), y = head, z = token.
@compute @workgroup_size(WG)
fn attn_scores_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let h = gid.y;
    let t = gid.z;
    if (j >= p.span || h >= p.n_head || t >= p.t) { return; }
    let info = tok[t];
    let row = (t * p.n_head + h) * p.span;
    if (j >= info.z) {
        s[row + j] = -3.0e38;
        return;
    }
    let hd = p.head_dim;
    let kvh = h / (p.n_head / p.n_kv_head);
    let kb = ((info.y * p.n_kv_head + kvh) * p.ctx + j) * hd;
    let qb = (t * p.n_head + h) * hd;
    var acc = 0.0;
    for (var i = 0u; i < hd; i++) { acc += q[qb + i] * k_in[kb + i]; }
    s[row + j] = acc * inverseSqrt(f32(hd));
}

// One invocation per (token, head) row: r = x + y · num_workgroups.x · WG (y past the per-dimension limit).
@compute @workgroup_size(WG)
fn attn_softmax_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * WG;
    if (r >= p.t * p.n_head) { return; }
    let n = tok[r / p.n_head].z;
    let row = r * p.span;
    var m = -3.0e38;
    for (var j = 0u; j < n; j++) { m = max(m, s_rw[row + j]); }
    var sum = 0.0;
    for (var j = 0u; j < n; j++) {
        let e = exp(s_rw[row + j] - m);
        s_rw[row + j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var j = 0u; j < n; j++) { s_rw[row + j] *= inv; }
    for (var j = n; j < p.span; j++) { s_rw[row + j] = 0.0; }
}

// Grid: x = feature i of the head, y = head, z = token. Reads the probabilities written into `s`.
@compute @workgroup_size(WG)
fn attn_values_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let h = gid.y;
    let t = gid.z;
    let hd = p.head_dim;
    if (i >= hd || h >= p.n_head || t >= p.t) { return; }
    let info = tok[t];
    let kvh = h / (p.n_head / p.n_kv_head);
    let vb = ((info.y * p.n_kv_head + kvh) * p.ctx) * hd + i;
    let row = (t * p.n_head + h) * p.span;
    var acc = 0.0;
    for (var j = 0u; j < info.z; j++) { acc += probs[row + j] * v_in[vb + j * hd]; }
    o[(t * p.n_head + h) * hd + i] = acc;
}
