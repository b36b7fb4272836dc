// Inference attention on the CPU family with subgroups of eight (lavapipe): attention.wgsl's
// attn_fused_forward (scores, softmax and values of one (head, token)) without workgroup memory,
// barriers or a scores scratch, which llvmpipe runs slowly (a workgroup of 64 lanes per (head, token)
// and seven barriers: ~1.2 ms a launch for a batch of eight decoded tokens of SmolLM2 on 2 cores).
//
// attn_subgroup_forward: one subgroup of eight lanes per (head, token); lane l owns the feature quads
// l·QUADS .. (l + 1)·QUADS of the head (hd = 32·QUADS), holds its part of q (pre-scaled by 1/√hd) and of
// the output in registers, and walks the token's keys 0 .. n_keys in order: the score is the subgroupAdd
// of the lanes' partial dot products, and an online softmax keeps the running max m and sum l, rescaling
// the accumulated values by exp(old m − new m) whenever m grows (flash attention's recurrence):
// out = Σ_j exp(s_j − m) · v_j / Σ_j exp(s_j − m). Every lane reads whole vec4s of its own contiguous
// features (per-lane contiguous loads; one key costs each lane 2·QUADS vec4 loads). n_keys = 0 writes
// zeros. Loop iterations per invocation (lavapipe stops one after about 65536 in all): the key walk, n,
// plus the QUADS loops if the compiler does not unroll them, n·(1 + 2·QUADS) + 2·QUADS at most; the host
// keeps that within 60000 and takes attn_fused_forward otherwise (training: attention.wgsl's three
// kernels). Grid: x = head, y = token.
// Same Params and tok layout as attention.wgsl. Only built on adapters with Features::SUBGROUP; the host
// picks it only where the subgroup size is exactly eight (the lanes are subgroup_invocation_id).

struct Params {
    t: u32, n_head: u32, n_kv_head: u32, head_dim: u32,
    ctx: u32, span: u32, flags: u32, eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tok: array<vec4<u32>>;   // (T) position, slot, n_keys
@group(0) @binding(2) var<storage, read> q4: array<vec4<f32>>;    // (T, H, hd)
@group(0) @binding(3) var<storage, read> k4: array<vec4<f32>>;    // k cache (S, Hkv, C, hd)
@group(0) @binding(4) var<storage, read> v4: array<vec4<f32>>;    // v cache (S, Hkv, C, hd)
@group(0) @binding(5) var<storage, read_write> o4: array<vec4<f32>>; // (T, H·hd)

// Feature quads per lane: hd / 32, 1 ..= 8 (a pipeline constant, so the loops over it unroll).
override QUADS: u32 = 2u;
const LANES: u32 = 8u;

// Where lane `lane` of (head h, token t) reads and writes, for a pass of `heads` = (H, Hkv), head size
// `hd` and `ctx` cache positions: its quads of the row's q / output / dout (`row_at`), of key 0 in the
// token's slot and kv head (`key_at`; key j at key_at + j · hd4), the key count and the score scale.
struct LaneWalk { row_at: u32, key_at: u32, hd4: u32, n: u32, scale: f32 }

fn lane_walk(h: u32, t: u32, lane: u32, heads: vec2<u32>, hd: u32, ctx: u32) -> LaneWalk {
    let info = tok[t];
    let hd4 = hd / 4u;
    let kvh = h / (heads.x / heads.y);
    let f0 = lane * QUADS;
    let key_row = (info.y * heads.y + kvh) * ctx; // cache row of key 0
    return LaneWalk((t * heads.x + h) * hd4 + f0, key_row * hd4 + f0, hd4, info.z, inverseSqrt(f32(hd)));
}

// Attends (head h, token t) and writes its output; returns the online softmax's (max, sum) for lse.
fn attend(h: u32, t: u32, lane: u32) -> vec2<f32> {
    let w = lane_walk(h, t, lane, vec2<u32>(p.n_head, p.n_kv_head), p.head_dim, p.ctx);
    var q: array<vec4<f32>, 8>;
    var acc: array<vec4<f32>, 8>;
    for (var f = 0u; f < QUADS; f++) { q[f] = q4[w.row_at + f] * w.scale; }
    var m = -3.0e38;
    var l = 0.0;
    for (var j = 0u; j < w.n; j++) {
        let row = w.key_at + j * w.hd4;
        var part = 0.0;
        for (var f = 0u; f < QUADS; f++) { part += dot(q[f], k4[row + f]); }
        let s = subgroupAdd(part);
        let mn = max(m, s);
        let c = exp(m - mn);
        let e = exp(s - mn);
        l = l * c + e;
        for (var f = 0u; f < QUADS; f++) { acc[f] = acc[f] * c + e * v4[row + f]; }
        m = mn;
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var f = 0u; f < QUADS; f++) { o4[w.row_at + f] = acc[f] * inv; }
    return vec2<f32>(m, l);
}

@compute @workgroup_size(8)
fn attn_subgroup_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    // Uniform over the subgroup: no lane leaves while the others still add.
    if (wid.x >= p.n_head || wid.y >= p.t) { return; }
    attend(wid.x, wid.y, lane);
}

// attn_subgroup_train_forward: the same, also saving lse (T, H) = max + log Σ exp(s − max) for the
// backward (attention.wgsl's attn_softmax_lse_forward's value, −inf for a row without keys).
@group(0) @binding(6) var<storage, read_write> lse_out: array<f32>;

@compute @workgroup_size(8)
fn attn_subgroup_train_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    if (wid.x >= p.n_head || wid.y >= p.t) { return; }
    let ml = attend(wid.x, wid.y, lane);
    if (lane == 0u) { lse_out[wid.y * p.n_head + wid.x] = ml.x + log(ml.y); }
}

// attn_subgroup_dscores_backward: attention.wgsl's attn_dscores_backward as one subgroup of eight per
// (head, token): pds[t, h, j] = (p, ds) with p = exp(q·k_j/√hd − lse) and ds = p·(dout·v_j − delta)/√hd
// for the token's keys j < n_keys, (0, 0) from there to span. Lane l holds its QUADS of q (pre-scaled)
// and of dout; per key each lane loads its quads of k_j and v_j and the two dot products are
// subgroupAdds (the per-entry kernel loads q, k, dout and v whole for every key). The backward's
// BackParams and attn_dscores_backward's bindings; the host's loop budget as for the forward.
struct BackParams {
    t: u32, n_head: u32, n_kv_head: u32, head_dim: u32,
    ctx: u32, span: u32, slots: u32, flags: u32,
}
@group(0) @binding(0) var<uniform> pb: BackParams;
@group(0) @binding(5) var<storage, read> dout4_b: array<vec4<f32>>;   // (T, H·hd)
@group(0) @binding(6) var<storage, read> lse_b: array<f32>;           // (T, H)
@group(0) @binding(7) var<storage, read> delta_b: array<f32>;         // (T, H)
@group(0) @binding(8) var<storage, read_write> pds_b: array<vec2<f32>>; // (T, H, span) (p, ds)

@compute @workgroup_size(8)
fn attn_subgroup_dscores_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let h = wid.x;
    let t = wid.y;
    // Uniform over the subgroup: no lane leaves while the others still add.
    if (h >= pb.n_head || t >= pb.t) { return; }
    let w = lane_walk(h, t, lane, vec2<u32>(pb.n_head, pb.n_kv_head), pb.head_dim, pb.ctx);
    let n = min(w.n, pb.span);
    var qs: array<vec4<f32>, 8>;
    var ds: array<vec4<f32>, 8>;
    for (var f = 0u; f < QUADS; f++) {
        qs[f] = q4[w.row_at + f] * w.scale;
        ds[f] = dout4_b[w.row_at + f];
    }
    let r = t * pb.n_head + h;
    let lse = lse_b[r];
    let delta = delta_b[r];
    let row = r * pb.span;
    for (var j = 0u; j < n; j++) {
        let at = w.key_at + j * w.hd4;
        var s = 0.0;
        var dp = 0.0;
        for (var f = 0u; f < QUADS; f++) {
            s += dot(qs[f], k4[at + f]);
            dp += dot(ds[f], v4[at + f]);
        }
        let sum_s = subgroupAdd(s);
        let sum_dp = subgroupAdd(dp);
        if (lane == 0u) {
            let pr = exp(sum_s - lse);
            pds_b[row + j] = vec2<f32>(pr, pr * (sum_dp - delta) * w.scale);
        }
    }
    for (var j = n + lane; j < pb.span; j += LANES) { pds_b[row + j] = vec2<f32>(0.0); }
}
