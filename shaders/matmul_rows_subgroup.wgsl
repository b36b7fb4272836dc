// matmul_rows_subgroup_forward: y (T, ldy)[:, n_off + n] = x (T, K) · w (N, K)ᵀ (+ bias) (+ residual), for
// few rows (decoding): one workgroup of 64 invocations per (output column, row), the reduction over K
// done by subgroupAdd within each subgroup and one workgroup-memory step across subgroups. Only built
// on adapters with Features::SUBGROUP (naga does not take `enable subgroups;`: the builtins are enough).
// K must be a multiple of 8. Grid: x = column (x + z · num_workgroups.x past the per-dimension limit),
// y = row. flags bit 2 (SWIGLU, as matmul.wgsl defines it): the workgroup reduces its column's gate row
// n and up row N + n side by side and writes silu(gate) · up.

struct Params { t: u32, n: u32, k: u32, flags: u32, ldy: u32, n_off: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;  // (T, K)
@group(0) @binding(2) var<storage, read> w4: array<vec4<u32>>;  // (N, K/2) packed f16 pairs
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (N) or a dummy
@group(0) @binding(4) var<storage, read> residual: array<f32>;  // (T, ldy) or a dummy
@group(0) @binding(5) var<storage, read_write> y: array<f32>;   // (T, ldy)

const WG: u32 = 64u;
const FLAG_SWIGLU: u32 = 4u;
var<workgroup> partial: array<vec2<f32>, 64>;

fn dot8(q: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    return dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), xa)
         + dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), xb);
}

@compute @workgroup_size(64)
fn matmul_rows_subgroup_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sid: u32,
) {
    let n = wid.x + wid.z * nwg.x;
    let t = wid.y;
    let k8 = p.k / 8u;
    let sw = (p.flags & FLAG_SWIGLU) != 0u;
    var acc = vec2<f32>(0.0); // (this column, or gate; up in SWIGLU mode)
    if (n < p.n && t < p.t) {
        let xr = t * (p.k / 4u);
        let up = (p.n + n) * k8;
        for (var i = lid; i < k8; i += WG) {
            let xa = x4[xr + 2u * i];
            let xb = x4[xr + 2u * i + 1u];
            acc.x += dot8(w4[n * k8 + i], xa, xb);
            if (sw) { acc.y += dot8(w4[up + i], xa, xb); }
        }
    }
    // Subgroup leaders publish their sums at their own index (no assumption about how invocations
    // map to subgroups); invocation 0 adds the 64 slots.
    partial[lid] = vec2<f32>(0.0);
    workgroupBarrier();
    let sum = vec2<f32>(subgroupAdd(acc.x), subgroupAdd(acc.y));
    if (sid == 0u) { partial[lid] = sum; }
    workgroupBarrier();
    if (lid == 0u && n < p.n && t < p.t) {
        var total = vec2<f32>(0.0);
        for (var g = 0u; g < WG; g++) { total += partial[g]; }
        var v = total.x;
        if (sw) {
            v = v / (1.0 + exp(-v)) * total.y;
        } else {
            if ((p.flags & 1u) != 0u) { v += bias[n]; }
            if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
        }
        y[t * p.ldy + p.n_off + n] = v;
    }
}
