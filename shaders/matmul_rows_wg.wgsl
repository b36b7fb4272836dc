// matmul_rows_wg_forward: y (T, ldy)[:, n_off + n] = x (T, K) · w (N, K)ᵀ (+ bias) (+ residual), for
// GPUs and few rows (decoding): one workgroup of 64 invocations per (output column, row); each
// invocation accumulates a strided slice of K, then a tree reduction in workgroup memory.
// (The CPU-adapter family in matmul.wgsl avoids workgroup memory and barriers instead.)
// K must be a multiple of 8. Grid: x = column, y = row.

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
fn matmul_rows_wg_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wid.x;
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
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    if (lid == 0u && n < p.n && t < p.t) {
        var v = partial[0];
        if ((p.flags & 1u) != 0u) { v += bias[n]; }
        if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
        y[t * p.ldy + p.n_off + n] = v;
    }
}
