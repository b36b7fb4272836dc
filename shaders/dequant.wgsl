// dequant_q4_forward / dequant_q8_forward: a packed weight's blocks (layout in matmul_decode.wgsl) expanded
// to f16 pairs, the layout of every other matmul: out (N, K/2) u32, value j of block i at half 32i + j.
// For the launches that cannot read packed blocks (many rows, the backward dX, adapters without the
// decode kernels), which then run on the expansion. One invocation per block; `blocks` = N · K/32.
// Grid: x (and y past the per-dimension limit, index = gid.x + gid.y · num_workgroups.x · 64) = blocks.
// Values are d · q + m in f32, as the host's dequantization (engine/src/model/quant.rs), then rounded to
// f16 by pack2x16float.

struct Params { blocks: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;  // (N, K/2) f16 pairs
@group(0) @binding(2) var<storage, read> w4: array<vec4<u32>>;   // quants
@group(0) @binding(3) var<storage, read> scales: array<u32>;     // (blocks) pack2x16float(d, m)

fn put(at: u32, v: vec4<f32>) {
    out[at] = pack2x16float(v.xy);
    out[at + 1u] = pack2x16float(v.zw);
}

@compute @workgroup_size(64)
fn dequant_q4_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.blocks) { return; }
    let s = unpack2x16float(scales[i]);
    let q = w4[i];
    for (var w = 0u; w < 4u; w++) {
        let lo = vec4<f32>((vec4<u32>(q[w]) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
        let hi = vec4<f32>((vec4<u32>(q[w]) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
        put(16u * i + 2u * w, lo * s.x + s.y);
        put(16u * i + 8u + 2u * w, hi * s.x + s.y);
    }
}

@compute @workgroup_size(64)
fn dequant_q8_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.blocks) { return; }
    let d = unpack2x16float(scales[i]).x;
    for (var h = 0u; h < 2u; h++) {
        let q = w4[2u * i + h];
        for (var w = 0u; w < 4u; w++) {
            let v = vec4<f32>((vec4<i32>(bitcast<i32>(q[w])) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
            put(16u * i + 8u * h + 2u * w, v * d);
        }
    }
}
