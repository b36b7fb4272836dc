// The LM head fused with a chunked log-softmax / cross-entropy and its gradient: T × vocabulary logits
// are never resident at once (Qwen's vocabulary is 151,936), only a (T, C) chunk of them.
//
// Forward, per chunk of C vocabulary rows (weight rows r0 .. r0 + C of one row block, vocabulary ids
// v0 .. v0 + C): the chunk's logits (T, C) = h (T, D) · W[r0 .. r0 + C]ᵀ (xent_logits_chunk here, or the
// broadcast matmul of matmul_subgroup.wgsl on adapters with subgroups of eight), then
// xent_online_forward folds them into each row's running max, running Σ exp and the target's logit
// (stats (T, 4)); after the last chunk xent_finish_forward writes lse_t = max + log Σ and
// nll_t = lse_t − logit_t[y_t] (0 for a target id ≥ vocab: an ignored row).
// Backward, per chunk: the logits recomputed, xent_dlogits_backward turns them in place into
// g_t · (exp(logit − lse_t) − 1[v = y_t]) (0 on ignored rows), and the frozen linear's dX kernel
// (matmul.wgsl / matmul_subgroup.wgsl, over the chunk's weight rows) adds that chunk · W[r0 .. r0 + C]
// into dh (T, D). W is frozen: no gradient.
// Forward and backward in one walk (when g is known before the forward, as for a mean cross-entropy):
// per chunk the logits, the online update (which also saves the factor exp(old max − new max) that
// rescales what earlier chunks summed), xent_exp_forward turns the chunk into exp(logit − running max),
// xent_rescale_forward scales dh_t by factor_t and the dX kernel adds chunk · W_chunk; at the end
// xent_finish_grad_backward scales dh_t by g_t / Σ_t (zero on ignored rows) and, per row block,
// xent_target_row_backward subtracts g_t · w_{y_t}.
// D must be a multiple of 8 (vector loads). lavapipe stops an invocation after about 65536 loop
// iterations in all, so the host keeps C ≤ 4096 (the longest loops walk a chunk: 2C and C·4).
// Grids: xent_logits_chunk's x (chunk columns in fours) folds into z (index x + z · num_workgroups.x ·
// WG), y = groups of four rows; 1-D grids fold into y.

// t rows, d hidden size, c chunk columns, r0 the chunk's first row within its weight block, v0 its first
// vocabulary id, vocab the vocabulary size; flags bit 0: first chunk (online) / accumulate into dh.
struct Params { t: u32, d: u32, c: u32, r0: u32, v0: u32, vocab: u32, flags: u32, pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
// Bindings are numbered per entry point (1, 2, … in the order the host passes its buffers).
@group(0) @binding(1) var<storage, read> h4: array<vec4<f32>>;        // logits_chunk: h (T, D)
@group(0) @binding(1) var<storage, read> targets: array<u32>;         // online, finish, dlogits: y (T)
@group(0) @binding(1) var<storage, read> dl: array<f32>;              // exp, rescale: stats (T, 4)
@group(0) @binding(2) var<storage, read> w4: array<vec4<u32>>;        // logits_chunk, target_row: block (rows, D/2)
@group(0) @binding(2) var<storage, read> in2: array<f32>;             // online: chunk (T, C); finish: stats; dlogits: lse (T)
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;      // logits chunk / stats (T, 4) / lse (T)
@group(0) @binding(3) var<storage, read> grad: array<f32>;            // dlogits: g (T)
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;      // exp: the chunk, in place; rescale: dh (T, D)
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;      // finish: nll (T); dlogits: the chunk, in place; finish_grad, target_row: dh

override WG: u32 = 64u;

// Grid: x (+ z) = groups of four chunk columns, y = groups of four rows. A 4×4 register tile.
@compute @workgroup_size(WG)
fn xent_logits_chunk(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n0 = (gid.x + gid.z * nwg.x * WG) * 4u;
    let t0 = gid.y * 4u;
    if (n0 >= p.c || t0 >= p.t) { return; }
    let k8 = p.d / 8u;
    let kx = p.d / 4u;
    var xr: array<u32, 4>;
    var wr: array<u32, 4>;
    for (var m = 0u; m < 4u; m++) {
        xr[m] = min(t0 + m, p.t - 1u) * kx;
        wr[m] = (p.r0 + min(n0 + m, p.c - 1u)) * k8;
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
            let xa = h4[xr[r] + 2u * i];
            let xb = h4[xr[r] + 2u * i + 1u];
            acc[r] += vec4<f32>(
                dot(wa[0], xa) + dot(wb[0], xb),
                dot(wa[1], xa) + dot(wb[1], xb),
                dot(wa[2], xa) + dot(wb[2], xb),
                dot(wa[3], xa) + dot(wb[3], xb),
            );
        }
    }
    for (var r = 0u; r < 4u; r++) {
        for (var c = 0u; c < 4u; c++) {
            if (t0 + r < p.t && n0 + c < p.c) { out3[(t0 + r) * p.c + n0 + c] = acc[r][c]; }
        }
    }
}

// Grid: 1-D over rows. stats row: (running max, running Σ exp(logit − max), target logit, unused).
@compute @workgroup_size(WG)
fn xent_online_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    if (t >= p.t) { return; }
    let row = t * p.c;
    var m = in2[row];
    for (var j = 1u; j < p.c; j++) { m = max(m, in2[row + j]); }
    var s = 0.0;
    for (var j = 0u; j < p.c; j++) { s += exp(in2[row + j] - m); }
    let y = targets[t];
    let hit = y >= p.v0 && y - p.v0 < p.c;
    var tl = 0.0;
    if (hit) { tl = in2[row + y - p.v0]; }
    let at = 4u * t;
    if ((p.flags & 1u) != 0u) {
        out3[at] = m;
        out3[at + 1u] = s;
        out3[at + 2u] = tl;
        out3[at + 3u] = 0.0;
        return;
    }
    let m0 = out3[at];
    let mn = max(m0, m);
    out3[at + 1u] = out3[at + 1u] * exp(m0 - mn) + s * exp(m - mn);
    out3[at] = mn;
    out3[at + 3u] = exp(m0 - mn);
    if (hit) { out3[at + 2u] = tl; }
}

// Grid: 1-D over rows. lse into out3, nll into out4.
@compute @workgroup_size(WG)
fn xent_finish_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    if (t >= p.t) { return; }
    let lse = in2[4u * t] + log(in2[4u * t + 1u]);
    out3[t] = lse;
    out4[t] = select(0.0, lse - in2[4u * t + 2u], targets[t] < p.vocab);
}

// Grid: 1-D over the chunk's T · C elements: logits → g_t · (softmax − one-hot), in place.
@compute @workgroup_size(WG)
fn xent_dlogits_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.t * p.c) { return; }
    let t = i / p.c;
    let y = targets[t];
    if (y >= p.vocab) {
        out4[i] = 0.0;
        return;
    }
    var d = exp(out4[i] - in2[t]);
    if (p.v0 + i % p.c == y) { d -= 1.0; }
    out4[i] = d * grad[t];
}

// Grid: 1-D over the chunk's T · C elements: logits → exp(logit − the row's running max), in place.
@compute @workgroup_size(WG)
fn xent_exp_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.t * p.c) { return; }
    out2[i] = exp(out2[i] - dl[4u * (i / p.c)]);
}

// Grid: 1-D over T · D: dh_t = dh_t · factor_t (stats[t][3], exp(old max − new max) from the online
// update), before the next chunk adds its product; 0 where the factor underflowed.
@compute @workgroup_size(WG)
fn xent_rescale_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.t * p.d) { return; }
    let factor = dl[4u * (i / p.d) + 3u];
    out2[i] = select(out2[i] * factor, 0.0, factor == 0.0);
}

// Grid: 1-D over T · D: dh_t = g_t · dh_t / Σ_t (the softmax part), 0 on ignored rows.
@compute @workgroup_size(WG)
fn xent_finish_grad_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.t * p.d) { return; }
    let t = i / p.d;
    out4[i] = select(0.0, grad[t] * out4[i] / in2[4u * t + 1u], targets[t] < p.vocab);
}

// Grid: 1-D over T · D/2: dh_t −= g_t · w_{y_t} for the rows whose target lies in this row block
// (vocabulary ids v0 .. v0 + c).
@compute @workgroup_size(WG)
fn xent_target_row_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let half_d = p.d / 2u;
    if (i >= p.t * half_d) { return; }
    let t = i / half_d;
    let y = targets[t];
    if (y < p.v0 || y - p.v0 >= p.c) { return; }
    let e = (y - p.v0) * half_d + i % half_d;
    let w = unpack2x16float(w4[e >> 2u][e & 3u]);
    let at = t * p.d + 2u * (i % half_d);
    out4[at] -= grad[t] * w.x;
    out4[at + 1u] -= grad[t] * w.y;
}
