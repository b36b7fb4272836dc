// AdamW (torch.optim.AdamW) and global-norm gradient clipping (torch.nn.utils.clip_grad_norm_), in f32.
//
// sum_squares_partial: partial[out_offset + w·64 + l] = Σ x[j]² (or Σ x[j] with `square` = 0) over the
//   elements j = w·16384 + l + 64·i, i < 256, of x (n), one value per invocation; workgroups w cover
//   16384 elements each. Run over every gradient buffer into one partial buffer, then over the partials
//   (square = 0) until a single workgroup's 64 values remain.
// clip_coefficient: one invocation sums those 64 values: norm = grad_scale · sqrt(Σ), and
//   coef = min(max_norm / (norm + 1e-6), 1) as clip_grad_norm_ (coef = 1 when clipping is off);
//   writes clip = (norm, coef).
// adamw_step: one element per invocation, exactly torch's `_single_tensor_adam` with decoupled weight
//   decay, in torch's order of f32 operations, the scalars computed on the host in f64 as Python does:
//     g  = (grad · grad_scale) · coef                     (accumulated micro-batches, then clipping)
//     p  = p · (1 − lr·wd)                                (decoupled weight decay, before the moments)
//     m  = lerp(m, g, 1 − β1)                             (torch's lerp: m + w·(g − m) as one fma)
//     v  = v·β2 + ((1 − β2)·g)·g
//     p  = p + (−lr/bc1)·m / (sqrt(v)/sqrt(bc2) + eps)    (eps outside the square root)
//   with bc1 = 1 − β1^t, bc2 = 1 − β2^t at step t (1-based).
// Every loop runs at most 256 iterations (lavapipe silently stops an invocation after about 65536 loop
// iterations in all).

struct ReduceParams { n: u32, out_offset: u32, square: u32, pad: u32 }

struct ClipParams { count: u32, clip: u32, max_norm: f32, grad_scale: f32 }

struct AdamwParams {
    n: u32, pad0: u32, pad1: u32, pad2: u32,
    decay: f32,            // 1 − lr·wd (1 without weight decay)
    lerp_weight: f32,      // 1 − β1
    beta2: f32,
    one_minus_beta2: f32,
    neg_step_size: f32,    // −lr / (1 − β1^t)
    bc2_sqrt: f32,         // sqrt(1 − β2^t)
    eps: f32,
    grad_scale: f32,       // 1 / accumulation steps (or 1 / items), applied before clipping
}

const WG: u32 = 64u;
const PER_INVOCATION: u32 = 256u;
const PER_WORKGROUP: u32 = 16384u; // WG · PER_INVOCATION

@group(0) @binding(0) var<uniform> rp: ReduceParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;

// Grid: x = workgroup over blocks of 16384 elements.
@compute @workgroup_size(64)
fn sum_squares_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = wid.x * PER_WORKGROUP + lid.x;
    var acc = 0.0;
    for (var i = 0u; i < PER_INVOCATION; i++) {
        let j = base + i * WG;
        if (j >= rp.n) { break; }
        let x = src[j];
        acc += select(x, x * x, rp.square != 0u);
    }
    partial[rp.out_offset + wid.x * WG + lid.x] = acc;
}

@group(0) @binding(0) var<uniform> cp: ClipParams;
@group(0) @binding(1) var<storage, read> sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> clip_out: array<f32>;   // (norm, coef)

// Grid: one workgroup of one invocation.
@compute @workgroup_size(1)
fn clip_coefficient() {
    var total = 0.0;
    for (var i = 0u; i < min(cp.count, WG); i++) {
        total += sums[i];
    }
    let norm = sqrt(total) * cp.grad_scale;
    var coef = 1.0;
    if (cp.clip != 0u) {
        coef = min(cp.max_norm / (norm + 1e-6), 1.0);
    }
    clip_out[0] = norm;
    clip_out[1] = coef;
}

@group(0) @binding(0) var<uniform> ap: AdamwParams;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read> clip: array<f32>;            // (norm, coef)

// Grid: element = x + y · num_workgroups.x · WG (y only past the adapter's per-dimension limit).
@compute @workgroup_size(64)
fn adamw_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * WG;
    if (e >= ap.n) { return; }
    let g = (grad[e] * ap.grad_scale) * clip[1];
    let p = param[e] * ap.decay;
    let m0 = exp_avg[e];
    // torch's lerp: for a weight below 0.5 start + w·(end − start), else end − (1 − w)·(end − start).
    var m: f32;
    if (ap.lerp_weight < 0.5) {
        m = fma(ap.lerp_weight, g - m0, m0);
    } else {
        m = fma(ap.lerp_weight - 1.0, g - m0, g);
    }
    let v = exp_avg_sq[e] * ap.beta2 + (ap.one_minus_beta2 * g) * g;
    let denom = sqrt(v) / ap.bc2_sqrt + ap.eps;
    exp_avg[e] = m;
    exp_avg_sq[e] = v;
    param[e] = p + (ap.neg_step_size * m) / denom;
}
