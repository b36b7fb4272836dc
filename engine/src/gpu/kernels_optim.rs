//! Typed launches of the optimizer kernels (`shaders/adamw.wgsl`): the sum of squares of gradient
//! buffers, the clip coefficient of global-norm clipping, and the AdamW update. Sizes are checked here and
//! a mismatch is an error, never a clamped read.

use bytemuck::{Pod, Zeroable};

use crate::gpu::check::{need, to_u32};
use crate::gpu::kernels::grid_1d;
use crate::gpu::shaders::ADAMW;
use crate::gpu::{Batch, Tensor};
use crate::{Error, Result};

/// Elements one workgroup of `sum_squares_partial` covers (64 invocations × 256 elements).
pub const SUM_PER_WORKGROUP: usize = 16384;
/// Partial sums one workgroup of `sum_squares_partial` writes.
pub const SUM_PARTIALS_PER_WORKGROUP: usize = 64;
const MAX_GROUPS: usize = 65535;

/// Parameters of `sum_squares_partial` (mirrors `ReduceParams`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    n: u32,
    out_offset: u32,
    square: u32,
    pad: u32,
}

/// Parameters of `clip_coefficient` (mirrors `ClipParams`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ClipParams {
    count: u32,
    clip: u32,
    max_norm: f32,
    grad_scale: f32,
}

/// The scalars of one AdamW step, computed on the host in f64 as torch does in Python and rounded to
/// f32 when the kernel uses them (mirrors `AdamwParams` after its element count).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwScalars {
    /// `1 − lr·weight_decay`; exactly 1 for a parameter without weight decay.
    pub decay: f32,
    /// `1 − β1`, the weight of torch's `exp_avg.lerp_(grad, 1 − β1)`.
    pub lerp_weight: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `−lr / (1 − β1^t)`.
    pub neg_step_size: f32,
    /// `sqrt(1 − β2^t)`.
    pub bc2_sqrt: f32,
    pub eps: f32,
    /// Scale of the accumulated gradient before clipping (1 / accumulation steps, or 1 / items).
    pub grad_scale: f32,
}

impl AdamwScalars {
    /// The scalars of step `t` (1-based) at learning rate `lr`, as `_single_tensor_adam` computes them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        t: u64,
        grad_scale: f32,
    ) -> Self {
        let t = t as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        Self {
            decay: if weight_decay != 0.0 { (1.0 - lr * weight_decay) as f32 } else { 1.0 },
            lerp_weight: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
            bc2_sqrt: bias_correction2.sqrt() as f32,
            eps: eps as f32,
            grad_scale,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AdamwParams {
    n: u32,
    pad: [u32; 3],
    decay: f32,
    lerp_weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    neg_step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    grad_scale: f32,
}

/// Workgroups of `sum_squares_partial` over `n` elements: at least one, so an empty buffer still
/// writes its (zero) partials.
pub fn sum_squares_groups(n: usize) -> usize {
    n.div_ceil(SUM_PER_WORKGROUP).max(1)
}

impl<'g> Batch<'g> {
    /// Writes the partial sums of squares (`square`) or plain sums of `x[..n]` into
    /// `partial[out_offset .. out_offset + 64·sum_squares_groups(n)]`.
    pub fn sum_squares_partial(
        &mut self,
        x: &Tensor,
        n: usize,
        square: bool,
        partial: &Tensor,
        out_offset: usize,
    ) -> Result<()> {
        need("sum_squares_partial", "input", x, &[n])?;
        let groups = sum_squares_groups(n);
        if groups > MAX_GROUPS {
            return Err(Error::Input(format!(
                "sum_squares_partial: {n} elements exceed one dispatch ({} at most)",
                MAX_GROUPS * SUM_PER_WORKGROUP
            )));
        }
        need("sum_squares_partial", "output", partial, &[out_offset + groups * SUM_PARTIALS_PER_WORKGROUP])?;
        let k = "sum_squares_partial";
        let params = ReduceParams {
            n: to_u32(k, "elements", n)?,
            out_offset: to_u32(k, "output offset", out_offset)?,
            square: square as u32,
            pad: 0,
        };
        let grid = [to_u32(k, "workgroups", groups)?, 1, 1];
        self.dispatch(&ADAMW, k, &params, &[&x.buffer, &partial.buffer], grid);
        Ok(())
    }

    /// clip = (norm, coef) from the first `count` (≤ 64) partial sums of squares:
    /// norm = grad_scale · sqrt(Σ), coef = min(max_norm / (norm + 1e-6), 1), or 1 without `max_norm`.
    pub fn clip_coefficient(
        &mut self,
        sums: &Tensor,
        count: usize,
        max_norm: Option<f32>,
        grad_scale: f32,
        clip: &Tensor,
    ) -> Result<()> {
        if count > SUM_PARTIALS_PER_WORKGROUP {
            return Err(Error::Input(format!(
                "clip_coefficient sums at most {SUM_PARTIALS_PER_WORKGROUP} partials, got {count}"
            )));
        }
        need("clip_coefficient", "partials", sums, &[count])?;
        need("clip_coefficient", "output", clip, &[2])?;
        let params = ClipParams {
            count: to_u32("clip_coefficient", "partials", count)?,
            clip: max_norm.is_some() as u32,
            max_norm: max_norm.unwrap_or(0.0),
            grad_scale,
        };
        self.dispatch(&ADAMW, "clip_coefficient", &params, &[&sums.buffer, &clip.buffer], [1, 1, 1]);
        Ok(())
    }

    /// One AdamW update of `param[..n]` in place from `grad`, the moments `exp_avg` / `exp_avg_sq`
    /// (updated in place) and the clip coefficient in `clip[1]`.
    pub fn adamw_step(
        &mut self,
        param: &Tensor,
        grad: &Tensor,
        exp_avg: &Tensor,
        exp_avg_sq: &Tensor,
        clip: &Tensor,
        scalars: &AdamwScalars,
    ) -> Result<()> {
        let n = param.len();
        need("adamw", "parameter", param, &[n])?;
        need("adamw", "gradient", grad, &[n])?;
        need("adamw", "exp_avg", exp_avg, &[n])?;
        need("adamw", "exp_avg_sq", exp_avg_sq, &[n])?;
        need("adamw", "clip coefficient", clip, &[2])?;
        let s = scalars;
        let params = AdamwParams {
            n: to_u32("adamw", "elements", n)?,
            pad: [0; 3],
            decay: s.decay,
            lerp_weight: s.lerp_weight,
            beta2: s.beta2,
            one_minus_beta2: s.one_minus_beta2,
            neg_step_size: s.neg_step_size,
            bc2_sqrt: s.bc2_sqrt,
            eps: s.eps,
            grad_scale: s.grad_scale,
        };
        let grid = grid_1d(n, self.gpu_ref().grid_limit);
        self.dispatch(
            &ADAMW,
            "adamw_step",
            &params,
            &[&param.buffer, &grad.buffer, &exp_avg.buffer, &exp_avg_sq.buffer, &clip.buffer],
            grid,
        );
        Ok(())
    }
}
