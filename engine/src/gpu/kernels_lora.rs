//! Typed launches of the LoRA kernels, with their shapes checked as real errors: a mis-sized buffer
//! would otherwise be clamped by wgpu's bounds checks into silently wrong numbers. The per-element
//! kernels of shaders/lora.wgsl run everywhere; where the CPU family's broadcast matmuls run (subgroups
//! of eight, see [`crate::gpu::Gpu::subgroup_lora`]) the same products go through
//! shaders/lora_subgroup.wgsl, one strided GEMM entry point per product.

use bytemuck::{Pod, Zeroable};

use crate::gpu::check::{need, to_u32};
use crate::gpu::kernels::{grid_1d, split_groups};
use crate::gpu::shaders::{LORA, LORA_SUBGROUP};
use crate::gpu::{Batch, Tensor};
use crate::{Error, Result};

/// Workgroup size of the LoRA kernels (`WG` in lora.wgsl).
const WG: usize = 64;
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
    // and dB, R in the up projection and dx), and lavapipe stops an invocation after about 65536 loop
    // iterations in all; rows also index the grid's y dimension (lora.wgsl: one row per group;
    // lora_subgroup.wgsl: 32 rows per group, of T, N or K).
    if s.t > LOOP_BUDGET || s.n > LOOP_BUDGET || s.k > LOOP_BUDGET || s.r > LOOP_BUDGET {
        return Err(Error::Input(format!(
            "{op}: {} rows, {} outputs, {} inputs, rank {} in one launch; at most {LOOP_BUDGET} of each \
             (split the tokens into several passes)",
            s.t, s.n, s.k, s.r
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
        if self.gpu_ref().subgroup_lora {
            let (t, k, r) = (s.t, s.k, s.r);
            self.lora_product(Product {
                entry: "lora_down_subgroup",
                m: t,
                n: r,
                kred: k,
                lhs: Strided::new(&x.buffer, 0, k, 1),
                rhs: Strided::new(&a.buffer, 0, k, 1),
                out: Strided::new(&u.buffer, 0, r, 1),
                alpha: 1.0,
                accumulate: false,
            });
            self.lora_product(Product {
                entry: "lora_up_subgroup",
                m: t,
                n: s.n,
                kred: r,
                lhs: Strided::new(&u.buffer, 0, r, 1),
                rhs: Strided::new(&b.buffer, 0, r, 1),
                out: Strided::new(&y.buffer, out.n_off, out.ldy, 1),
                alpha: scale,
                accumulate: true,
            });
            return Ok(());
        }
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
        if self.gpu_ref().subgroup_lora {
            self.lora_backward_subgroup(dy, x, a, b, u, scale, grads, s, out);
            return Ok(());
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

/// Parameters of the broadcast LoRA products (mirrors `Params` in lora_subgroup.wgsl):
/// out[m, n] = alpha · Σ_k lhs[m, k] · rhs[n, k] (+ out[m, n] when `flags & 1`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
struct ProductParams {
    m: u32,
    n: u32,
    kred: u32,
    flags: u32,
    p_off: u32,
    p_sm: u32,
    p_sk: u32,
    q_off: u32,
    q_sn: u32,
    q_sk: u32,
    c_off: u32,
    c_sm: u32,
    c_sn: u32,
    alpha: f32,
    pad0: u32,
    pad1: u32,
}

/// One matrix of a strided product: element (i, j) at `off + i · s_i + j · s_j` of `buf`.
#[derive(Clone, Copy)]
struct Strided<'b> {
    buf: &'b wgpu::Buffer,
    off: usize,
    s_i: usize,
    s_j: usize,
}

impl<'b> Strided<'b> {
    fn new(buf: &'b wgpu::Buffer, off: usize, s_i: usize, s_j: usize) -> Self {
        Strided { buf, off, s_i, s_j }
    }
}

/// One launch of lora_subgroup.wgsl: out (m, n) (+)= alpha · lhs (m, kred) · rhs (n, kred)ᵀ.
struct Product<'b> {
    entry: &'static str,
    m: usize,
    n: usize,
    kred: usize,
    lhs: Strided<'b>,
    rhs: Strided<'b>,
    out: Strided<'b>,
    alpha: f32,
    accumulate: bool,
}

impl<'g> Batch<'g> {
    /// Records one broadcast product. The callers checked every buffer against the shapes (so every
    /// index below fits its buffer and u32) and every reduced length against `LOOP_BUDGET`.
    fn lora_product(&mut self, pr: Product<'_>) {
        let params = ProductParams {
            m: pr.m as u32,
            n: pr.n as u32,
            kred: pr.kred as u32,
            flags: pr.accumulate as u32,
            p_off: pr.lhs.off as u32,
            p_sm: pr.lhs.s_i as u32,
            p_sk: pr.lhs.s_j as u32,
            q_off: pr.rhs.off as u32,
            q_sn: pr.rhs.s_i as u32,
            q_sk: pr.rhs.s_j as u32,
            c_off: pr.out.off as u32,
            c_sm: pr.out.s_i as u32,
            c_sn: pr.out.s_j as u32,
            alpha: pr.alpha,
            pad0: 0,
            pad1: 0,
        };
        // Four rows per lane from `four_per_lane` rows (as the broadcast matmuls), else one: a decoded
        // batch of eight rows would leave six lanes of eight loading clamped rows.
        let gpu = self.gpu_ref();
        let four = gpu.subgroup_matmul.is_none_or(|rows| pr.m >= rows.four_per_lane);
        let rows_per_lane = if four { 4 } else { 1 };
        // Grid: x = groups of eight columns (folded into z past the limit), y = groups of 8 · ROWS rows
        // (at most LOOP_BUDGET / 32 of them).
        let (x, hi) = split_groups(pr.n.div_ceil(8) as u32, gpu.grid_limit);
        let grid = [x, pr.m.div_ceil(8 * rows_per_lane) as u32, hi];
        let buffers = [pr.lhs.buf, pr.rhs.buf, pr.out.buf];
        let rows = [("ROWS", rows_per_lane as f64)];
        self.dispatch_with(&LORA_SUBGROUP, pr.entry, &rows, &params, &buffers, grid);
    }

    /// `lora_backward` through the broadcast products (shapes already checked): du (T, R) =
    /// scale · dy · B, dB (N, R) += scale · dyᵀ · u, dA (R, K) += duᵀ · x (computed as its transpose:
    /// rows are inputs, columns the rank), dx (T, K) += du · A.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward_subgroup(
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
    ) {
        let LoraShape { t, k, r, n } = s;
        let OutputSlice { ldy, n_off } = out;
        self.lora_product(Product {
            entry: "lora_du_subgroup",
            m: t,
            n: r,
            kred: n,
            lhs: Strided::new(&dy.buffer, n_off, ldy, 1),
            rhs: Strided::new(&b.buffer, 0, 1, r),
            out: Strided::new(&grads.du.buffer, 0, r, 1),
            alpha: scale,
            accumulate: false,
        });
        self.lora_product(Product {
            entry: "lora_db_subgroup",
            m: n,
            n: r,
            kred: t,
            lhs: Strided::new(&dy.buffer, n_off, 1, ldy),
            rhs: Strided::new(&u.buffer, 0, 1, r),
            out: Strided::new(&grads.db.buffer, 0, r, 1),
            alpha: scale,
            accumulate: true,
        });
        self.lora_product(Product {
            entry: "lora_da_subgroup",
            m: k,
            n: r,
            kred: t,
            lhs: Strided::new(&x.buffer, 0, 1, k),
            rhs: Strided::new(&grads.du.buffer, 0, 1, r),
            out: Strided::new(&grads.da.buffer, 0, 1, k),
            alpha: 1.0,
            accumulate: true,
        });
        if let Some(dx) = grads.dx {
            self.lora_product(Product {
                entry: "lora_dx_subgroup",
                m: t,
                n: k,
                kred: r,
                lhs: Strided::new(&grads.du.buffer, 0, r, 1),
                rhs: Strided::new(&a.buffer, 0, 1, k),
                out: Strided::new(&dx.buffer, 0, k, 1),
                alpha: 1.0,
                accumulate: true,
            });
        }
    }
}
