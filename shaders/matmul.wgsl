// matmul_forward: Y = X · Wᵀ (+ bias) (+ residual)
//   X (T, K) f32 activations, W (N, K) frozen f16 weights packed two per u32, Y (T, N) f32.
//   flags bit 0: add bias (N); bit 1: add residual (T, N); bit 2 (SWIGLU, an epilogue mode): W holds
//   2·N rows, the gate rows 0..N then the up rows N..2N (p.n = N, the output width), and
//   y[t, n_off + n] = silu(x·W[n]) · (x·W[N + n]) with silu(g) = g / (1 + exp(−g)); bias and residual
//   stay off with it. Each output's two dot products are computed exactly as the plain mode computes
//   those columns, so the result equals a plain matmul followed by swiglu_forward bit for bit.
//   Every forward matmul entry point (here, matmul_subgroup.wgsl, matmul_rows_subgroup.wgsl and
//   matmul_workgroup.wgsl) implements the flag; a kernel whose invocation holds a tile of 2B columns
//   gives its first B to gate rows and its last B to the matching up rows, and outputs B columns.
// Three entry points, chosen on the host by shape: matmul_forward (a 4×4 register tile, K % 8 == 0),
// matmul_forward_cols4 (four columns of one row, for T < 4, K % 8 == 0) and matmul_forward_scalar (any
// even K). No workgroup memory or barriers (fast on CPU adapters such as lavapipe: the 4×4 tile measured
// 18 GFLOP/s there against 8 for four rows of one column). Rows and columns past the ends are clamped
// for loads and never stored. Every entry point takes its column index as x + z · num_workgroups.x
// (the host folds grids wider than the adapter's per-dimension limit into z).

// ldy: row stride of y and residual; n_off: first column of y written (a weight split into row blocks
// writes its slice of the output columns). bias is indexed within the block.
struct Params { t: u32, n: u32, k: u32, flags: u32, ldy: u32, n_off: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;  // (T, K), buffer padded to 16 bytes
@group(0) @binding(2) var<storage, read> w4: array<vec4<u32>>;  // (N, K/2) packed f16 pairs, padded
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (N) or a dummy
@group(0) @binding(4) var<storage, read> residual: array<f32>;  // (T, ldy) or a dummy
@group(0) @binding(5) var<storage, read_write> y: array<f32>;   // (T, ldy)

override WG: u32 = 64u;

const FLAG_SWIGLU: u32 = 4u;

fn swiglu(g: f32, u: f32) -> f32 { return g / (1.0 + exp(-g)) * u; }

fn swiglu_on() -> bool { return (p.flags & FLAG_SWIGLU) != 0u; }

// Weight row of tile column c (of 2·half) for the output columns n0.. : in SWIGLU mode the first half
// are gate rows n0 + c and the second the up rows N + n0 + c − half; else row n0 + c. Clamped to the end.
fn tile_row(n0: u32, c: u32, half: u32) -> u32 {
    let last = p.n - 1u;
    if (!swiglu_on()) { return min(n0 + c, last); }
    if (c < half) { return min(n0 + c, last); }
    return p.n + min(n0 + c - half, last);
}

fn store(t0: u32, n: u32, acc: vec4<f32>) {
    var b = 0.0;
    if ((p.flags & 1u) != 0u) { b = bias[n]; }
    for (var m = 0u; m < 4u; m++) {
        let t = t0 + m;
        if (t < p.t) {
            var v = acc[m] + b;
            if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
            y[t * p.ldy + p.n_off + n] = v;
        }
    }
}

fn x_at(e: u32) -> f32 { return x4[e >> 2u][e & 3u]; }
fn w_at(e: u32) -> u32 { return w4[e >> 2u][e & 3u]; }

// Any even K: scalar loads, two halves at a time. In SWIGLU mode the invocation walks its gate row and
// then its up row.
fn rows4_scalar(n: u32, t0: u32) -> vec4<f32> {
    let k2 = p.k / 2u;
    let last = p.t - 1u;
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < k2; i++) {
        let wv = unpack2x16float(w_at(n * k2 + i));
        let c = 2u * i;
        for (var m = 0u; m < 4u; m++) {
            let r = min(t0 + m, last) * p.k + c;
            acc[m] += x_at(r) * wv.x + x_at(r + 1u) * wv.y;
        }
    }
    return acc;
}

@compute @workgroup_size(WG)
fn matmul_forward_scalar(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = gid.x + gid.z * nwg.x * WG;
    let t0 = gid.y * 4u;
    if (n >= p.n || t0 >= p.t) { return; }
    if (swiglu_on()) {
        let g = rows4_scalar(n, t0);
        let u = rows4_scalar(p.n + n, t0);
        for (var m = 0u; m < 4u; m++) {
            let t = t0 + m;
            if (t < p.t) { y[t * p.ldy + p.n_off + n] = swiglu(g[m], u[m]); }
        }
        return;
    }
    store(t0, n, rows4_scalar(n, t0));
}

fn unpack8(q: vec4<u32>, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    return dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), xa)
         + dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), xb);
}

// For few rows (decoding, T < 4): one invocation computes four consecutive output columns of one row,
// so each activation vector is read once per four weight rows and no work is spent on clamped rows.
// K must be a multiple of 8. Grid: x (and z, past the per-dimension limit) = groups of four columns, y = row.
// SWIGLU: two output columns per invocation (gate and up rows of each), groups of two columns.
@compute @workgroup_size(WG)
fn matmul_forward_cols4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let sw = swiglu_on();
    let n0 = (gid.x + gid.z * nwg.x * WG) * select(4u, 2u, sw);
    let t = gid.y;
    if (n0 >= p.n || t >= p.t) { return; }
    let k8 = p.k / 8u;
    let xr = t * (p.k / 4u);
    let half = select(4u, 2u, sw);
    let w0 = tile_row(n0, 0u, half) * k8;
    let w1 = tile_row(n0, 1u, half) * k8;
    let w2 = tile_row(n0, 2u, half) * k8;
    let w3 = tile_row(n0, 3u, half) * k8;
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < k8; i++) {
        let xa = x4[xr + 2u * i];
        let xb = x4[xr + 2u * i + 1u];
        acc.x += unpack8(w4[w0 + i], xa, xb);
        acc.y += unpack8(w4[w1 + i], xa, xb);
        acc.z += unpack8(w4[w2 + i], xa, xb);
        acc.w += unpack8(w4[w3 + i], xa, xb);
    }
    if (sw) {
        for (var m = 0u; m < 2u; m++) {
            let n = n0 + m;
            if (n < p.n) { y[t * p.ldy + p.n_off + n] = swiglu(acc[m], acc[m + 2u]); }
        }
        return;
    }
    for (var m = 0u; m < 4u; m++) {
        let n = n0 + m;
        if (n < p.n) {
            var v = acc[m];
            if ((p.flags & 1u) != 0u) { v += bias[n]; }
            if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
            y[t * p.ldy + p.n_off + n] = v;
        }
    }
}

// For many rows (prefill, batches): a 4×4 register tile, four rows × four columns per invocation, so
// each loaded weight vector serves four rows and each activation vector four columns. K a multiple of 8.
// Grid: x (and z, past the per-dimension limit) = groups of four columns, y = groups of four rows.
// SWIGLU: four rows × two output columns per invocation (tile columns 0, 1 gate, 2, 3 up), groups of two.
@compute @workgroup_size(WG)
fn matmul_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let sw = swiglu_on();
    let n0 = (gid.x + gid.z * nwg.x * WG) * select(4u, 2u, sw);
    let t0 = gid.y * 4u;
    if (n0 >= p.n || t0 >= p.t) { return; }
    let k8 = p.k / 8u;
    let kx = p.k / 4u;
    let last_t = p.t - 1u;
    var xr: array<u32, 4>;
    var wr: array<u32, 4>;
    for (var m = 0u; m < 4u; m++) {
        xr[m] = min(t0 + m, last_t) * kx;
        wr[m] = tile_row(n0, m, select(4u, 2u, sw)) * k8;
    }
    var acc: array<vec4<f32>, 4>; // acc[row][column]
    for (var i = 0u; i < k8; i++) {
        var wa: array<vec4<f32>, 4>;
        var wb: array<vec4<f32>, 4>;
        for (var c = 0u; c < 4u; c++) {
            let q = w4[wr[c] + i];
            wa[c] = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
            wb[c] = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
        }
        for (var r = 0u; r < 4u; r++) {
            let xa = x4[xr[r] + 2u * i];
            let xb = x4[xr[r] + 2u * i + 1u];
            acc[r] += vec4<f32>(
                dot(wa[0], xa) + dot(wb[0], xb),
                dot(wa[1], xa) + dot(wb[1], xb),
                dot(wa[2], xa) + dot(wb[2], xb),
                dot(wa[3], xa) + dot(wb[3], xb),
            );
        }
    }
    if (sw) {
        for (var r = 0u; r < 4u; r++) {
            let t = t0 + r;
            for (var c = 0u; c < 2u; c++) {
                let n = n0 + c;
                if (t < p.t && n < p.n) { y[t * p.ldy + p.n_off + n] = swiglu(acc[r][c], acc[r][c + 2u]); }
            }
        }
        return;
    }
    for (var r = 0u; r < 4u; r++) {
        let t = t0 + r;
        for (var c = 0u; c < 4u; c++) {
            let n = n0 + c;
            if (t < p.t && n < p.n) {
                var v = acc[r][c];
                if ((p.flags & 1u) != 0u) { v += bias[n]; }
                if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
                y[t * p.ldy + p.n_off + n] = v;
            }
        }
    }
}

// matmul_backward_dx: the frozen linear's input gradient, dX (T, K) (+)= dY[:, n_off + rows] · W[rows],
//   W (N, K) the forward's packed f16 weight read down its columns, over the weight rows
//   first .. first + n, dY (T, ldy). flags bit 0 adds into dX (the host splits a long N into several
//   launches that add up, and fused projections or a weight in row blocks sum their parts). No gradient
//   for W (frozen). matmul_backward_dx: 4 rows × 8 columns per invocation, K % 8 == 0;
//   matmul_backward_dx_scalar: 4 rows × 2 columns, any even K. Grid: x = column group, y = groups of four
//   rows. lavapipe stops an invocation after about 65536 loop iterations in all (not per loop: nesting
//   does not help), so the host keeps n ≤ 16384 per launch (an LM head has N = 151936).
// row0: weight row n's dY value is in column n_off + n − row0 (0 for a whole weight; the first row of a
//   range taken alone, as the LM head's vocabulary chunks of the cross-entropy, with n_off 0).
struct DxParams { t: u32, n: u32, k: u32, flags: u32, ldy: u32, n_off: u32, first: u32, row0: u32 }
@group(0) @binding(0) var<uniform> pd: DxParams;
@group(0) @binding(1) var<storage, read> dy_rows: array<f32>;         // (T, ldy)
@group(0) @binding(3) var<storage, read_write> dx_rows: array<f32>;   // (T, K)

fn store_dx(t: u32, col: u32, v: f32) {
    let at = t * pd.k + col;
    if ((pd.flags & 1u) != 0u) { dx_rows[at] += v; } else { dx_rows[at] = v; }
}

@compute @workgroup_size(WG)
fn matmul_backward_dx(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c8 = gid.x;
    let t0 = gid.y * 4u;
    let k8 = pd.k / 8u;
    if (c8 >= k8 || t0 >= pd.t) { return; }
    let last = pd.t - 1u;
    var rows: array<u32, 4>;
    for (var m = 0u; m < 4u; m++) { rows[m] = min(t0 + m, last) * pd.ldy + pd.n_off - pd.row0; }
    var lo: array<vec4<f32>, 4>;
    var hi: array<vec4<f32>, 4>;
    for (var n = pd.first; n < pd.first + pd.n; n++) {
        let q = w4[n * k8 + c8];
        let wa = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        let wb = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
        for (var m = 0u; m < 4u; m++) {
            let g = dy_rows[rows[m] + n];
            lo[m] += g * wa;
            hi[m] += g * wb;
        }
    }
    for (var m = 0u; m < 4u; m++) {
        let t = t0 + m;
        if (t < pd.t) {
            for (var c = 0u; c < 4u; c++) {
                store_dx(t, 8u * c8 + c, lo[m][c]);
                store_dx(t, 8u * c8 + 4u + c, hi[m][c]);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn matmul_backward_dx_scalar(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c2 = gid.x;
    let t0 = gid.y * 4u;
    let k2 = pd.k / 2u;
    if (c2 >= k2 || t0 >= pd.t) { return; }
    let last = pd.t - 1u;
    var rows: array<u32, 4>;
    for (var m = 0u; m < 4u; m++) { rows[m] = min(t0 + m, last) * pd.ldy + pd.n_off - pd.row0; }
    var acc: array<vec2<f32>, 4>;
    for (var n = pd.first; n < pd.first + pd.n; n++) {
        let wv = unpack2x16float(w_at(n * k2 + c2));
        for (var m = 0u; m < 4u; m++) { acc[m] += dy_rows[rows[m] + n] * wv; }
    }
    for (var m = 0u; m < 4u; m++) {
        let t = t0 + m;
        if (t < pd.t) {
            store_dx(t, 2u * c2, acc[m].x);
            store_dx(t, 2u * c2 + 1u, acc[m].y);
        }
    }
}
