// The CPU family's forward matmuls for a few rows (decoding, T ≤ 4) on adapters with subgroups of eight
// (lavapipe), over f16 weights or over GGUF blocks kept packed on the GPU. In a GEMV every weight value
// serves only the T rows, so on llvmpipe (every storage load scalarised per lane: ../shared/lavapipe)
// the speed is set by how many values one load brings: a vec4<u32> of f16 weights brings 8, one of Q4
// blocks 32. The activations are loaded once per subgroup and shared with subgroupBroadcast: lane l loads
// the l-th piece of each row and the others take it from there. Rows are an override constant (ROWS =
// T, one pipeline per row count), so T = 1 does no work for clamped rows.
//
// Y = X · Wᵀ (+ bias) (+ residual): the same Params, flags (bit 0 bias, bit 1 residual, bit 2 the SwiGLU
// epilogue), ldy / n_off and grid folding (column groups = x + z · num_workgroups.x) as matmul_forward in
// matmul.wgsl. A workgroup is one subgroup of eight lanes and computes LANES · COLS = 32 columns: lane l
// owns the four columns n0 + 4l .. n0 + 4l + 4 (weight rows past the end are clamped for loads and never
// stored). SwiGLU (W = gate rows 0..N, then up rows N..2N; p.n = N): lane l owns the two output columns
// n0 + 2l, n0 + 2l + 1 and its four weight rows are their gate rows, then their up rows, so a workgroup
// covers 16 columns; y = silu(gate) · up as matmul.wgsl computes it (each dot product as in plain mode). Only built
// on adapters with Features::SUBGROUP; the host picks these entry points only where the adapter's
// subgroup size is exactly 8 (`Gpu::subgroup_matmul_rows`), so the broadcast lanes exist.
//
// Packed weights (`QuantFormat` in engine/src/gpu/tensor.rs), rows of K values in blocks of 32 (K % 32
// == 0), repacked from GGUF on the host so every load is aligned:
//   scales (N, K/32) u32: pack2x16float(d, m), value = d · q + m (Q4_1 as stored, Q4_0 with m = −8d,
//     Q8_0 with m = 0);
//   Q4 quants (N, K/32) vec4<u32>: GGUF's 16 bytes of a block, byte j holding value j in its low nibble
//     and value j + 16 in its high one; word w thus holds values 4w..4w+3 (low) and 16+4w.. (high);
//   Q8 quants (N, K/32) pairs of vec4<u32>: GGUF's 32 signed bytes, value j in byte j.
// A block's dot product is d · Σ q·x + m · Σ x, in f32 (the f16 path rounds every value to f16 first).

// row0 (matmul.wgsl's pad1, 0 from every other launch): this launch's rows of X and Y are row0 ..
// row0 + ROWS, of the T = p.t in all (5 to 8 rows over packed weights run as two launches of ≤ 4, each
// reading the blocks once: still a quarter of the bytes an f16 expansion would read).
struct Params { t: u32, n: u32, k: u32, flags: u32, ldy: u32, n_off: u32, pad0: u32, row0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;  // (T, K), buffer padded to 16 bytes
@group(0) @binding(2) var<storage, read> w4: array<vec4<u32>>;  // f16 (N, K/8) or a format's quants
@group(0) @binding(3) var<storage, read> bias: array<f32>;      // (N) or a dummy
@group(0) @binding(4) var<storage, read> residual: array<f32>;  // (T, ldy) or a dummy
@group(0) @binding(5) var<storage, read_write> y: array<f32>;   // (T, ldy)
@group(0) @binding(6) var<storage, read> scales: array<u32>;    // (N, K/32) packed formats only

override ROWS: u32 = 4u; // rows of X in this launch, 1..4
const LANES: u32 = 8u;
const COLS: u32 = 4u;    // columns per lane

const FLAG_SWIGLU: u32 = 4u;

fn swiglu_on() -> bool { return (p.flags & FLAG_SWIGLU) != 0u; }

// Output columns per lane: four, or two in SwiGLU mode.
fn lane_columns() -> u32 { return select(COLS, COLS / 2u, swiglu_on()); }

// acc[r][c]: row r, column c of this lane's four weight rows (SwiGLU: gate 0, 1, up 2, 3).
fn store(acc: ptr<function, array<vec4<f32>, 4>>, n0: u32) {
    if (swiglu_on()) {
        for (var r = 0u; r < ROWS; r++) {
            for (var c = 0u; c < 2u; c++) {
                let g = (*acc)[r][c];
                if (p.row0 + r < p.t && n0 + c < p.n) {
                    y[(p.row0 + r) * p.ldy + p.n_off + n0 + c] = g / (1.0 + exp(-g)) * (*acc)[r][c + 2u];
                }
            }
        }
        return;
    }
    for (var r = 0u; r < ROWS; r++) {
        for (var c = 0u; c < COLS; c++) {
            let n = n0 + c;
            if (p.row0 + r < p.t && n < p.n) {
                var v = (*acc)[r][c];
                if ((p.flags & 1u) != 0u) { v += bias[n]; }
                if ((p.flags & 2u) != 0u) { v += residual[(p.row0 + r) * p.ldy + p.n_off + n]; }
                y[(p.row0 + r) * p.ldy + p.n_off + n] = v;
            }
        }
    }
}

// The first column of this lane, and whether the workgroup has any column at all (uniform).
fn first_column(wid: vec3<u32>, nwg: vec3<u32>, lane: u32) -> u32 {
    return (wid.x + wid.z * nwg.x) * (LANES * lane_columns()) + lane * lane_columns();
}

// Start (in units of `per_row`) of each of this lane's four weight rows, clamped to the last row (of the
// gate half and of the up half in SwiGLU mode).
fn row_starts(n0: u32, per_row: u32) -> vec4<u32> {
    let last = p.n - 1u;
    if (swiglu_on()) {
        let a = min(n0, last);
        let b = min(n0 + 1u, last);
        return vec4<u32>(a, b, p.n + a, p.n + b) * per_row;
    }
    return vec4<u32>(min(n0, last), min(n0 + 1u, last), min(n0 + 2u, last), min(n0 + 3u, last)) * per_row;
}

// ---- f16 weights, K % 8 == 0 -------------------------------------------------------------------------
// K in steps of 64: lane l loads chunk i + l (eight values, two vec4) of every row, zero past the end;
// then for each of the eight chunks, broadcast from its lane, every lane multiplies it with its four
// columns' vec4<u32> of weights. Per step and lane: 32 weight loads and 2·T activation loads for
// 256·T FMAs (matmul_forward_cols4: 4 + 2 loads for 32 per eight K values, T < 4).

// b[2r], b[2r + 1]: chunk c of row r (broadcast). c is the same on every lane.
fn f16_chunk(acc: ptr<function, array<vec4<f32>, 4>>, b: ptr<function, array<vec4<f32>, 8>>, wr: vec4<u32>,
             c: u32, k8: u32) {
    if (c >= k8) { return; }
    for (var col = 0u; col < COLS; col++) {
        let q = w4[wr[col] + c];
        let wa = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        let wb = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
        for (var r = 0u; r < ROWS; r++) {
            (*acc)[r][col] += dot(wa, (*b)[2u * r]) + dot(wb, (*b)[2u * r + 1u]);
        }
    }
}

@compute @workgroup_size(8)
fn matmul_decode_f16(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = first_column(wid, nwg, lane);
    // Uniform over the workgroup: no lane leaves while others still broadcast.
    if (n0 - lane * lane_columns() >= p.n) { return; }
    let k8 = p.k / 8u;
    let kx = p.k / 4u;
    let wr = row_starts(n0, k8);
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < k8; i += LANES) {
        let mine = i + lane;
        let live = mine < k8;
        let at = min(mine, k8 - 1u) * 2u;
        var xl: array<vec4<f32>, 8>;
        for (var r = 0u; r < ROWS; r++) {
            xl[2u * r] = select(vec4<f32>(0.0), x4[(p.row0 + r) * kx + at], live);
            xl[2u * r + 1u] = select(vec4<f32>(0.0), x4[(p.row0 + r) * kx + at + 1u], live);
        }
        var b: array<vec4<f32>, 8>;
        for (var j = 0u; j < 2u * ROWS; j++) { b[j] = subgroupBroadcast(xl[j], 0u); }
        f16_chunk(&acc, &b, wr, i, k8);
        for (var j = 0u; j < 2u * ROWS; j++) { b[j] = subgroupBroadcast(xl[j], 1u); }
        f16_chunk(&acc, &b, wr, i + 1u, k8);
        for (var j = 0u; j < 2u * ROWS; j++) { b[j] = subgroupBroadcast(xl[j], 2u); }
        f16_chunk(&acc, &b, wr, i + 2u, k8);
        for (var j = 0u; j < 2u * ROWS; j++) { b[j] = subgroupBroadcast(xl[j], 3u); }
        f16_chunk(&acc, &b, wr, i + 3u, k8);
        for (var j = 0u; j < 2u * ROWS; j++) { b[j] = subgroupBroadcast(xl[j], 4u); }
        f16_chunk(&acc, &b, wr, i + 4u, k8);
        for (var j = 0u; j < 2u * ROWS; j++) { b[j] = subgroupBroadcast(xl[j], 5u); }
        f16_chunk(&acc, &b, wr, i + 5u, k8);
        for (var j = 0u; j < 2u * ROWS; j++) { b[j] = subgroupBroadcast(xl[j], 6u); }
        f16_chunk(&acc, &b, wr, i + 6u, k8);
        for (var j = 0u; j < 2u * ROWS; j++) { b[j] = subgroupBroadcast(xl[j], 7u); }
        f16_chunk(&acc, &b, wr, i + 7u, k8);
    }
    store(&acc, n0);
}

// ---- Q4 blocks (Q4_0, Q4_1) ---------------------------------------------------------------------------
// One block (32 values) per step: lane l loads the l-th vec4 of the block's activations of every row;
// word w of each column's quants meets vec4 w (low nibbles) and vec4 4 + w (high ones), broadcast from
// lanes w and 4 + w. Per block and lane: 4 quant vec4, 4 scales and T activation loads for 128·T FMAs.

fn q4_lo(q: u32) -> vec4<f32> { return vec4<f32>((vec4<u32>(q) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u)); }
fn q4_hi(q: u32) -> vec4<f32> { return vec4<f32>((vec4<u32>(q) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u)); }

// qd[r][c] += Σ q·x over word w of column c; xs[r] += Σ x over those values.
fn q4_word(qd: ptr<function, array<vec4<f32>, 4>>, xs: ptr<function, vec4<f32>>,
           lo: ptr<function, array<vec4<f32>, 4>>, hi: ptr<function, array<vec4<f32>, 4>>,
           qv: ptr<function, array<vec4<u32>, 4>>, w: u32) {
    for (var r = 0u; r < ROWS; r++) { (*xs)[r] += dot((*lo)[r] + (*hi)[r], vec4<f32>(1.0)); }
    for (var c = 0u; c < COLS; c++) {
        let q = (*qv)[c][w];
        let ql = q4_lo(q);
        let qh = q4_hi(q);
        for (var r = 0u; r < ROWS; r++) { (*qd)[r][c] += dot(ql, (*lo)[r]) + dot(qh, (*hi)[r]); }
    }
}

@compute @workgroup_size(8)
fn matmul_decode_q4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = first_column(wid, nwg, lane);
    // Uniform over the workgroup: no lane leaves while others still broadcast.
    if (n0 - lane * lane_columns() >= p.n) { return; }
    let nb = p.k / 32u;
    let kx = p.k / 4u;
    let br = row_starts(n0, nb);
    var acc: array<vec4<f32>, 4>;
    for (var b = 0u; b < nb; b++) {
        var xl: array<vec4<f32>, 4>;
        for (var r = 0u; r < ROWS; r++) { xl[r] = x4[(p.row0 + r) * kx + 8u * b + lane]; }
        var qv: array<vec4<u32>, 4>;
        for (var c = 0u; c < COLS; c++) { qv[c] = w4[br[c] + b]; }
        var qd: array<vec4<f32>, 4>;
        var xs = vec4<f32>(0.0);
        var lo: array<vec4<f32>, 4>;
        var hi: array<vec4<f32>, 4>;
        for (var r = 0u; r < ROWS; r++) { lo[r] = subgroupBroadcast(xl[r], 0u); hi[r] = subgroupBroadcast(xl[r], 4u); }
        q4_word(&qd, &xs, &lo, &hi, &qv, 0u);
        for (var r = 0u; r < ROWS; r++) { lo[r] = subgroupBroadcast(xl[r], 1u); hi[r] = subgroupBroadcast(xl[r], 5u); }
        q4_word(&qd, &xs, &lo, &hi, &qv, 1u);
        for (var r = 0u; r < ROWS; r++) { lo[r] = subgroupBroadcast(xl[r], 2u); hi[r] = subgroupBroadcast(xl[r], 6u); }
        q4_word(&qd, &xs, &lo, &hi, &qv, 2u);
        for (var r = 0u; r < ROWS; r++) { lo[r] = subgroupBroadcast(xl[r], 3u); hi[r] = subgroupBroadcast(xl[r], 7u); }
        q4_word(&qd, &xs, &lo, &hi, &qv, 3u);
        for (var c = 0u; c < COLS; c++) {
            let s = unpack2x16float(scales[br[c] + b]);
            for (var r = 0u; r < ROWS; r++) { acc[r][c] += s.x * qd[r][c] + s.y * xs[r]; }
        }
    }
    store(&acc, n0);
}

// ---- Q8 blocks (Q8_0) ---------------------------------------------------------------------------------
// As the Q4 kernel with two quant vec4 per block and column: word w (0..7) holds values 4w..4w+3 and
// meets the activations' vec4 w, broadcast from lane w. Per block and lane: 8 quant vec4, 4 scales and
// T activation loads for 128·T FMAs.

fn q8(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<i32>(q)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// qd[r][c] += Σ q·x over word w of column c's half `qv` (words 0..3 or 4..7 of the block).
fn q8_word(qd: ptr<function, array<vec4<f32>, 4>>, xb: ptr<function, array<vec4<f32>, 4>>,
           qv: ptr<function, array<vec4<u32>, 4>>, w: u32) {
    for (var c = 0u; c < COLS; c++) {
        let q = q8((*qv)[c][w]);
        for (var r = 0u; r < ROWS; r++) { (*qd)[r][c] += dot(q, (*xb)[r]); }
    }
}

@compute @workgroup_size(8)
fn matmul_decode_q8(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let n0 = first_column(wid, nwg, lane);
    // Uniform over the workgroup: no lane leaves while others still broadcast.
    if (n0 - lane * lane_columns() >= p.n) { return; }
    let nb = p.k / 32u;
    let kx = p.k / 4u;
    let br = row_starts(n0, nb);
    var acc: array<vec4<f32>, 4>;
    for (var b = 0u; b < nb; b++) {
        var xl: array<vec4<f32>, 4>;
        for (var r = 0u; r < ROWS; r++) { xl[r] = x4[(p.row0 + r) * kx + 8u * b + lane]; }
        var qd: array<vec4<f32>, 4>;
        var qv: array<vec4<u32>, 4>;
        var xb: array<vec4<f32>, 4>;
        for (var c = 0u; c < COLS; c++) { qv[c] = w4[2u * (br[c] + b)]; }
        for (var r = 0u; r < ROWS; r++) { xb[r] = subgroupBroadcast(xl[r], 0u); }
        q8_word(&qd, &xb, &qv, 0u);
        for (var r = 0u; r < ROWS; r++) { xb[r] = subgroupBroadcast(xl[r], 1u); }
        q8_word(&qd, &xb, &qv, 1u);
        for (var r = 0u; r < ROWS; r++) { xb[r] = subgroupBroadcast(xl[r], 2u); }
        q8_word(&qd, &xb, &qv, 2u);
        for (var r = 0u; r < ROWS; r++) { xb[r] = subgroupBroadcast(xl[r], 3u); }
        q8_word(&qd, &xb, &qv, 3u);
        for (var c = 0u; c < COLS; c++) { qv[c] = w4[2u * (br[c] + b) + 1u]; }
        for (var r = 0u; r < ROWS; r++) { xb[r] = subgroupBroadcast(xl[r], 4u); }
        q8_word(&qd, &xb, &qv, 0u);
        for (var r = 0u; r < ROWS; r++) { xb[r] = subgroupBroadcast(xl[r], 5u); }
        q8_word(&qd, &xb, &qv, 1u);
        for (var r = 0u; r < ROWS; r++) { xb[r] = subgroupBroadcast(xl[r], 6u); }
        q8_word(&qd, &xb, &qv, 2u);
        for (var r = 0u; r < ROWS; r++) { xb[r] = subgroupBroadcast(xl[r], 7u); }
        q8_word(&qd, &xb, &qv, 3u);
        for (var c = 0u; c < COLS; c++) {
            let d = unpack2x16float(scales[br[c] + b]).x;
            for (var r = 0u; r < ROWS; r++) { acc[r][c] += d * qd[r][c]; }
        }
    }
    store(&acc, n0);
}
