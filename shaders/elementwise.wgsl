// Row gathers, activations and reductions that need no weights.
//
// embed_rows_forward: out (T, D) = table[ids[t]] for a frozen f16 table (V, D) packed in u32; D even.
// swiglu_forward: out (T, I) = silu(gu[t, :I]) · gu[t, I:], gu (T, 2I) from the fused gate/up matmul.
// gelu_forward: x = x · Φ(x) in place (exact erf GELU, as BERT's "gelu").
// logprob_{partial,combine}_forward: out[r] = logits[r, target[r]] − logsumexp(logits[r, :]), (R, V).
// mean_pool_forward: out (B, D) = mean of x rows [start_b, start_b + len_b) (attention-mask pooling).
// l2_normalize_forward: each row divided by its L2 norm, in place.
// dropout_{forward,backward}: out = keep(i) ? x · s : 0, dx += keep(i) ? dy · s : 0 (LoRA's input dropout).
// gather_rows_forward: out (R, D) = x[rows[i]]; scatter_rows_forward: out[rows[i]] = x[i] (R, D), other rows
//   of out untouched (the LM head's cross-entropy over the rows that have a target).
// Grids wider than the adapter's per-dimension limit fold: a 2-D grid's x continues in z (index
// x + z · num_workgroups.x · WG), a 1-D grid's in y.

struct Params { rows: u32, dim: u32, extra: u32, flags: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;            // ids / targets / (start, len) pairs
@group(0) @binding(2) var<storage, read> table: array<u32>;          // (V, D/2) packed f16
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

// Grid: x = column pair, y = row.
@compute @workgroup_size(WG)
fn embed_rows_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.z * nwg.x * WG;
    let t = gid.y;
    let half_d = p.dim / 2u;
    if (c >= half_d || t >= p.rows) { return; }
    let id = min(idx[t], p.extra - 1u); // ids are validated on the host; clamp guards the buffer
    let v = unpack2x16float(table[id * half_d + c]);
    out[t * p.dim + 2u * c] = v.x;
    out[t * p.dim + 2u * c + 1u] = v.y;
}

@group(0) @binding(1) var<storage, read> gu: array<f32>;             // (T, 2I)
@group(0) @binding(2) var<storage, read_write> act: array<f32>;      // (T, I)

// Grid: x = feature, y = row.
@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.z * nwg.x * WG;
    let t = gid.y;
    if (i >= p.dim || t >= p.rows) { return; }
    let g = gu[t * 2u * p.dim + i];
    let u = gu[t * 2u * p.dim + p.dim + i];
    act[t * p.dim + i] = g / (1.0 + exp(-g)) * u;
}

@group(0) @binding(1) var<storage, read_write> xs: array<f32>;

// erf by Abramowitz & Stegun 7.1.26 refined: max abs error 1.5e-7.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return sign(x) * y;
}

// Grid: element = x + y · num_workgroups.x · WG.
@compute @workgroup_size(WG)
fn gelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= p.rows * p.dim) { return; }
    let v = xs[e];
    xs[e] = 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
}

// Log-probs: pass 1 binds (logits_p, partial), pass 2 (idx, logits, partial_in, lp_out).
@group(0) @binding(1) var<storage, read> logits_p: array<f32>;              // (R, V)
@group(0) @binding(2) var<storage, read_write> partial: array<vec2<f32>>;   // (R, C) (max, Σ exp(x − max))
@group(0) @binding(2) var<storage, read> logits: array<f32>;                // (R, V)
@group(0) @binding(3) var<storage, read> partial_in: array<vec2<f32>>;      // (R, C)
@group(0) @binding(4) var<storage, read_write> lp_out: array<f32>;          // (R)

// Columns per chunk. Every invocation stays far below lavapipe's budget of about 65536 loop iterations
// in all, past which it silently stops (a 49152-iteration max loop followed by a sum left the sum with
// its first 16384 entries).
const LOGPROB_CHUNK: u32 = 1024u;

// Pass 1. Grid: x = chunk of 1024 columns, y = row. p.extra = number of chunks C.
@compute @workgroup_size(WG)
fn logprob_partial_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.z * nwg.x * WG;
    let r = gid.y;
    if (c >= p.extra || r >= p.rows) { return; }
    let base = r * p.dim;
    let end = min((c + 1u) * LOGPROB_CHUNK, p.dim);
    var m = -3.0e38;
    for (var i = c * LOGPROB_CHUNK; i < end; i++) { m = max(m, logits_p[base + i]); }
    var sum = 0.0;
    for (var i = c * LOGPROB_CHUNK; i < end; i++) { sum += exp(logits_p[base + i] - m); }
    partial[r * p.extra + c] = vec2<f32>(m, sum);
}

// Pass 2. One invocation per row: out[r] = logits[r, target] − logsumexp over the row's partials.
@compute @workgroup_size(WG)
fn logprob_combine_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * WG;
    if (r >= p.rows) { return; }
    var m = -3.0e38;
    for (var c = 0u; c < p.extra; c++) { m = max(m, partial_in[r * p.extra + c].x); }
    var sum = 0.0;
    for (var c = 0u; c < p.extra; c++) {
        let q = partial_in[r * p.extra + c];
        sum += q.y * exp(q.x - m);
    }
    lp_out[r] = logits[r * p.dim + min(idx[r], p.dim - 1u)] - m - log(sum);
}

@group(0) @binding(2) var<storage, read> xr: array<f32>;             // (T, D)

// Grid: x = feature, y = sequence. idx holds (start, len) per sequence.
@compute @workgroup_size(WG)
fn mean_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.z * nwg.x * WG;
    let b = gid.y;
    if (i >= p.dim || b >= p.rows) { return; }
    let start = idx[2u * b];
    let len = idx[2u * b + 1u];
    // The spans are the caller's: rows past the end of x are skipped, so that no span reads outside x
    // (this module runs without naga's bounds checks).
    let x_rows = arrayLength(&xr) / p.dim;
    var acc = 0.0;
    for (var r = 0u; r < len; r++) {
        let row = start + r;
        if (row >= x_rows) { break; }
        acc += xr[row * p.dim + i];
    }
    out[b * p.dim + i] = acc / f32(max(len, 1u));
}

// One invocation per row: x[r] /= max(‖x[r]‖, 1e-12), in place (as torch.nn.functional.normalize).
@compute @workgroup_size(WG)
fn l2_normalize_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * WG;
    if (r >= p.rows) { return; }
    var ss = 0.0;
    for (var i = 0u; i < p.dim; i++) { ss += xs[r * p.dim + i] * xs[r * p.dim + i]; }
    let inv = 1.0 / max(sqrt(ss), 1e-12);
    for (var i = 0u; i < p.dim; i++) { xs[r * p.dim + i] *= inv; }
}

// embed_rows_add_forward: out (T, D) += table[ids[t] − first] for ids in [first, first + V), other rows left
// as they are (same bindings and grid as embed_rows_forward; p.flags = first). Sums the word, position and
// token-type embeddings of a BERT-family encoder, one gather per table, and lets a vocabulary larger than
// one storage binding be split into row blocks.
@compute @workgroup_size(WG)
fn embed_rows_add_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.z * nwg.x * WG;
    let t = gid.y;
    let half_d = p.dim / 2u;
    if (c >= half_d || t >= p.rows) { return; }
    let id = idx[t];
    if (id < p.flags || id - p.flags >= p.extra) { return; }
    let v = unpack2x16float(table[(id - p.flags) * half_d + c]);
    out[t * p.dim + 2u * c] += v.x;
    out[t * p.dim + 2u * c + 1u] += v.y;
}

// swiglu_backward: from dact (T, I) and the saved gu (T, 2I), dgu (T, 2I) = (d gate, d up):
//   d gate = dact · u · σ(g) · (1 + g · (1 − σ(g))), d up = dact · silu(g). Writes `out` (binding 3).
//   Same grid as swiglu_forward.
@group(0) @binding(2) var<storage, read> dact: array<f32>;           // (T, I)

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= p.dim || t >= p.rows) { return; }
    let at = t * 2u * p.dim + i;
    let g = gu[at];
    let u = gu[at + p.dim];
    let d = dact[t * p.dim + i];
    let sg = 1.0 / (1.0 + exp(-g));
    out[at] = d * u * sg * (1.0 + g * (1.0 - sg));
    out[at + p.dim] = d * g * sg;
}

// Dropout of LoRA's input, PEFT's `lora_B(lora_A(dropout(x)))`: a mask drawn per element from a counter-based
// hash, so the backward recomputes the forward's mask from the same seed instead of storing it.
//   pcg(v): the PCG hash of Jarzynski & Olano, "Hash Functions for GPU Rendering" (JCGT 2020), a bijection
//     on u32 (wrapping arithmetic): state = v · 747796405 + 2891336453;
//     word = ((state >> ((state >> 28) + 4)) ^ state) · 277803737; pcg = (word >> 22) ^ word.
//   h(i) = pcg(pcg(pcg(i) ^ seed_lo) ^ seed_hi): i is hashed before a seed word enters, so two seeds give
//     unrelated masks rather than shifted or permuted copies of one another.
//   keep(i) = (h(i) >> 8) >= threshold, threshold = u32(p · 2^24) (host-computed): p = 0 keeps everything,
//     and P(keep) = 1 − threshold / 2^24.
//   s = 1 / (1 − p), rounded to f32 once on the host (torch's fused dropout multiplies by it too): a
//     product is correctly rounded in WGSL where a quotient need not be, so cpu_ref matches bit for bit.
// dropout_forward: out[i] = keep(i) ? x[i] · s : 0. dropout_backward: dx[i] += keep(i) ? dy[i] · s : 0
// (accumulates: x also feeds the frozen linear, whose input gradient lands in dx as well).
// Grid: element = x + y · num_workgroups.x · WG.
struct DropoutParams {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32, // u32(p · 2^24)
    scale: f32,     // 1 / (1 − p)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> dp: DropoutParams;
@group(0) @binding(1) var<storage, read> drop_in: array<f32>;        // (n) x (forward) / dy (backward)
@group(0) @binding(2) var<storage, read_write> drop_out: array<f32>; // (n) out (forward) / dx (backward)

fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn dropout_keep(i: u32) -> bool {
    let h = pcg_hash(pcg_hash(pcg_hash(i) ^ dp.seed_lo) ^ dp.seed_hi);
    return (h >> 8u) >= dp.threshold;
}

@compute @workgroup_size(WG)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= dp.n) { return; }
    drop_out[i] = select(0.0, drop_in[i] * dp.scale, dropout_keep(i));
}

@compute @workgroup_size(WG)
fn dropout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= dp.n) { return; }
    if (dropout_keep(i)) { drop_out[i] += drop_in[i] * dp.scale; }
}

// Row gathers and scatters of f32 rows: rows = idx (R), each clamped to the `extra` rows of the indexed
// side (the host builds the map; the clamp guards the buffer). Grid: 1-D over R · D, folded into y.
@group(0) @binding(2) var<storage, read> rows_src: array<f32>;

@compute @workgroup_size(WG)
fn gather_rows_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.rows * p.dim) { return; }
    let r = i / p.dim;
    let src = min(idx[r], p.extra - 1u);
    out[i] = rows_src[src * p.dim + i % p.dim];
}

@compute @workgroup_size(WG)
fn scatter_rows_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.rows * p.dim) { return; }
    let r = i / p.dim;
    let dst = min(idx[r], p.extra - 1u);
    out[dst * p.dim + i % p.dim] = rows_src[i];
}
