//! Typed launches of the LoRA kernels (shaders/lora.wgsl), with their shapes checked as real errors:
//! a mis-sized buffer would otherwise be clamped by wgpu's bounds checks into silently wrong numbers.

use bytemuck::{Pod, Zeroable};

use crate::gpu::check::{need, to_u32};
use crate::gpu::kernels::grid_1d;
use crate::gpu::shaders::LORA;
use crate::gpu::{Batch, Tensor};
use crate::{Error, Result};

/// Workgroup size of the LoRA kernels (`WG` in lora.wgsl).
const WG: usize = 64;
/// Largest grid dimension wgpu guarantees.
/// Longest loop one LoRA invocation may walk (see `check_launch`).
const LOOP_BUDGET: usize = 60000;

/// Parameters of the LoRA kernels (mirrors `Params` in lora.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct LoraParams {
    t: u32,
    n: u32,
    k: u32,
    r: u32,
    ldy: u32,
    n_off: u32,
    scale: f32,
    pad: u32,
}

/// Where the LoRA term of one projection goes: columns `n_off .. n_off + N` of an output with row
/// stride `ldy` (a slice of the fused q/k/v or gate/up output; `n_off = 0, ldy = N` for a plain one).
#[derive(Debug, Clone, Copy)]
pub struct OutputSlice {
    pub ldy: usize,
    pub n_off: usize,
}

/// The shapes of one LoRA launch: `t` rows, input width `k`, rank `r`, output width `n`.
#[derive(Debug, Clone, Copy)]
pub struct LoraShape {
    pub t: usize,
    pub k: usize,
    pub r: usize,
    pub n: usize,
}

/// Checks the factors' shapes, the output slice and the sizes every launch has in common, and
/// returns the kernels' parameter block.
fn check_launch(
    op: &str,
    a: &Tensor,
    b: &Tensor,
    s: LoraShape,
    out: OutputSlice,
    scale: f32,
) -> Result<LoraParams> {
    if a.shape != [s.r, s.k] || b.shape != [s.n, s.r] {
        return Err(Error::Input(format!(
            "{op}: A is {:?} and B {:?}; expected A [{}, {}] and B [{}, {}]",
            a.shape, b.shape, s.r, s.k, s.n, s.r
        )));
    }
    if out.n_off + s.n > out.ldy {
        return Err(Error::Input(format!(
            "{op}: columns {}..{} of an output with {} columns",
            out.n_off,
            out.n_off + s.n,
            out.ldy
        )));
    }
    // Each invocation walks one of these lengths in a loop (K in the down projection, N in du, T in dA
    // and dB), and lavapipe stops an invocation after about 65536 loop iterations in all; rows also
    // index the grid's y dimension.
    if s.t > LOOP_BUDGET || s.n > LOOP_BUDGET || s.k > LOOP_BUDGET {
        return Err(Error::Input(format!(
            "{op}: {} rows, {} outputs, {} inputs in one launch; at most {LOOP_BUDGET} of each (split \
             the tokens into several passes)",
            s.t, s.n, s.k
        )));
    }
    for (what, v) in [("rows × rank", s.t * s.r), ("outputs × rank", s.n * s.r), ("rank × inputs", s.r * s.k)]
    {
        to_u32(op, what, v)?;
    }
    Ok(LoraParams {
        t: to_u32(op, "rows", s.t)?,
        n: to_u32(op, "output width", s.n)?,
        k: to_u32(op, "input width", s.k)?,
        r: to_u32(op, "rank", s.r)?,
        ldy: to_u32(op, "output stride", out.ldy)?,
        n_off: to_u32(op, "output offset", out.n_off)?,
        scale,
        pad: 0,
    })
}

impl<'g> Batch<'g> {
    /// LoRA forward of one projection: `u (T, R) = x (T, K) · Aᵀ`, then
    /// `y[:, n_off .. n_off + N] += scale · u · Bᵀ`, with A (R, K) and B (N, R) in f32. `u` is kept for
    /// the backward pass. Every buffer is checked against the shapes before anything is recorded.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_forward(
        &mut self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        scale: f32,
        u: &Tensor,
        y: &Tensor,
        s: LoraShape,
        out: OutputSlice,
    ) -> Result<()> {
        let op = "lora_forward";
        let params = check_launch(op, a, b, s, out, scale)?;
        need(op, "a", a, &[s.r, s.k])?;
        need(op, "b", b, &[s.n, s.r])?;
        need(op, "x", x, &[s.t, s.k])?;
        need(op, "u", u, &[s.t, s.r])?;
        need(op, "y", y, &[s.t, out.ldy])?;
        self.dispatch(
            &LORA,
            "lora_down_forward",
            &params,
            &[&x.buffer, &a.buffer, &u.buffer],
            grid_1d(s.t * s.r, self.gpu_ref().grid_limit),
        );
        let grid = [s.n.div_ceil(WG) as u32, s.t as u32, 1];
        self.dispatch(&LORA, "lora_up_forward", &params, &[&u.buffer, &b.buffer, &y.buffer], grid);
        Ok(())
    }
}

/// Gradient buffers of one LoRA projection's backward.
#[derive(Debug, Clone, Copy)]
pub struct LoraGradBuffers<'t> {
    /// (T, R) scratch, written.
    pub du: &'t Tensor,
    /// (R, K), accumulated.
    pub da: &'t Tensor,
    /// (N, R), accumulated.
    pub db: &'t Tensor,
    /// (T, K), accumulated (onto the frozen weight's dx), or `None` where no input gradient is needed.
    pub dx: Option<&'t Tensor>,
}

impl<'g> Batch<'g> {
    /// LoRA backward of one projection, given `dy` (T, ldy) whose columns `n_off .. n_off + N` are the
    /// projection's, the forward's `x` and `u`: `du = scale · dy·B`, `dB += scale · dyᵀ·u`,
    /// `dA += duᵀ·x`, `dx += du·A`. Shapes are checked as real errors before anything is recorded.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_backward(
        &mut self,
        dy: &Tensor,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        u: &Tensor,
        scale: f32,
        grads: LoraGradBuffers<'_>,
        s: LoraShape,
        out: OutputSlice,
    ) -> Result<()> {
        let op = "lora_backward";
        let p = &check_launch(op, a, b, s, out, scale)?;
        need(op, "a", a, &[s.r, s.k])?;
        need(op, "b", b, &[s.n, s.r])?;
        need(op, "x", x, &[s.t, s.k])?;
        need(op, "u", u, &[s.t, s.r])?;
        need(op, "dy", dy, &[s.t, out.ldy])?;
        need(op, "du", grads.du, &[s.t, s.r])?;
        if grads.da.shape != [s.r, s.k] || grads.db.shape != [s.n, s.r] {
            return Err(Error::Input(format!(
                "{op}: dA is {:?} and dB {:?}; expected dA [{}, {}] and dB [{}, {}]",
                grads.da.shape, grads.db.shape, s.r, s.k, s.n, s.r
            )));
        }
        need(op, "dA", grads.da, &[s.r, s.k])?;
        need(op, "dB", grads.db, &[s.n, s.r])?;
        if let Some(dx) = grads.dx {
            need(op, "dx", dx, &[s.t, s.k])?;
        }
        self.dispatch(
            &LORA,
            "lora_du_backward",
            p,
            &[&dy.buffer, &b.buffer, &grads.du.buffer],
            grid_1d(s.t * s.r, self.gpu_ref().grid_limit),
        );
        self.dispatch(
            &LORA,
            "lora_db_backward",
            p,
            &[&dy.buffer, &u.buffer, &grads.db.buffer],
            grid_1d(s.n * s.r, self.gpu_ref().grid_limit),
        );
        self.dispatch(
            &LORA,
            "lora_da_backward",
            p,
            &[&grads.du.buffer, &x.buffer, &grads.da.buffer],
            grid_1d(s.r * s.k, self.gpu_ref().grid_limit),
        );
        if let Some(dx) = grads.dx {
            let grid = [s.k.div_ceil(WG) as u32, s.t as u32, 1];
            self.dispatch(&LORA, "lora_dx_backward", p, &[&grads.du.buffer, &a.buffer, &dx.buffer], grid);
        }
        Ok(())
    }
}
