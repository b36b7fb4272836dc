// matmul_rows_subgroup_forward: y (T, ldy)[:, n_off + n] = x (T, K) · w (N, K)ᵀ (+ bias) (+ residual), for
// done by subgroupAdd within each subgroup and one workgroup-memory step across subgroups. Only built
// on adapters with Features::SUBGROUP (naga does not take `enable subgroups;`: the builtins are enough).
// K must be a multiple of 8. Grid: x = column (x + z · num_workgroups.x past the per-dimension limit),
// y = row.

struct Params { t: u32, n: u32, k: u32, flags: u32, ldy: u32, n_off: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;  // (T, K)
@group(0) @binding(2) var<storage, read> w4: array<vec4<u32>>;  // (N, K/2) packed f16 pairs
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (N) or a dummy
@group(0) @binding(4) var<storage, read> residual: array<f32>;  // (T, ldy) or a dummy
@group(0) @binding(5) var<storage, read_write> y: array<f32>;   // (T, ldy)

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

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
    var acc = 0.0;
    if (n < p.n && t < p.t) {
        let xr = t * (p.k / 4u);
        for (var i = lid; i < k8; i += WG) {
            let q = w4[n * k8 + i];
            acc += dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), x4[xr + 2u * i])
                 + dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), x4[xr + 2u * i + 1u]);
        }
    }
    // Subgroup leaders publish their sums at their own index (no assumption about how invocations
    // map to subgroups); invocation 0 adds the 64 slots.
    partial[lid] = 0.0;
    workgroupBarrier();
    let sum = subgroupAdd(acc);
    if (sid == 0u) { partial[lid] = sum; }
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var g = 0u; g < WG; g++) { total += partial[g]; }
        partial[0] = total;
    }
    if (lid == 0u && n < p.n && t < p.t) {
        var v = partial[0];
        if ((p.flags & 1u) != 0u) { v += bias[n]; }
        if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
        y[t * p.ldy + p.n_off + n] = v;
    }
}
