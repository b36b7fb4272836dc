// Normalisations, one invocation per row (no workgroup memory: the row loop is short).
//
// rms_norm_forward: out[r] = x[src(r)] / sqrt(mean(x[src(r)]²) + eps) * w
//   x (R_in, D), w (D), out (R, D); src(r) = rows[r] when flags bit 0 (gather, e.g. the last token of
//   each sequence before the LM head), else r.
// layer_norm_forward: out[r] = (x[r] - mean) / sqrt(var + eps) * w + b, x (R, D), w (D), b (D);
//   x and out must be different buffers (one is bound read-only, the other read-write).
// Grid: row = x + y · num_workgroups.x · WG (y only past the adapter's per-dimension limit).

struct Params { rows: u32, dim: u32, eps: f32, flags: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<u32>;        // rms: row map; layer: bias as f32 bits
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn rms_norm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * WG;
    if (r >= p.rows) { return; }
    var src = r;
    // The map is the caller's; clamped to x's rows so that no map reads outside x (this module runs
    // without naga's bounds checks).
    if ((p.flags & 1u) != 0u) { src = min(aux[r], arrayLength(&x) / max(p.dim, 1u) - 1u); }
    let base = src * p.dim;
    var ss = 0.0;
    for (var i = 0u; i < p.dim; i++) {
        let v = x[base + i];
        ss += v * v;
    }
    let inv = inverseSqrt(ss / f32(p.dim) + p.eps);
    let ob = r * p.dim;
    for (var i = 0u; i < p.dim; i++) {
        out[ob + i] = x[base + i] * inv * w[i];
    }
}

@compute @workgroup_size(WG)
fn layer_norm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * WG;
    if (r >= p.rows) { return; }
    let base = r * p.dim;
    var mean = 0.0;
    for (var i = 0u; i < p.dim; i++) { mean += x[base + i]; }
    mean /= f32(p.dim);
    var var_ = 0.0;
    for (var i = 0u; i < p.dim; i++) {
        let d = x[base + i] - mean;
        var_ += d * d;
    }
    let inv = inverseSqrt(var_ / f32(p.dim) + p.eps);
    for (var i = 0u; i < p.dim; i++) {
        out[base + i] = (x[base + i] - mean) * inv * w[i] + bitcast<f32>(aux[i]);
    }
}

// Training. rms_norm_train_forward: rms_norm_forward without the gather, also saving
//   inv_rms[r] = 1 / sqrt(mean(x[r]²) + eps) for the backward. x (R, D), w (D), out (R, D), inv_rms (R).
// rms_norm_backward: dx[r] = inv·(w ⊙ dy[r]) − x[r] · inv³ / D · Σᵢ wᵢ dy[r, i] x[r, i], with inv the saved
//   1/rms; flags bit 0 adds into dx (the residual stream's gradient) instead of overwriting it. The norm
//   weight is frozen: no gradient for w. Any row length: also Qwen3's per-head q/k norms (rows of hd).
// One invocation per row: 2·D loop iterations, within lavapipe's budget of about 65536 per invocation.
@group(0) @binding(3) var<storage, read_write> out_rows: array<f32>;     // train forward: (R, D)
@group(0) @binding(4) var<storage, read_write> inv_rms_out: array<f32>;  // train forward: (R)
@group(0) @binding(3) var<storage, read> dy: array<f32>;                 // backward: (R, D)
@group(0) @binding(4) var<storage, read> inv_rms: array<f32>;            // backward: (R)
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;           // backward: (R, D)

@compute @workgroup_size(WG)
fn rms_norm_train_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * WG;
    if (r >= p.rows) { return; }
    let base = r * p.dim;
    var ss = 0.0;
    for (var i = 0u; i < p.dim; i++) {
        let v = x[base + i];
        ss += v * v;
    }
    let inv = inverseSqrt(ss / f32(p.dim) + p.eps);
    inv_rms_out[r] = inv;
    for (var i = 0u; i < p.dim; i++) {
        out_rows[base + i] = x[base + i] * inv * w[i];
    }
}

@compute @workgroup_size(WG)
fn rms_norm_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * WG;
    if (r >= p.rows) { return; }
    let base = r * p.dim;
    let inv = inv_rms[r];
    var dot = 0.0;
    for (var i = 0u; i < p.dim; i++) { dot += w[i] * dy[base + i] * x[base + i]; }
    let c = dot * inv * inv * inv / f32(p.dim);
    let accumulate = (p.flags & 1u) != 0u;
    for (var i = 0u; i < p.dim; i++) {
        var g = inv * w[i] * dy[base + i] - c * x[base + i];
        if (accumulate) { g += dx[base + i]; }
        dx[base + i] = g;
    }
}
