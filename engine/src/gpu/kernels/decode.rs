//! The forward matmul's decode kernels (matmul_decode.wgsl: T ≤ 4 rows, f16 or packed weights, on the
//! CPU family with subgroups of eight) and the f16 expansion of packed weights (dequant.wgsl) for every
//! launch that cannot read their blocks.

use crate::Result;
use crate::gpu::check::{need_any_weight, to_u32};
use crate::gpu::kernels::{MATMUL_SWIGLU, MatmulParams, grid_1d, grid_rows};
use crate::gpu::shaders::{DEQUANT, MATMUL_DECODE};
use crate::gpu::{Batch, QuantFormat, Tensor, Weight16};

/// Most rows one decode launch takes (their register tiles hold four).
pub const MAX_DECODE_ROWS: usize = 4;
/// Most rows the decode kernels take over packed weights, in launches of at most [`MAX_DECODE_ROWS`]
/// (a batch of eight decoded tokens: two launches reading the blocks twice still read a quarter of the
/// bytes of the f16 expansion the broadcast kernels would need).
pub const MAX_PACKED_DECODE_ROWS: usize = 8;
/// Output columns per workgroup of the decode kernels (8 lanes × 4).
const DECODE_COLUMNS: usize = 32;

impl<'g> Batch<'g> {
    /// Records the decode kernel for a checked forward matmul if the adapter and shape take one, and
    /// says whether it did: the CPU family with subgroups of eight (unless `BABELRL_DECODE_MATMUL=0`),
    /// f16 weights with K % 8 == 0 for 1 ..= 4 rows and fewer than the broadcast kernels'
    /// `one_per_lane`, packed ones for 1 ..= 8 rows (launches of ≤ 4 rows, `MatmulParams::row0`). One
    /// pipeline per row count (override `ROWS`). Grid: x (and z past the limit) =
    /// groups of 32 columns (16 with the SwiGLU epilogue).
    pub(super) fn matmul_decode(
        &mut self,
        x: &Tensor,
        w: &Weight16,
        bias: &wgpu::Buffer,
        residual: &wgpu::Buffer,
        y: &Tensor,
        params: &MatmulParams,
    ) -> bool {
        let gpu = self.gpu_ref();
        let t = params.t as usize;
        let rows_taken = match w.packed {
            Some(_) => MAX_PACKED_DECODE_ROWS,
            None => gpu.subgroup_matmul.map_or(0, |r| (r.one_per_lane - 1).min(MAX_DECODE_ROWS)),
        };
        if !gpu.decode_matmul || gpu.subgroup_matmul.is_none() || !(1..=rows_taken).contains(&t) {
            return false;
        }
        let entry = match &w.packed {
            None if w.cols.is_multiple_of(8) => "matmul_decode_f16",
            None => return false,
            Some(p) if p.format == QuantFormat::Q4 => "matmul_decode_q4",
            Some(_) => "matmul_decode_q8",
        };
        // SwiGLU: each lane takes two output columns (their gate rows and their up rows).
        let columns = if params.flags & MATMUL_SWIGLU != 0 { DECODE_COLUMNS / 2 } else { DECODE_COLUMNS };
        let grid = grid_rows((params.n as usize).div_ceil(columns) as u32, 1, gpu.grid_limit);
        let mut buffers = vec![&x.buffer, &w.buffer, bias, residual, &y.buffer];
        if let Some(p) = &w.packed {
            buffers.push(&p.scales);
        }
        for row0 in (0..t).step_by(MAX_DECODE_ROWS) {
            let rows = MAX_DECODE_ROWS.min(t - row0);
            let params = MatmulParams { row0: row0 as u32, ..*params };
            self.dispatch_with(&MATMUL_DECODE, entry, &[("ROWS", rows as f64)], &params, &buffers, grid);
        }
        true
    }

    /// The f16 expansion of a packed weight (`w` itself if it is not packed), recorded into the device's
    /// shared scratch buffer: valid for the launches recorded after it until the next expansion, so a
    /// caller expands right before each launch that reads it. The kernels that cannot read blocks (the
    /// forward of more rows, the backward dX, adapters without the decode kernels) run on it: packed
    /// weights keep only their blocks resident (Q4_1 is 5/16 the size of f16) and pay one pass over
    /// the weight per such launch.
    pub fn expand_packed(&mut self, w: &Weight16) -> Result<Weight16> {
        let Some(p) = &w.packed else { return Ok(w.clone()) };
        let op = "expand_packed";
        need_any_weight(op, "w", w)?;
        let gpu = self.gpu_ref();
        let bytes = (2 * w.rows * w.cols) as u64;
        gpu.check_size(op, bytes)?;
        let blocks = w.rows * w.cols / crate::gpu::PACKED_BLOCK;
        let params = [to_u32(op, "blocks", blocks)?, 0, 0, 0];
        let entry = match p.format {
            QuantFormat::Q4 => "dequant_q4_forward",
            QuantFormat::Q8 => "dequant_q8_forward",
        };
        let scratch = gpu.weight_scratch(bytes);
        let grid = grid_1d(blocks, gpu.grid_limit);
        self.dispatch(&DEQUANT, entry, &params, &[&scratch, &w.buffer, &p.scales], grid);
        Ok(Weight16 { buffer: scratch, rows: w.rows, cols: w.cols, packed: None })
    }
}
