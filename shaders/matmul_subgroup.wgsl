// The CPU family's matmuls on adapters with subgroups of eight (lavapipe): each value one lane loads is
// shared with the others through subgroupBroadcast instead of being loaded again per lane. llvmpipe
// scalarises every storage load per lane, so loads per FMA set the speed (../shared/lavapipe: 25–27
// GFLOP/s against 12 for the per-lane 4×4 tile on the same f32 GEMM). One workgroup is one subgroup of
// eight lanes; the host picks these entry points only where the adapter's subgroup size is exactly 8
// (`AdapterSummary::subgroup_size` = (8, 8)), and a lane is named by subgroup_invocation_id so the
// broadcast indices are lanes of the same subgroup. Register tiles: at most 4 rows × 8 columns per lane
// (32 accumulators; 8 rows spilled and ran at half the speed in ../shared/lavapipe), and the forward
// walks each step of eight K values in two halves to keep fewer values live (19 → 24 GFLOP/s). Only
// built on adapters with Features::SUBGROUP (naga does not take `enable subgroups;`: the builtins are
// enough). Measured on lavapipe (2 cores, SmolLM2 shapes, `babelrl bench --gemm-only`): the forward at
// T = 128 ≈ 45 GFLOP/s against ≈ 20 for the 4×4 tile; at T = 8 (one row per lane) ≈ 30 against ≈ 17.

// matmul_forward_subgroup: Y = X · Wᵀ (+ bias) (+ residual), the same Params, bindings and flags as
// matmul_forward in matmul.wgsl (ldy, n_off, columns folded into z). X (T, K) f32, W (N, K) f16 packed
// two per u32, K % 8 == 0. A workgroup computes 32 rows × 8 columns: lane j loads the eight halves of
// weight row n0 + j at each step of K and broadcasts them; every lane owns four rows of X and
// accumulates all eight columns for them. Grid: x (and z past the per-dimension limit) = groups of
// eight columns, y = groups of 32 rows. Rows and columns past the ends are clamped for loads and never
// stored; a lane whose rows all lie past the end still loads and broadcasts its weight row.
// flags bit 2 (SWIGLU, as matmul.wgsl defines it): a workgroup outputs four columns n0.., lanes 0..3
// loading gate rows n0 + j and lanes 4..7 the up rows N + n0 + j − 4; column c's output is
// silu(acc[c]) · acc[c + 4]. Grid x then counts groups of four output columns.
// w_row0 (matmul.wgsl's pad0, 0 from every forward matmul launch): output column n reads weight row
// w_row0 + n, so a launch can take rows w_row0 .. w_row0 + N of a larger weight (the LM head's vocabulary
// chunks of the cross-entropy, cross_entropy.wgsl); never with SWIGLU.
struct Params { t: u32, n: u32, k: u32, flags: u32, ldy: u32, n_off: u32, w_row0: u32, pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;  // (T, K), buffer padded to 16 bytes
@group(0) @binding(2) var<storage, read> w4: array<vec4<u32>>;  // (N, K/2) packed f16 pairs, padded
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (N) or a dummy
@group(0) @binding(4) var<storage, read> residual: array<f32>;  // (T, ldy) or a dummy
@group(0) @binding(5) var<storage, read_write> y: array<f32>;   // (T, ldy)

const ROWS: u32 = 4u;    // rows of X per lane
const LANES: u32 = 8u;   // lanes per subgroup = columns per workgroup
const FLAG_SWIGLU: u32 = 4u;

fn swiglu(g: f32, u: f32) -> f32 { return g / (1.0 + exp(-g)) * u; }

fn swiglu_on() -> bool { return (p.flags & FLAG_SWIGLU) != 0u; }

// First output column of workgroup `g`: eight per workgroup, four in SWIGLU mode.
fn first_column(g: u32) -> u32 { return g * select(LANES, LANES / 2u, swiglu_on()); }

// The weight row lane `lane` loads for the output columns n0..: row n0 + lane, or in SWIGLU mode gate
// row n0 + lane (lanes 0..3) or up row N + n0 + lane − 4 (lanes 4..7). Clamped to the end.
fn lane_row(n0: u32, lane: u32) -> u32 {
    let last = p.n - 1u;
    if (!swiglu_on()) { return min(n0 + lane, last); }
    if (lane < LANES / 2u) { return min(n0 + lane, last); }
    return p.n + min(n0 + lane - LANES / 2u, last);
}

// acc[r][c] += x[row r][4 · j .. 4 · j + 4] · (lane c's w4), for this lane's four rows and the
// subgroup's eight columns: lane c's weights come by broadcast (a constant lane: one block per column).
fn acc_half(acc: ptr<function, array<array<f32, 8>, 4>>, w: vec4<f32>, xr: ptr<function, array<u32, 4>>, j: u32) {
    var xs: array<vec4<f32>, 4>;
    for (var r = 0u; r < ROWS; r++) { xs[r] = x4[(*xr)[r] + j]; }
    { let c = subgroupBroadcast(w, 0u); for (var r = 0u; r < ROWS; r++) { (*acc)[r][0] += dot(xs[r], c); } }
    { let c = subgroupBroadcast(w, 1u); for (var r = 0u; r < ROWS; r++) { (*acc)[r][1] += dot(xs[r], c); } }
    { let c = subgroupBroadcast(w, 2u); for (var r = 0u; r < ROWS; r++) { (*acc)[r][2] += dot(xs[r], c); } }
    { let c = subgroupBroadcast(w, 3u); for (var r = 0u; r < ROWS; r++) { (*acc)[r][3] += dot(xs[r], c); } }
    { let c = subgroupBroadcast(w, 4u); for (var r = 0u; r < ROWS; r++) { (*acc)[r][4] += dot(xs[r], c); } }
    { let c = subgroupBroadcast(w, 5u); for (var r = 0u; r < ROWS; r++) { (*acc)[r][5] += dot(xs[r], c); } }
    { let c = subgroupBroadcast(w, 6u); for (var r = 0u; r < ROWS; r++) { (*acc)[r][6] += dot(xs[r], c); } }
    { let c = subgroupBroadcast(w, 7u); for (var r = 0u; r < ROWS; r++) { (*acc)[r][7] += dot(xs[r], c); } }
}

@compute @workgroup_size(8)
fn matmul_forward_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = first_column(wid.x + wid.z * nwg.x);
    // Uniform over the workgroup: no lane leaves while others still broadcast.
    if (n0 >= p.n) { return; }
    let t0 = wid.y * (LANES * ROWS) + lane * ROWS;
    let k8 = p.k / 8u;
    let kx = p.k / 4u;
    let last_t = p.t - 1u;
    var xr: array<u32, 4>;
    for (var r = 0u; r < ROWS; r++) { xr[r] = min(t0 + r, last_t) * kx; }
    let wr = (p.w_row0 + lane_row(n0, lane)) * k8;
    var acc: array<array<f32, 8>, 4>; // acc[row][column]
    for (var i = 0u; i < k8; i++) {
        // Two halves of the eight K values, one after the other, to keep fewer values live.
        let q = w4[wr + i];
        acc_half(&acc, vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), &xr, 2u * i);
        acc_half(&acc, vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), &xr, 2u * i + 1u);
    }
    if (swiglu_on()) {
        for (var r = 0u; r < ROWS; r++) {
            let t = t0 + r;
            for (var c = 0u; c < LANES / 2u; c++) {
                let n = n0 + c;
                if (t < p.t && n < p.n) {
                    y[t * p.ldy + p.n_off + n] = swiglu(acc[r][c], acc[r][c + LANES / 2u]);
                }
            }
        }
        return;
    }
    for (var r = 0u; r < ROWS; r++) {
        let t = t0 + r;
        if (t < p.t) {
            for (var c = 0u; c < LANES; c++) {
                let n = n0 + c;
                if (n < p.n) {
                    var v = acc[r][c];
                    if ((p.flags & 1u) != 0u) { v += bias[n]; }
                    if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
                    y[t * p.ldy + p.n_off + n] = v;
                }
            }
        }
    }
}

// matmul_forward_subgroup_1row: the same for fewer rows (a batch of eight decoded tokens, short
// prompts): one row per lane, so a workgroup computes 8 rows × 8 columns and no more than seven of its
// rows are clamped. Per step of K a lane loads three vectors for 64 FMAs (the four-row kernel nine for
// 256, the per-lane 4×4 tile twelve for 128). Grid: as matmul_forward_subgroup with y = groups of 8 rows.
@compute @workgroup_size(8)
fn matmul_forward_subgroup_1row(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = first_column(wid.x + wid.z * nwg.x);
    // Uniform over the workgroup: no lane leaves while others still broadcast.
    if (n0 >= p.n) { return; }
    let t = wid.y * LANES + lane;
    let k8 = p.k / 8u;
    let xr = min(t, p.t - 1u) * (p.k / 4u);
    let wr = (p.w_row0 + lane_row(n0, lane)) * k8;
    var lo = vec4<f32>(0.0); // columns 0..3
    var hi = vec4<f32>(0.0); // columns 4..7
    for (var i = 0u; i < k8; i++) {
        let q = w4[wr + i];
        let wa = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        let wb = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
        let xa = x4[xr + 2u * i];
        let xb = x4[xr + 2u * i + 1u];
        lo.x += dot(xa, subgroupBroadcast(wa, 0u)) + dot(xb, subgroupBroadcast(wb, 0u));
        lo.y += dot(xa, subgroupBroadcast(wa, 1u)) + dot(xb, subgroupBroadcast(wb, 1u));
        lo.z += dot(xa, subgroupBroadcast(wa, 2u)) + dot(xb, subgroupBroadcast(wb, 2u));
        lo.w += dot(xa, subgroupBroadcast(wa, 3u)) + dot(xb, subgroupBroadcast(wb, 3u));
        hi.x += dot(xa, subgroupBroadcast(wa, 4u)) + dot(xb, subgroupBroadcast(wb, 4u));
        hi.y += dot(xa, subgroupBroadcast(wa, 5u)) + dot(xb, subgroupBroadcast(wb, 5u));
        hi.z += dot(xa, subgroupBroadcast(wa, 6u)) + dot(xb, subgroupBroadcast(wb, 6u));
        hi.w += dot(xa, subgroupBroadcast(wa, 7u)) + dot(xb, subgroupBroadcast(wb, 7u));
    }
    if (swiglu_on()) {
        // lo holds the gate columns, hi the up columns.
        if (t < p.t) {
            for (var c = 0u; c < LANES / 2u; c++) {
                let n = n0 + c;
                if (n < p.n) { y[t * p.ldy + p.n_off + n] = swiglu(lo[c], hi[c]); }
            }
        }
        return;
    }
    if (t < p.t) {
        for (var c = 0u; c < LANES; c++) {
            let n = n0 + c;
            if (n < p.n) {
                var v = select(hi[c & 3u], lo[c & 3u], c < 4u);
                if ((p.flags & 1u) != 0u) { v += bias[n]; }
                if ((p.flags & 2u) != 0u) { v += residual[t * p.ldy + p.n_off + n]; }
                y[t * p.ldy + p.n_off + n] = v;
            }
        }
    }
}

// matmul_backward_dx_subgroup: dX (T, K) (+)= dY[:, n_off + rows] · W[rows] over the weight rows
// first .. first + n, the same DxParams, bindings and flags as matmul_backward_dx in matmul.wgsl
// (K % 8 == 0). A workgroup computes 4 rows × 64 columns of dX: lane j owns the eight columns 8·(8·x + j)
// and loads its own halves of each weight row; the four rows' dY values are loaded once per subgroup
// (lane j loads those of weight row n0 + j, zero past the end) and broadcast, so a lane loads 1.5 values
// per weight row instead of 5. The walk over weight rows takes n / 8 loop iterations (lavapipe stops an
// invocation after about 65536; the host keeps n ≤ 16384 per launch). Grid: x = groups of 64 columns,
// y = groups of four rows. row0 as in matmul.wgsl: weight row n's dY value is in column n_off + n − row0.
struct DxParams { t: u32, n: u32, k: u32, flags: u32, ldy: u32, n_off: u32, first: u32, row0: u32 }
@group(0) @binding(0) var<uniform> pd: DxParams;
@group(0) @binding(1) var<storage, read> dy_rows: array<f32>;         // (T, ldy)
@group(0) @binding(3) var<storage, read_write> dx_rows: array<f32>;   // (T, K)

fn store_dx(t: u32, col: u32, v: f32) {
    let at = t * pd.k + col;
    if ((pd.flags & 1u) != 0u) { dx_rows[at] += v; } else { dx_rows[at] = v; }
}

// Adds weight row `n` (this lane's eight columns, chunk c8 of k8) times the four rows' dY values `g`.
fn dx_step(lo: ptr<function, array<vec4<f32>, 4>>, hi: ptr<function, array<vec4<f32>, 4>>,
           g: vec4<f32>, n: u32, k8: u32, c8: u32) {
    let q = w4[n * k8 + c8];
    let wa = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
    let wb = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
    for (var m = 0u; m < 4u; m++) {
        (*lo)[m] += g[m] * wa;
        (*hi)[m] += g[m] * wb;
    }
}

@compute @workgroup_size(8)
fn matmul_backward_dx_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let k8 = pd.k / 8u;
    let t0 = wid.y * 4u;
    // Uniform over the workgroup: no lane leaves while others still broadcast.
    if (wid.x * LANES >= k8 || t0 >= pd.t || pd.n == 0u) { return; }
    let c8 = wid.x * LANES + lane;
    let ck = min(c8, k8 - 1u);
    let last_t = pd.t - 1u;
    var rows: array<u32, 4>;
    for (var m = 0u; m < 4u; m++) { rows[m] = min(t0 + m, last_t) * pd.ldy + pd.n_off; }
    let base = pd.first - pd.row0; // dY column of weight row `first`, past n_off
    let end = pd.first + pd.n;
    let last_n = end - 1u;
    var lo: array<vec4<f32>, 4>;
    var hi: array<vec4<f32>, 4>;
    for (var n0 = pd.first; n0 < end; n0 += LANES) {
        let nl = min(n0 + lane, last_n) - pd.first + base;
        let live = n0 + lane < end;
        let g = select(vec4<f32>(0.0), vec4<f32>(
            dy_rows[rows[0] + nl], dy_rows[rows[1] + nl], dy_rows[rows[2] + nl], dy_rows[rows[3] + nl],
        ), live);
        // Past the end the dY values are zero and the weight row is clamped to the last one.
        dx_step(&lo, &hi, subgroupBroadcast(g, 0u), n0, k8, ck);
        dx_step(&lo, &hi, subgroupBroadcast(g, 1u), min(n0 + 1u, last_n), k8, ck);
        dx_step(&lo, &hi, subgroupBroadcast(g, 2u), min(n0 + 2u, last_n), k8, ck);
        dx_step(&lo, &hi, subgroupBroadcast(g, 3u), min(n0 + 3u, last_n), k8, ck);
        dx_step(&lo, &hi, subgroupBroadcast(g, 4u), min(n0 + 4u, last_n), k8, ck);
        dx_step(&lo, &hi, subgroupBroadcast(g, 5u), min(n0 + 5u, last_n), k8, ck);
        dx_step(&lo, &hi, subgroupBroadcast(g, 6u), min(n0 + 6u, last_n), k8, ck);
        dx_step(&lo, &hi, subgroupBroadcast(g, 7u), min(n0 + 7u, last_n), k8, ck);
    }
    if (c8 < k8) {
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
}
