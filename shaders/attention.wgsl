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
// attn_fused_forward: the three above in one launch (inference: no lse saved), one workgroup of 64 per
//   (head, token): lane l scores keys l, l + 64, … into s (scratch, (T, H, L)), a workgroup max, the
//   exponentials in place and their sum, then out = Σ_j e_j · v_j / Σ_j e_j with lane l summing feature
//   quad l % (hd/4) over keys l / (hd/4), + 64 / (hd/4), … and a workgroup sum of the partial vectors.
//   hd % 4 == 0 and hd ≤ 256 (the host uses the three kernels otherwise). Loop iterations per invocation
//   (lavapipe stops one after about 65536 in all), n keys: ⌈n/64⌉·(hd/4 + 2) + n·hd/256 + 16, at most
//   33040 at the longest context (16384) with hd = 256. Grid: x = head, y = token.
// Training: the backward entry points (and the softmax variant saving lse) follow the forward ones below;
// nothing here has a parameter gradient (the q/k norm weights are frozen).

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

@group(0) @binding(2) var<storage, read> q4_f: array<vec4<f32>>;            // fused: (T, H, hd)
@group(0) @binding(3) var<storage, read> k4_f: array<vec4<f32>>;            // fused: k cache (S, Hkv, C, hd)
@group(0) @binding(4) var<storage, read_write> s_f: array<f32>;             // fused: (T, H, L) scratch
@group(0) @binding(5) var<storage, read> v4_f: array<vec4<f32>>;            // fused: v cache (S, Hkv, C, hd)
@group(0) @binding(6) var<storage, read_write> o4_f: array<vec4<f32>>;      // fused: (T, H·hd)

const FUSED_LANES: u32 = 64u;
var<workgroup> red_f: array<f32, 64>;
var<workgroup> acc_f: array<vec4<f32>, 64>;

// red_f[0] = max (or sum) of red_f[0..64]; every lane reaches every barrier.
fn reduce_red_f(lane: u32, take_max: bool) {
    workgroupBarrier();
    for (var stride = FUSED_LANES / 2u; stride > 0u; stride /= 2u) {
        if (lane < stride) {
            if (take_max) {
                red_f[lane] = max(red_f[lane], red_f[lane + stride]);
            } else {
                red_f[lane] += red_f[lane + stride];
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn attn_fused_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let h = wid.x;
    let t = wid.y;
    // Uniform over the workgroup: no lane leaves while others wait at a barrier.
    if (h >= p.n_head || t >= p.t) { return; }
    let info = tok[t];
    let n = info.z;
    let hd4 = p.head_dim / 4u;
    let kvh = h / (p.n_head / p.n_kv_head);
    let base = (info.y * p.n_kv_head + kvh) * p.ctx; // cache row of key 0
    let r = t * p.n_head + h;
    let row = r * p.span;
    let scale = inverseSqrt(f32(p.head_dim));

    var m = -3.0e38;
    for (var j = lane; j < n; j += FUSED_LANES) {
        var acc = 0.0;
        for (var i = 0u; i < hd4; i++) { acc += dot(q4_f[r * hd4 + i], k4_f[(base + j) * hd4 + i]); }
        let sc = acc * scale;
        s_f[row + j] = sc;
        m = max(m, sc);
    }
    red_f[lane] = m;
    reduce_red_f(lane, true);
    let mx = red_f[0];
    workgroupBarrier(); // every lane has read the max before the slots are reused

    var sum = 0.0;
    for (var j = lane; j < n; j += FUSED_LANES) {
        let e = exp(s_f[row + j] - mx);
        s_f[row + j] = e;
        sum += e;
    }
    red_f[lane] = sum;
    storageBarrier(); // the exponentials are read by other lanes below
    reduce_red_f(lane, false);
    let total = red_f[0];

    let groups = FUSED_LANES / hd4;
    let f = lane % hd4;
    let g = lane / hd4;
    var acc = vec4<f32>(0.0);
    if (g < groups) {
        for (var j = g; j < n; j += groups) { acc += s_f[row + j] * v4_f[(base + j) * hd4 + f]; }
    }
    acc_f[lane] = acc;
    workgroupBarrier();
    if (lane < hd4) {
        var out = vec4<f32>(0.0);
        for (var gg = 0u; gg < groups; gg++) { out += acc_f[gg * hd4 + lane]; }
        var inv = 0.0;
        if (total > 0.0) { inv = 1.0 / total; }
        o4_f[r * hd4 + lane] = out * inv;
    }
}

// Backward (training). Gradients of k and v have the caches' layout (S, Hkv, C, hd): an entry's gradient
// sums over every token of this pass, in its slot, that attends to it.
// qkv_split_backward: dqkv (T, (H + 2·Hkv)·hd) from dq (T, H, hd), dk, dv (S, Hkv, C, hd) at each token's
//   [slot, head, position]: the rotation undone (da = dra·cos + drb·sin, db = drb·cos − dra·sin), then
//   the per-head RMSNorm's backward with 1/rms recomputed from the saved qkv (the norm weights are
//   frozen: no gradient for them). Same grid (x = head folded into z, y = token) and flags as
//   qkv_split_forward.
// attn_softmax_lse_forward: attn_softmax_forward that also saves lse (T, H) = log Σⱼ exp(sⱼ), so the
//   backward recomputes probabilities instead of keeping (T, H, L) of them per layer. Same grid as
//   attn_softmax_forward: one invocation per row, folded into y past the per-dimension limit.
// attn_delta_backward: delta (T, H) = Σᵢ dout·out per row.
// attn_dscores_backward: pds (T, H, L) of (p, ds), p = exp(q·k/√hd − lse), ds = p·(dout·v − delta)/√hd.
// attn_dq_backward: dq (T, H, hd) = Σⱼ ds·k over the row's keys.
// attn_dkv_backward: dk, dv (S, Hkv, C, hd) = (or += with pb.flags & DKV_ACCUMULATE) Σ over the tokens t
//   of the entry's slot with n_keys(t) > position, and the heads h of its group, of ds·q and p·dout;
//   every entry is written (zero or unchanged where no token attends). Accumulating lets one
//   sequence's tokens run in several passes over the same caches, and their gradients add up. Walks the tokens slot_tokens[slot] = [first, end) (any range that
//   holds the slot's tokens is correct; the tightest is fastest) and the group's heads: lavapipe stops an
//   invocation after about 65536 loop iterations in all, so the host requires T·(1 + H/Hkv) ≤ 60000; hd % 4 == 0.
// shared_prompt_grad_backward: g[leader, h, 0..len, :] += Σ_f g[followers[f], h, 0..len, :] for one dK or dV
//   buffer (S, Hkv, C, hd) of a prompt computed once in the leader's slot and copied into the followers';
//   the followers' entries are read, never changed. Its own parameters `sp` and a 1-D grid over
//   Hkv·len·hd, folded as the others; one loop iteration per follower (the host allows at most 1024).
// The last four use the parameters `pb` (the forward's with the number of cache slots in place of the
// forward's flags, and the backward's own flags in place of eps)
// and a 1-D grid over their output elements, folded into y past the per-dimension limit (index = x + y · num_workgroups.x · WG).
@group(0) @binding(5) var<storage, read> dq_in: array<f32>;              // split backward: (T, H, hd)
@group(0) @binding(6) var<storage, read> dk_in: array<f32>;              // split backward: (S, Hkv, C, hd)
@group(0) @binding(7) var<storage, read> dv_in: array<f32>;              // split backward: (S, Hkv, C, hd)
@group(0) @binding(8) var<storage, read_write> dqkv: array<f32>;         // split backward: (T, (H+2Hkv) hd)

@compute @workgroup_size(WG)
fn qkv_split_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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
    let is_q = j < p.n_head;
    var at: u32;
    if (is_q) {
        at = (t * p.n_head + j) * hd;
    } else if (j < p.n_head + p.n_kv_head) {
        at = ((slot * p.n_kv_head + (j - p.n_head)) * p.ctx + pos) * hd;
    } else {
        at = ((slot * p.n_kv_head + (j - p.n_head - p.n_kv_head)) * p.ctx + pos) * hd;
        for (var i = 0u; i < hd; i++) { dqkv[src + i] = dv_in[at + i]; }
        return;
    }
    let normed = (p.flags & FLAG_QK_NORM) != 0u;
    var norm_base = 0u;
    if (!is_q) { norm_base = hd; }
    // Pass 1: the gradient before the rotation, times the norm weight (the gradient of x·scale).
    var dot = 0.0;
    for (var i = 0u; i < half_d; i++) {
        var dra: f32;
        var drb: f32;
        if (is_q) {
            dra = dq_in[at + i];
            drb = dq_in[at + i + half_d];
        } else {
            dra = dk_in[at + i];
            drb = dk_in[at + i + half_d];
        }
        var da = dra;
        var db = drb;
        if ((p.flags & FLAG_ROPE) != 0u) {
            let cs = rope[pos * half_d + i];
            da = dra * cs.x + drb * cs.y;
            db = drb * cs.x - dra * cs.y;
        }
        if (normed) {
            da *= qk_norm[norm_base + i];
            db *= qk_norm[norm_base + i + half_d];
            dot += da * qkv[src + i] + db * qkv[src + i + half_d];
        }
        dqkv[src + i] = da;
        dqkv[src + i + half_d] = db;
    }
    if (!normed) { return; }
    // Pass 2: RMSNorm's backward, dx = s·g − x·s³/hd·Σ g·x with s = 1/rms.
    var ss = 0.0;
    for (var i = 0u; i < hd; i++) { ss += qkv[src + i] * qkv[src + i]; }
    let s = inverseSqrt(ss / f32(hd) + p.eps);
    let c = dot * s * s * s / f32(hd);
    for (var i = 0u; i < hd; i++) { dqkv[src + i] = s * dqkv[src + i] - c * qkv[src + i]; }
}

@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>;      // softmax lse: (T, H)

@compute @workgroup_size(WG)
fn attn_softmax_lse_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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
    lse_out[r] = m + log(sum);
}

struct BackParams {
    t: u32, n_head: u32, n_kv_head: u32, head_dim: u32,
    ctx: u32, span: u32, slots: u32, flags: u32,
}
@group(0) @binding(0) var<uniform> pb: BackParams;

const DKV_ACCUMULATE: u32 = 1u;

@group(0) @binding(1) var<storage, read> dout_d: array<f32>;             // delta: (T, H·hd)
@group(0) @binding(2) var<storage, read> out_d: array<f32>;              // delta: (T, H·hd)
@group(0) @binding(3) var<storage, read_write> delta_out: array<f32>;    // delta: (T, H)

@group(0) @binding(4) var<storage, read> v_ds: array<f32>;               // dscores: v cache
@group(0) @binding(5) var<storage, read> dout_ds: array<f32>;            // dscores: (T, H·hd)
@group(0) @binding(6) var<storage, read> lse_in: array<f32>;             // dscores: (T, H)
@group(0) @binding(7) var<storage, read> delta_in: array<f32>;           // dscores: (T, H)
@group(0) @binding(8) var<storage, read_write> pds: array<vec2<f32>>;    // dscores: (T, H, L) (p, ds)

@group(0) @binding(2) var<storage, read> k4_dq: array<vec4<f32>>;        // dq: k cache
@group(0) @binding(3) var<storage, read> pds_dq: array<vec2<f32>>;       // dq: (T, H, L)
@group(0) @binding(4) var<storage, read_write> dq4_out: array<vec4<f32>>; // dq: (T, H, hd)

@group(0) @binding(2) var<storage, read> q4_kv: array<vec4<f32>>;        // dkv: (T, H, hd)
@group(0) @binding(3) var<storage, read> dout4_kv: array<vec4<f32>>;     // dkv: (T, H·hd)
@group(0) @binding(4) var<storage, read> pds_kv: array<vec2<f32>>;       // dkv: (T, H, L)
@group(0) @binding(5) var<storage, read_write> dk4_out: array<vec4<f32>>; // dkv: (S, Hkv, C, hd)
@group(0) @binding(6) var<storage, read_write> dv4_out: array<vec4<f32>>; // dkv: (S, Hkv, C, hd)
@group(0) @binding(7) var<storage, read> slot_tokens: array<vec2<u32>>;  // dkv: (S) token range per slot

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * WG; }

@compute @workgroup_size(WG)
fn attn_delta_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_id(gid, nwg);
    if (r >= pb.t * pb.n_head) { return; }
    let base = r * pb.head_dim;
    var acc = 0.0;
    for (var i = 0u; i < pb.head_dim; i++) { acc += dout_d[base + i] * out_d[base + i]; }
    delta_out[r] = acc;
}

@compute @workgroup_size(WG)
fn attn_dscores_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_id(gid, nwg);
    if (e >= pb.t * pb.n_head * pb.span) { return; }
    let j = e % pb.span;
    let r = e / pb.span;
    let h = r % pb.n_head;
    let info = tok[r / pb.n_head];
    if (j >= info.z) {
        pds[e] = vec2<f32>(0.0);
        return;
    }
    let hd = pb.head_dim;
    let kvh = h / (pb.n_head / pb.n_kv_head);
    let kb = ((info.y * pb.n_kv_head + kvh) * pb.ctx + j) * hd;
    let qb = r * hd;
    var sdot = 0.0;
    var dp = 0.0;
    for (var i = 0u; i < hd; i++) {
        sdot += q[qb + i] * k_in[kb + i];
        dp += dout_ds[qb + i] * v_ds[kb + i];
    }
    let scale = inverseSqrt(f32(hd));
    let pr = exp(sdot * scale - lse_in[r]);
    pds[e] = vec2<f32>(pr, pr * (dp - delta_in[r]) * scale);
}

// Four features per invocation (hd % 4 == 0): each loaded ds serves four.
@compute @workgroup_size(WG)
fn attn_dq_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e4 = flat_id(gid, nwg);
    let hd4 = pb.head_dim / 4u;
    if (e4 >= pb.t * pb.n_head * hd4) { return; }
    let i4 = e4 % hd4;
    let r = e4 / hd4;
    let h = r % pb.n_head;
    let info = tok[r / pb.n_head];
    let kvh = h / (pb.n_head / pb.n_kv_head);
    let kb = ((info.y * pb.n_kv_head + kvh) * pb.ctx) * hd4 + i4;
    let row = r * pb.span;
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < info.z; j++) { acc += pds_dq[row + j].y * k4_dq[kb + j * hd4]; }
    dq4_out[e4] = acc;
}

// Four features of one cache entry per invocation (hd % 4 == 0): each loaded (p, ds) serves four.
@compute @workgroup_size(WG)
fn attn_dkv_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e4 = flat_id(gid, nwg);
    let hd4 = pb.head_dim / 4u;
    if (e4 >= pb.slots * pb.n_kv_head * pb.ctx * hd4) { return; }
    let i4 = e4 % hd4;
    let pos = (e4 / hd4) % pb.ctx;
    let kvh = (e4 / (hd4 * pb.ctx)) % pb.n_kv_head;
    let slot = e4 / (hd4 * pb.ctx * pb.n_kv_head);
    let group = pb.n_head / pb.n_kv_head;
    var dk = vec4<f32>(0.0);
    var dv = vec4<f32>(0.0);
    let range = slot_tokens[slot];
    for (var t = range.x; t < min(range.y, pb.t); t++) {
        let info = tok[t];
        if (info.y != slot || info.z <= pos) { continue; }
        for (var g = 0u; g < group; g++) {
            let r = t * pb.n_head + kvh * group + g;
            let w = pds_kv[r * pb.span + pos];
            dk += w.y * q4_kv[r * hd4 + i4];
            dv += w.x * dout4_kv[r * hd4 + i4];
        }
    }
    if ((pb.flags & DKV_ACCUMULATE) != 0u) {
        dk += dk4_out[e4];
        dv += dv4_out[e4];
    }
    dk4_out[e4] = dk;
    dv4_out[e4] = dv;
}

struct SharedPromptParams {
    n_kv_head: u32, ctx: u32, head_dim: u32, len: u32,
    leader: u32, n_followers: u32, pad0: u32, pad1: u32,
}
@group(0) @binding(0) var<uniform> sp: SharedPromptParams;
@group(0) @binding(1) var<storage, read> followers: array<u32>;          // shared prompt: follower slots
@group(0) @binding(2) var<storage, read_write> grad_kv: array<f32>;      // shared prompt: dK, dV or K, V (S, Hkv, C, hd)

// Entry e of a shared prompt's Hkv · len · hd values: its offset within a slot of the (S, Hkv, C, hd) buffer.
fn prompt_entry(e: u32) -> u32 {
    let run = sp.len * sp.head_dim;
    return (e / run) * sp.ctx * sp.head_dim + e % run;
}

@compute @workgroup_size(WG)
fn shared_prompt_grad_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_id(gid, nwg);
    if (e >= sp.n_kv_head * sp.len * sp.head_dim) { return; }
    let head_base = prompt_entry(e);
    let slot_stride = sp.n_kv_head * sp.ctx * sp.head_dim;
    var acc = 0.0;
    for (var f = 0u; f < sp.n_followers; f++) {
        acc += grad_kv[followers[f] * slot_stride + head_base];
    }
    let at = sp.leader * slot_stride + head_base;
    grad_kv[at] = grad_kv[at] + acc;
}

// shared_prompt_copy_forward: c[followers[f], h, 0..len, :] = c[leader, h, 0..len, :] for one K or V
// cache: the forward of a training pass whose shared prompt rows ran once in the leader's slot, so the
// followers' rows attend to the prompt's keys and values in their own slots (the inverse of
// shared_prompt_grad_backward, with its parameters and grid).
@compute @workgroup_size(WG)
fn shared_prompt_copy_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_id(gid, nwg);
    if (e >= sp.n_kv_head * sp.len * sp.head_dim) { return; }
    let head_base = prompt_entry(e);
    let slot_stride = sp.n_kv_head * sp.ctx * sp.head_dim;
    let v = grad_kv[sp.leader * slot_stride + head_base];
    for (var f = 0u; f < sp.n_followers; f++) {
        grad_kv[followers[f] * slot_stride + head_base] = v;
    }
}
