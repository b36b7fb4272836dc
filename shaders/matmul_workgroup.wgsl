// The GPU family's matmuls through workgroup memory (no subgroup operations needed):
//   y (T, ldy)[:, n_off + n] = x (T, K) · w (N, K)ᵀ (+ bias) (+ residual).
// matmul_rows_wg_forward, for few rows (decoding): one workgroup of 64 invocations per (output column,
//   row); each invocation accumulates a strided slice of K, then a tree reduction in workgroup memory.
//   K a multiple of 8. Grid: x = column (x + z · num_workgroups.x past the per-dimension limit, as a
//   151,936-row LM head needs), y = row.
// matmul_tiled_forward, for many rows (prefill, batches): a 64 × 64 output tile per 16 × 16 workgroup.
//   K is walked in slices of 32 staged through workgroup memory (x as f32, w still packed as f16 pairs,
//   12 KiB in all), so each loaded weight serves 64 rows and each activation 64 columns; every
//   invocation keeps a 4 × 4 register tile of rows ly + 16·i and columns lx + 16·j. K a multiple of 32;
//   rows and columns past the ends are clamped for loads and never stored.
//   Grid: x (and z past the limit) = groups of 64 columns, y = groups of 64 rows.
// flags bit 2 (SWIGLU, as matmul.wgsl defines it): the few-row kernel reduces its column's gate row n
//   and up row N + n side by side; the tiled one covers 32 output columns per workgroup, its tile's
//   columns 0..31 being gate rows and 32..63 the matching up rows (an invocation's columns lx + 16·j
//   pair j = 0, 1 with j + 2), and writes silu(gate) · up.
// (The CPU-adapter family in matmul.wgsl avoids workgroup memory and barriers instead; the subgroup
// variant of the few-row kernel is in matmul_rows_subgroup.wgsl, as it needs the adapter feature.)

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

fn swiglu(g: f32, u: f32) -> f32 { return g / (1.0 + exp(-g)) * u; }

fn dot8(q: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    return dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), xa)
         + dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), xb);
}

@compute @workgroup_size(64)
fn matmul_rows_wg_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
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
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) { partial[lid] += partial[lid + stride]; }
        workgroupBarrier();
    }
    if (lid == 0u && n < p.n && t < p.t) {
        var v = partial[0].x;
        if (sw) {
            v = swiglu(v, partial[0].y);
        } else {
            if ((p.flags & 1u) != 0u) { v += bias[n]; }
            if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
        }
        y[t * p.ldy + p.n_off + n] = v;
    }
}

const TILE: u32 = 64u;
const SLICE: u32 = 32u;
// One K slice: xs[row][SLICE / 4] vec4s of activations, ws[column][SLICE / 8] vec4s of packed halves.
var<workgroup> xs: array<vec4<f32>, 512>;
var<workgroup> ws: array<vec4<u32>, 256>;

fn halves(q: vec4<u32>) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(
        vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)),
        vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)),
    );
}

@compute @workgroup_size(16, 16)
fn matmul_tiled_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let sw = (p.flags & FLAG_SWIGLU) != 0u;
    let n0 = (wid.x + wid.z * nwg.x) * select(TILE, TILE / 2u, sw);
    let t0 = wid.y * TILE;
    let kx = p.k / 4u;
    let k8 = p.k / 8u;
    var acc: array<vec4<f32>, 4>; // acc[i][j]: row t0 + ly + 16 i, column n0 + lx + 16 j

    for (var kb = 0u; kb < p.k; kb += SLICE) {
        // Stage the slice: 64 rows × 8 vec4 of x (two per invocation), 64 columns × 4 vec4 of w (one).
        for (var e = li; e < TILE * (SLICE / 4u); e += 256u) {
            let row = min(t0 + e / (SLICE / 4u), p.t - 1u);
            xs[e] = x4[row * kx + kb / 4u + e % (SLICE / 4u)];
        }
        let tc = li / (SLICE / 8u);
        var col = min(n0 + tc, p.n - 1u);
        if (sw && tc >= TILE / 2u) { col = p.n + min(n0 + tc - TILE / 2u, p.n - 1u); }
        ws[li] = w4[col * k8 + kb / 8u + li % (SLICE / 8u)];
        workgroupBarrier();

        for (var c = 0u; c < SLICE / 8u; c++) {
            var w: array<array<vec4<f32>, 2>, 4>;
            for (var j = 0u; j < 4u; j++) { w[j] = halves(ws[(lid.x + 16u * j) * (SLICE / 8u) + c]); }
            for (var i = 0u; i < 4u; i++) {
                let xa = xs[(lid.y + 16u * i) * (SLICE / 4u) + 2u * c];
                let xb = xs[(lid.y + 16u * i) * (SLICE / 4u) + 2u * c + 1u];
                acc[i] += vec4<f32>(
                    dot(w[0][0], xa) + dot(w[0][1], xb),
                    dot(w[1][0], xa) + dot(w[1][1], xb),
                    dot(w[2][0], xa) + dot(w[2][1], xb),
                    dot(w[3][0], xa) + dot(w[3][1], xb),
                );
            }
        }
        workgroupBarrier();
    }

    if (sw) {
        for (var i = 0u; i < 4u; i++) {
            let t = t0 + lid.y + 16u * i;
            for (var j = 0u; j < 2u; j++) {
                let n = n0 + lid.x + 16u * j;
                if (t < p.t && n < p.n) { y[t * p.ldy + p.n_off + n] = swiglu(acc[i][j], acc[i][j + 2u]); }
            }
        }
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + lid.x + 16u * j;
            if (t < p.t && n < p.n) {
                var v = acc[i][j];
                if ((p.flags & 1u) != 0u) { v += bias[n]; }
                if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
                y[t * p.ldy + p.n_off + n] = v;
            }
        }
    }
}
