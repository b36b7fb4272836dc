// The LoRA products (lora.wgsl) for the CPU family on adapters with subgroups of eight (lavapipe): each
// value of the "column" operand is loaded by one lane and shared with the other seven through
// subgroupBroadcast instead of being loaded again per lane. llvmpipe scalarises every storage load per
// lane, so loads per FMA set the speed (../shared/lavapipe); the per-element kernels of lora.wgsl load
// two values per FMA, these five per 32 FMAs. The host picks them where it picks the broadcast matmuls
// (`Gpu::subgroup_matmul_rows` is Some: the CPU family, subgroups of exactly eight) unless
// `BABELRL_SUBGROUP_LORA=0`; everywhere else lora.wgsl runs.
//
// Every product is one strided GEMM, out[m, n] = alpha · Σ_k lhs[m, k] · rhs[n, k] (+ out[m, n] when
// accumulating), with each operand's offset and strides in the parameters; the six entry points run the
// same body and exist so that a profile names the product. For the LoRA term y += scale · (x Aᵀ) Bᵀ of
// one projection (x (T, K), A (R, K), B (N, R), u (T, R), dy and y (T, ldy) from column n_off):
//   lora_down_subgroup  u  (T, R)  = x · Aᵀ                     m = t, n = j, k = input c
//   lora_up_subgroup    y  (T, N) += scale · u · Bᵀ             m = t, n = output, k = j
//   lora_du_subgroup    du (T, R)  = scale · dy · B             m = t, n = j, k = output
//   lora_db_subgroup    dB (N, R) += scale · dyᵀ · u            m = output, n = j, k = t
//   lora_da_subgroup    dA (R, K) += duᵀ · x  (as dAᵀ (K, R))   m = input c, n = j, k = t
//   lora_dx_subgroup    dx (T, K) += du · A                     m = t, n = input c, k = j
//
// One workgroup is one subgroup of eight lanes and computes 32 rows (m) × 8 columns (n): lane j loads
// rhs[n0 + j, k] and broadcasts it, and owns four consecutive rows whose lhs values it loads itself, so
// a step of k costs a lane five loads for 32 FMAs (32 accumulators: the register tile the broadcast
// matmuls measured best). Rows and columns past the ends are clamped for loads and never stored, so any
// sizes work; a lane whose rows all lie past the end still loads and broadcasts its column. The walk
// over k takes one loop iteration per k (lavapipe stops an invocation after about 65536 loop iterations
// in all; the host keeps every reduced length ≤ 60000). Grid: x (and z past the per-dimension limit) =
// groups of eight columns, y = groups of 32 rows. Only built on adapters with Features::SUBGROUP.
// Measured in a profiled SFT step on lavapipe (`babelrl bench --train-only --profile`, SmolLM2-135M,
// r = 16 on all seven projections, 2 × 256 tokens, 2 cores loaded by other builds, so ±30%): the six
// products took 10.6 s of the step (7.8%) against 38.1 s (30.9%) for lora.wgsl; the forward's two
// 2.3 s (7.2%) against 13.0 s (31.6%). The largest is now lora_up_subgroup (R = 16 FMAs per output
// against a read and a write of it).

struct Params {
    m: u32,       // rows of out
    n: u32,       // columns of out
    kred: u32,    // length of the reduction
    flags: u32,   // 1: accumulate into out
    p_off: u32,   // lhs[m, k] = lhs[p_off + m · p_sm + k · p_sk]
    p_sm: u32,
    p_sk: u32,
    q_off: u32,   // rhs[n, k] = rhs[q_off + n · q_sn + k · q_sk]
    q_sn: u32,
    q_sk: u32,
    c_off: u32,   // out[m, n] = out[c_off + m · c_sm + n · c_sn]
    c_sm: u32,
    c_sn: u32,
    alpha: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lhs: array<f32>;
@group(0) @binding(2) var<storage, read> rhs: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// Rows per lane, 4 or 1 (a pipeline constant): the host takes one row per lane (8 rows × 8 columns a
// workgroup) for fewer than `SubgroupMatmulRows::four_per_lane` rows (32: a decoded batch's T = 8
// left six lanes of eight loading clamped rows), as for the broadcast matmuls.
override ROWS: u32 = 4u;
const LANES: u32 = 8u;   // lanes per subgroup = columns per workgroup

// Stores column n of this lane's ROWS rows m0 .. (those that exist; components past ROWS unused).
fn store_col(m0: u32, n: u32, v: vec4<f32>) {
    if (n >= p.n) { return; }
    for (var i = 0u; i < ROWS; i++) {
        let m = m0 + i;
        if (m < p.m) {
            let at = p.c_off + m * p.c_sm + n * p.c_sn;
            var y = p.alpha * v[i];
            if ((p.flags & 1u) != 0u) { y = out[at] + y; }
            out[at] = y;
        }
    }
}

fn gemm(wid: vec3<u32>, nwg: vec3<u32>, lane: u32) {
    let n0 = (wid.x + wid.z * nwg.x) * LANES;
    // Uniform over the workgroup: no lane leaves while others still broadcast.
    if (n0 >= p.n) { return; }
    let m0 = wid.y * (LANES * ROWS) + lane * ROWS;
    let last_m = p.m - 1u;
    let r0 = p.p_off + min(m0, last_m) * p.p_sm;
    let r1 = p.p_off + min(m0 + 1u, last_m) * p.p_sm;
    let r2 = p.p_off + min(m0 + 2u, last_m) * p.p_sm;
    let r3 = p.p_off + min(m0 + 3u, last_m) * p.p_sm;
    var qi = p.q_off + min(n0 + lane, p.n - 1u) * p.q_sn;
    var pk = 0u;
    // c<j>: column n0 + j of the lane's rows.
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    for (var k = 0u; k < p.kred; k++) {
        var a = vec4<f32>(lhs[r0 + pk], 0.0, 0.0, 0.0);
        if (ROWS == 4u) { a = vec4<f32>(a.x, lhs[r1 + pk], lhs[r2 + pk], lhs[r3 + pk]); }
        let q = rhs[qi];
        c0 += a * subgroupBroadcast(q, 0u);
        c1 += a * subgroupBroadcast(q, 1u);
        c2 += a * subgroupBroadcast(q, 2u);
        c3 += a * subgroupBroadcast(q, 3u);
        c4 += a * subgroupBroadcast(q, 4u);
        c5 += a * subgroupBroadcast(q, 5u);
        c6 += a * subgroupBroadcast(q, 6u);
        c7 += a * subgroupBroadcast(q, 7u);
        pk += p.p_sk;
        qi += p.q_sk;
    }
    store_col(m0, n0, c0);
    store_col(m0, n0 + 1u, c1);
    store_col(m0, n0 + 2u, c2);
    store_col(m0, n0 + 3u, c3);
    store_col(m0, n0 + 4u, c4);
    store_col(m0, n0 + 5u, c5);
    store_col(m0, n0 + 6u, c6);
    store_col(m0, n0 + 7u, c7);
}

@compute @workgroup_size(8)
fn lora_down_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(subgroup_invocation_id) lane: u32) {
    gemm(wid, nwg, lane);
}

@compute @workgroup_size(8)
fn lora_up_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(subgroup_invocation_id) lane: u32) {
    gemm(wid, nwg, lane);
}

@compute @workgroup_size(8)
fn lora_du_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(subgroup_invocation_id) lane: u32) {
    gemm(wid, nwg, lane);
}

@compute @workgroup_size(8)
fn lora_db_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(subgroup_invocation_id) lane: u32) {
    gemm(wid, nwg, lane);
}

@compute @workgroup_size(8)
fn lora_da_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(subgroup_invocation_id) lane: u32) {
    gemm(wid, nwg, lane);
}

@compute @workgroup_size(8)
fn lora_dx_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(subgroup_invocation_id) lane: u32) {
    gemm(wid, nwg, lane);
}
