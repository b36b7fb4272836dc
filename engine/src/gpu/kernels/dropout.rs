//! Typed launches of LoRA's input dropout (`dropout_{forward,backward}` in shaders/elementwise.wgsl):
//! PEFT's `lora_B(lora_A(dropout(x))) · scale` with a fresh mask per adapted module per forward. The mask
//! is a counter-based hash of (seed, element index), never stored: the backward recomputes it from the
//! seed, and [`dropout_seed`] gives each (step, micro-batch, layer, module) its own. The backward
//! accumulates into dx (`+=`). Every buffer size and p are checked; a bad launch records nothing.

use bytemuck::{Pod, Zeroable};

use super::grid_1d;
use crate::Result;
use crate::gpu::check::{fail, need, to_u32};
use crate::gpu::shaders::ELEMENTWISE;
use crate::gpu::{Batch, Tensor};

/// Parameters of the dropout kernels (mirrors `DropoutParams` in elementwise.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DropoutParams {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    /// An element is kept when the top 24 bits of its hash are ≥ this: u32(p · 2²⁴).
    threshold: u32,
    /// 1 / (1 − p) in f32: kept elements are multiplied by it.
    scale: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

impl DropoutParams {
    /// The parameters of a launch over `n` elements, or an error naming `op` when p is outside [0, 1)
    /// (p = 1 would scale by infinity; NaN is refused too) or `n` does not fit the kernel's u32.
    fn new(op: &str, n: usize, p: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(fail(op, format!("dropout probability p = {p} must lie in [0, 1)")));
        }
        Ok(Self {
            n: to_u32(op, "elements", n)?,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            // p · 2²⁴ is exact in f32 (a power-of-two scaling); the cast truncates, as the reference does.
            threshold: (p * 16_777_216.0) as u32,
            scale: 1.0 / (1.0 - p),
            pad0: 0,
            pad1: 0,
            pad2: 0,
        })
    }
}

/// The seed of one dropout mask: the run's seed mixed with the optimizer step, the micro-batch within
/// it, the decoder layer and the adapted module's index (its target), each through splitmix64, so every
/// (step, micro-batch, layer, module) draws its own mask and a rerun with the same run seed draws the
/// same ones.
pub fn dropout_seed(run_seed: u64, step: u64, micro: u64, layer: usize, target: usize) -> u64 {
    [step, micro, layer as u64, target as u64]
        .into_iter()
        .fold(splitmix64(run_seed), |s, v| splitmix64(s ^ v))
}

/// The splitmix64 output function (Steele, Lea & Flood 2014): a bijection on u64 that mixes every input
/// bit into every output bit.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<'g> Batch<'g> {
    /// out (n) = dropout(x (n)): x[i] · s, s = 1 / (1 − p) in f32, where the mask of `seed` keeps
    /// element i, else 0 (`cpu_ref::dropout_forward`). `x` and `out` must be different buffers.
    pub fn dropout_forward(&mut self, x: &Tensor, out: &Tensor, n: usize, p: f32, seed: u64) -> Result<()> {
        self.dropout("dropout_forward", ("x", x), ("out", out), n, p, seed)
    }

    /// dx (n) += dropout_backward(dy (n)): dy[i] · s where the mask of `seed` (the forward's)
    /// keeps element i; dropped elements of dx are left as they are (`cpu_ref::dropout_backward`). `dy` and
    /// `dx` must be different buffers.
    pub fn dropout_backward(&mut self, dy: &Tensor, dx: &Tensor, n: usize, p: f32, seed: u64) -> Result<()> {
        self.dropout("dropout_backward", ("dy", dy), ("dx", dx), n, p, seed)
    }

    /// Both directions: `input` read, `output` written (forward) or added into (backward).
    fn dropout(
        &mut self,
        op: &str,
        (input_name, input): (&str, &Tensor),
        (output_name, output): (&str, &Tensor),
        n: usize,
        p: f32,
        seed: u64,
    ) -> Result<()> {
        let params = DropoutParams::new(op, n, p, seed)?;
        need(op, input_name, input, &[n])?;
        need(op, output_name, output, &[n])?;
        if input.buffer == output.buffer {
            // wgpu would refuse one buffer bound read-only and read-write at submit, far from the cause.
            return Err(fail(op, format!("`{input_name}` and `{output_name}` are one buffer; pass two")));
        }
        let grid = grid_1d(n, self.gpu_ref().grid_limit);
        self.dispatch(&ELEMENTWISE, op, &params, &[&input.buffer, &output.buffer], grid);
        Ok(())
    }
}
