//! Typed launches of every kernel: parameter blocks, shape checks and grid sizes in one place.
//! Each function records into a [`Batch`]; nothing runs until the batch is submitted.

use bytemuck::{Pod, Zeroable};

use crate::gpu::KernelProfile;
use crate::gpu::device::GridLimit;
use crate::gpu::shaders::{ATTENTION, ELEMENTWISE, MATMUL, MATMUL_ROWS_SUBGROUP, MATMUL_WORKGROUP, NORM};
use crate::gpu::{Batch, BlockedWeight16, Tensor, Weight16};

mod backward;
pub use backward::{AttnBackward, GradWrite};

/// Workgroup size of every 1-D kernel.
pub const WG: u32 = 64;
/// Columns per chunk of the log-prob reduction (`LOGPROB_CHUNK` in elementwise.wgsl).
pub const LOGPROB_CHUNK: usize = 1024;
fn groups(n: usize) -> u32 {
    (n as u32).div_ceil(WG)
}

/// Splits `groups` workgroups into `x · hi ≥ groups` with `x ≤ limit.fold_at`, as evenly as possible
/// (`hi` at most `limit.max`: a test's lowered `fold_at` may then leave x above it). A launch whose
/// count along x can pass the per-dimension limit (65535 on most adapters; a 151,936-row LM head
/// decoded one workgroup per column passes it) puts `hi` in a grid dimension it leaves free, and its
/// shader rebuilds the index as `wid.x + wid.hi · num_workgroups.x` (times the workgroup size for an
/// invocation index) and skips indices past the end. Shaders must not assume x = 65535.
pub(crate) fn split_groups(groups: u32, limit: GridLimit) -> (u32, u32) {
    let hi = groups.div_ceil(limit.fold_at.max(1)).clamp(1, limit.max.max(1));
    (groups.div_ceil(hi), hi)
}

/// A 1-D grid over `n` invocations, folded into y past the limit: index = gid.x + gid.y · nwg.x · WG.
pub(crate) fn grid_1d(n: usize, limit: GridLimit) -> [u32; 3] {
    let (x, hi) = split_groups(groups(n), limit);
    [x, hi, 1]
}

/// A grid of `x_groups` workgroups along x by `rows` along y, x folded into z past the limit:
/// column index = gid.x + gid.z · nwg.x · WG (or wid.x + wid.z · nwg.x per workgroup). `rows` stays
/// within the limit: at most `MAX_STEP_TOKENS` tokens (or a batch of as many rows) per launch.
fn grid_rows(x_groups: u32, rows: u32, limit: GridLimit) -> [u32; 3] {
    let (x, hi) = split_groups(x_groups, limit);
    [x, rows, hi]
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct P4 {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    t: u32,
    n: u32,
    k: u32,
    flags: u32,
    ldy: u32,
    n_off: u32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    rows: u32,
    dim: u32,
    eps: f32,
    flags: u32,
}

/// Parameters of the attention kernels (mirrors `Params` in attention.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct AttnParams {
    pub t: u32,
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    /// Cache capacity per slot (positions).
    pub ctx: u32,
    /// Length of each score row (the largest key count in the batch).
    pub span: u32,
    pub flags: u32,
    pub eps: f32,
}

/// `AttnParams::flags`: apply per-head RMSNorm to q and k (Qwen3).
pub const ATTN_QK_NORM: u32 = 1;
/// `AttnParams::flags`: apply rotary position embedding.
pub const ATTN_ROPE: u32 = 2;

impl<'g> Batch<'g> {
    /// y (T, N) = x (T, K) · wᵀ (+ bias) (+ residual).
    pub fn matmul(
        &mut self,
        x: &Tensor,
        w: &Weight16,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        y: &Tensor,
        t: usize,
    ) {
        self.matmul_into(x, w, bias, residual, y, t, w.rows, 0);
    }

    /// y[:, n_off .. n_off + N] = x · wᵀ (+ bias) (+ residual[:, n_off ..]), with y and residual of row
    /// stride `ldy`: one row block of a weight split across storage bindings.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_into(
        &mut self,
        x: &Tensor,
        w: &Weight16,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        y: &Tensor,
        t: usize,
        ldy: usize,
        n_off: usize,
    ) {
        let (n, k) = (w.rows, w.cols);
        debug_assert!(x.len() >= t * k && y.len() >= t * ldy && n_off + n <= ldy, "matmul shapes");
        let gpu = self.gpu_ref();
        let flags = bias.is_some() as u32 | (residual.is_some() as u32) << 1;
        // CPU adapters, few rows (decoding): four columns per invocation; many rows: a 4×4 tile per
        // invocation. GPUs, few rows: a workgroup per output, reduced with subgroup operations where
        // the adapter has them; many rows: 64×64 tiles staged through workgroup memory.
        // Grid: x = column groups (folded into z past the adapter's limit), y = row groups.
        let (shader, entry, column_groups, row_groups) =
            match (k % 8 == 0, t < 4, gpu.profile, gpu.summary.subgroups) {
                (true, true, KernelProfile::Gpu, true) => {
                    (&MATMUL_ROWS_SUBGROUP, "matmul_rows_subgroup_forward", n as u32, t as u32)
                }
                (true, true, KernelProfile::Gpu, false) => {
                    (&MATMUL_WORKGROUP, "matmul_rows_wg_forward", n as u32, t as u32)
                }
                (true, true, KernelProfile::Cpu, _) => {
                    (&MATMUL, "matmul_forward_cols4", groups(n.div_ceil(4)), t as u32)
                }
                (true, false, KernelProfile::Gpu, _) if k % 32 == 0 => (
                    &MATMUL_WORKGROUP,
                    "matmul_tiled_forward",
                    n.div_ceil(64) as u32,
                    (t as u32).div_ceil(64),
                ),
                (true, false, ..) => {
                    (&MATMUL, "matmul_forward", groups(n.div_ceil(4)), (t as u32).div_ceil(4))
                }
                (false, ..) => (&MATMUL, "matmul_forward_scalar", groups(n), (t as u32).div_ceil(4)),
            };
        let grid = grid_rows(column_groups, row_groups, gpu.grid_limit);
        let params = MatmulParams {
            t: t as u32,
            n: n as u32,
            k: k as u32,
            flags,
            ldy: ldy as u32,
            n_off: n_off as u32,
            pad: [0; 2],
        };
        let bias = bias.map_or(&gpu.dummy, |b| &b.buffer);
        let residual = residual.map_or(&gpu.dummy, |r| &r.buffer);
        self.dispatch(shader, entry, &params, &[&x.buffer, &w.buffer, bias, residual, &y.buffer], grid);
    }

    /// y (T, N) = x (T, K) · wᵀ for a weight stored in row blocks.
    pub fn matmul_blocked(&mut self, x: &Tensor, w: &BlockedWeight16, y: &Tensor, t: usize) {
        for (first, block) in &w.blocks {
            self.matmul_into(x, block, None, None, y, t, w.rows, *first);
        }
    }

    /// out (T, D) = table[ids[t]] for a table stored in row blocks.
    pub fn embed_rows_blocked(&mut self, ids: &Tensor, table: &BlockedWeight16, out: &Tensor, t: usize) {
        if let [(0, only)] = &table.blocks[..] {
            return self.embed_rows(ids, only, out, t);
        }
        self.clear(&out.buffer);
        for (first, block) in &table.blocks {
            self.embed_rows_add_from(ids, block, *first, out, t);
        }
    }

    /// out (R, D) = rms_norm(x[rows[r]] or x[r]) · w.
    pub fn rms_norm(
        &mut self,
        x: &Tensor,
        w: &Tensor,
        rows_map: Option<&Tensor>,
        out: &Tensor,
        rows: usize,
        eps: f32,
    ) {
        let dim = w.len();
        let gpu = self.gpu_ref();
        let params = NormParams { rows: rows as u32, dim: dim as u32, eps, flags: rows_map.is_some() as u32 };
        let map = rows_map.map_or(&gpu.dummy, |m| &m.buffer);
        self.dispatch(
            &NORM,
            "rms_norm_forward",
            &params,
            &[&x.buffer, &w.buffer, map, &out.buffer],
            grid_1d(rows, gpu.grid_limit),
        );
    }

    /// out (R, D) = layer_norm(x) · w + b.
    pub fn layer_norm(&mut self, x: &Tensor, w: &Tensor, b: &Tensor, out: &Tensor, rows: usize, eps: f32) {
        let params = NormParams { rows: rows as u32, dim: w.len() as u32, eps, flags: 0 };
        let grid = grid_1d(rows, self.gpu_ref().grid_limit);
        self.dispatch(
            &NORM,
            "layer_norm_forward",
            &params,
            &[&x.buffer, &w.buffer, &b.buffer, &out.buffer],
            grid,
        );
    }

    /// Splits the fused q/k/v projection, normalises and rotates q and k, and stores k, v in the cache.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_split(
        &mut self,
        p: &AttnParams,
        tok: &Tensor,
        qkv: &Tensor,
        rope: &Tensor,
        qk_norm: Option<&Tensor>,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
    ) {
        let gpu = self.gpu_ref();
        let heads = (p.n_head + 2 * p.n_kv_head) as usize;
        let norm = qk_norm.map_or(&gpu.dummy, |n| &n.buffer);
        self.dispatch(
            &ATTENTION,
            "qkv_split_forward",
            p,
            &[&tok.buffer, &qkv.buffer, &rope.buffer, norm, &q.buffer, &k_cache.buffer, &v_cache.buffer],
            grid_rows(groups(heads), p.t, gpu.grid_limit),
        );
    }

    /// Scaled dot-product attention of q (T, H, hd) over the caches; writes out (T, H·hd).
    /// `scores` holds (T, H, span) floats.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        p: &AttnParams,
        tok: &Tensor,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        scores: &Tensor,
        out: &Tensor,
    ) {
        let (t, h) = (p.t, p.n_head);
        let limit = self.gpu_ref().grid_limit;
        // Scores and values use all three dimensions; their x counts stay small (at most
        // MAX_CONTEXT / 64 = 256 key groups; head_dim / 64), and t ≤ MAX_STEP_TOKENS.
        self.dispatch(
            &ATTENTION,
            "attn_scores_forward",
            p,
            &[&tok.buffer, &q.buffer, &k_cache.buffer, &scores.buffer],
            [groups(p.span as usize), h, t],
        );
        self.dispatch(
            &ATTENTION,
            "attn_softmax_forward",
            p,
            &[&tok.buffer, &scores.buffer],
            grid_1d((t * h) as usize, limit),
        );
        self.dispatch(
            &ATTENTION,
            "attn_values_forward",
            p,
            &[&tok.buffer, &v_cache.buffer, &scores.buffer, &out.buffer], // v, probs, out
            [groups(p.head_dim as usize), h, t],
        );
    }

    /// out (T, D) = table[ids[t]].
    pub fn embed_rows(&mut self, ids: &Tensor, table: &Weight16, out: &Tensor, t: usize) {
        let params = P4 { a: t as u32, b: table.cols as u32, c: table.rows as u32, d: 0 };
        let grid = grid_rows(groups(table.cols / 2), t as u32, self.gpu_ref().grid_limit);
        self.dispatch(
            &ELEMENTWISE,
            "embed_rows_forward",
            &params,
            &[&ids.buffer, &table.buffer, &out.buffer],
            grid,
        );
    }

    /// act (T, I) = silu(gu[:, :I]) · gu[:, I:].
    pub fn swiglu(&mut self, gu: &Tensor, act: &Tensor, t: usize, inter: usize) {
        let params = P4 { a: t as u32, b: inter as u32, c: 0, d: 0 };
        let grid = grid_rows(groups(inter), t as u32, self.gpu_ref().grid_limit);
        self.dispatch(&ELEMENTWISE, "swiglu_forward", &params, &[&gu.buffer, &act.buffer], grid);
    }

    /// x = gelu(x) in place over `rows · dim` elements.
    pub fn gelu(&mut self, x: &Tensor, rows: usize, dim: usize) {
        let params = P4 { a: rows as u32, b: dim as u32, c: 0, d: 0 };
        let grid = grid_1d(rows * dim, self.gpu_ref().grid_limit);
        self.dispatch(&ELEMENTWISE, "gelu_forward", &params, &[&x.buffer], grid);
    }

    /// out[r] = log_softmax(logits[r])[target[r]], in two passes over chunks of 1024 columns.
    /// `partial` is scratch of at least rows · ⌈vocab / 1024⌉ · 2 floats.
    pub fn logprob(
        &mut self,
        logits: &Tensor,
        targets: &Tensor,
        partial: &Tensor,
        out: &Tensor,
        rows: usize,
        vocab: usize,
    ) {
        let chunks = vocab.div_ceil(LOGPROB_CHUNK);
        debug_assert!(partial.len() >= rows * chunks * 2, "logprob scratch too small");
        let params = P4 { a: rows as u32, b: vocab as u32, c: chunks as u32, d: 0 };
        let limit = self.gpu_ref().grid_limit;
        let grid = grid_rows(groups(chunks), rows as u32, limit);
        self.dispatch(
            &ELEMENTWISE,
            "logprob_partial_forward",
            &params,
            &[&logits.buffer, &partial.buffer],
            grid,
        );
        self.dispatch(
            &ELEMENTWISE,
            "logprob_combine_forward",
            &params,
            &[&targets.buffer, &logits.buffer, &partial.buffer, &out.buffer],
            grid_1d(rows, limit),
        );
    }

    /// out (B, D) = mean of x over each (start, len) span in `spans`, then L2-normalised per row.
    pub fn mean_pool_l2(&mut self, x: &Tensor, spans: &Tensor, out: &Tensor, batch: usize, dim: usize) {
        let params = P4 { a: batch as u32, b: dim as u32, c: 0, d: 0 };
        let limit = self.gpu_ref().grid_limit;
        let grid = grid_rows(groups(dim), batch as u32, limit);
        self.dispatch(
            &ELEMENTWISE,
            "mean_pool_forward",
            &params,
            &[&spans.buffer, &x.buffer, &out.buffer],
            grid,
        );
        self.dispatch(&ELEMENTWISE, "l2_normalize_forward", &params, &[&out.buffer], grid_1d(batch, limit));
    }
}

impl<'g> Batch<'g> {
    /// out (T, D) += table[ids[t]]: an accumulating gather (BERT's word + position + token-type sum).
    pub fn embed_rows_add(&mut self, ids: &Tensor, table: &Weight16, out: &Tensor, t: usize) {
        self.embed_rows_add_from(ids, table, 0, out, t);
    }

    /// out[t] += table[ids[t] − first] for the tokens whose id lies in `first .. first + table.rows`;
    /// other rows are left unchanged (a vocabulary split into row blocks, one gather per block).
    pub fn embed_rows_add_from(
        &mut self,
        ids: &Tensor,
        table: &Weight16,
        first: usize,
        out: &Tensor,
        t: usize,
    ) {
        debug_assert!(ids.len() >= t && out.len() >= t * table.cols, "embed_rows_add shapes");
        let params = P4 { a: t as u32, b: table.cols as u32, c: table.rows as u32, d: first as u32 };
        let grid = grid_rows(groups(table.cols / 2), t as u32, self.gpu_ref().grid_limit);
        let buffers = [&ids.buffer, &table.buffer, &out.buffer];
        self.dispatch(&ELEMENTWISE, "embed_rows_add_forward", &params, &buffers, grid);
    }
}
