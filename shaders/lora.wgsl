// LoRA: the low-rank term of an adapted linear layer, y = W x + scale · B (A x), computed beside the
// frozen matmul (which writes W x) and never merged into W.
//   x (T, K) f32 input rows, A (R, K) f32, B (N, R) f32, u (T, R) f32 = x · Aᵀ (kept: backward reads it),
//   y (T, ldy) f32: columns n_off .. n_off + N receive the term (a slice of a fused q/k/v or gate/up
//   output, or a whole output when n_off = 0 and ldy = N).
// Forward in two entry points:
//   lora_down_forward  u = x · Aᵀ                        (one invocation per (t, j))
//   lora_up_forward    y[:, n_off + n] += scale · u · Bᵀ  (one invocation per (t, n); accumulates, +=)
// No workgroup memory or barriers (the shapes are thin: R is 4–64). Backward entry points below.

struct Params {
    t: u32,      // rows (tokens)
    n: u32,      // output features of the adapted projection
    k: u32,      // input features
    r: u32,      // rank
    ldy: u32,    // row stride of y
    n_off: u32,  // first column of y this projection owns
    scale: f32,  // alpha / r, or alpha / sqrt(r) with rsLoRA
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 64u;

// ---- lora_down_forward: u (T, R) = x (T, K) · Aᵀ -------------------------------------------------

@group(0) @binding(1) var<storage, read> down_x: array<f32>;        // (T, K)
@group(0) @binding(2) var<storage, read> down_a: array<f32>;        // (R, K)
@group(0) @binding(3) var<storage, read_write> down_u: array<f32>;  // (T, R)

// Grid: x = groups of WG over T·R (folded into y past the per-dimension limit).
@compute @workgroup_size(WG)
fn lora_down_forward(@builtin(global_invocation_id) gid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.t * p.r) { return; }
    let t = i / p.r;
    let j = i % p.r;
    var acc = 0.0;
    for (var c = 0u; c < p.k; c++) {
        acc += down_x[t * p.k + c] * down_a[j * p.k + c];
    }
    down_u[i] = acc;
}

// ---- lora_up_forward: y[:, n_off + n] += scale · u (T, R) · Bᵀ -------------------------------------

@group(0) @binding(1) var<storage, read> up_u: array<f32>;          // (T, R)
@group(0) @binding(2) var<storage, read> up_b: array<f32>;          // (N, R)
@group(0) @binding(3) var<storage, read_write> up_y: array<f32>;    // (T, ldy)

// Grid: x = groups of WG over N, y = rows.
@compute @workgroup_size(WG)
fn lora_up_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    let t = gid.y;
    if (n >= p.n || t >= p.t) { return; }
    var acc = 0.0;
    for (var j = 0u; j < p.r; j++) {
        acc += up_u[t * p.r + j] * up_b[n * p.r + j];
    }
    let at = t * p.ldy + p.n_off + n;
    up_y[at] = up_y[at] + p.scale * acc;
}

// ---- Backward -------------------------------------------------------------------------------------
// Given dy (T, ldy), the gradient of the loss with respect to y, of which columns n_off .. n_off + N
// belong to this projection:
//   lora_du_backward  du (T, R) = scale · dy[:, slice] · B          (written)
//   lora_db_backward  dB (N, R) += scale · dy[:, slice]ᵀ · u        (accumulates)
//   lora_da_backward  dA (R, K) += duᵀ · x                          (accumulates)
//   lora_dx_backward  dx (T, K) += du · A                           (accumulates, onto the frozen W's dx)
// Parameter gradients accumulate (+=), so micro-batches of one step sum into the same buffers; zero
// them at the start of a step. du must be complete before dA and dx run (separate dispatches).

@group(0) @binding(1) var<storage, read> bdu_dy: array<f32>;        // (T, ldy)
@group(0) @binding(2) var<storage, read> bdu_b: array<f32>;         // (N, R)
@group(0) @binding(3) var<storage, read_write> bdu_du: array<f32>;  // (T, R)

// Grid: x = groups of WG over T·R (folded into y past the per-dimension limit).
@compute @workgroup_size(WG)
fn lora_du_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.t * p.r) { return; }
    let t = i / p.r;
    let j = i % p.r;
    var acc = 0.0;
    for (var n = 0u; n < p.n; n++) {
        acc += bdu_dy[t * p.ldy + p.n_off + n] * bdu_b[n * p.r + j];
    }
    bdu_du[i] = p.scale * acc;
}

@group(0) @binding(1) var<storage, read> bdb_dy: array<f32>;        // (T, ldy)
@group(0) @binding(2) var<storage, read> bdb_u: array<f32>;         // (T, R)
@group(0) @binding(3) var<storage, read_write> bdb_db: array<f32>;  // (N, R)

// Grid: x = groups of WG over N·R (folded into y past the per-dimension limit).
@compute @workgroup_size(WG)
fn lora_db_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n * p.r) { return; }
    let n = i / p.r;
    let j = i % p.r;
    var acc = 0.0;
    for (var t = 0u; t < p.t; t++) {
        acc += bdb_dy[t * p.ldy + p.n_off + n] * bdb_u[t * p.r + j];
    }
    bdb_db[i] = bdb_db[i] + p.scale * acc;
}

@group(0) @binding(1) var<storage, read> bda_du: array<f32>;        // (T, R)
@group(0) @binding(2) var<storage, read> bda_x: array<f32>;         // (T, K)
@group(0) @binding(3) var<storage, read_write> bda_da: array<f32>;  // (R, K)

// Grid: x = groups of WG over R·K (folded into y past the per-dimension limit).
@compute @workgroup_size(WG)
fn lora_da_backward(@builtin(global_invocation_id) gid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.r * p.k) { return; }
    let j = i / p.k;
    let c = i % p.k;
    var acc = 0.0;
    for (var t = 0u; t < p.t; t++) {
        acc += bda_du[t * p.r + j] * bda_x[t * p.k + c];
    }
    bda_da[i] = bda_da[i] + acc;
}

@group(0) @binding(1) var<storage, read> bdx_du: array<f32>;        // (T, R)
@group(0) @binding(2) var<storage, read> bdx_a: array<f32>;         // (R, K)
@group(0) @binding(3) var<storage, read_write> bdx_dx: array<f32>;  // (T, K)

// Grid: x = groups of WG over K, y = rows.
@compute @workgroup_size(WG)
fn lora_dx_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if (c >= p.k || t >= p.t) { return; }
    var acc = 0.0;
    for (var j = 0u; j < p.r; j++) {
        acc += bdx_du[t * p.r + j] * bdx_a[j * p.k + c];
    }
    let at = t * p.k + c;
    bdx_dx[at] = bdx_dx[at] + acc;
}
