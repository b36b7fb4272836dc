//! Typed launches of every kernel: parameter blocks, shape checks and grid sizes in one place.
//! Each function records into a [`Batch`]; nothing runs until the batch is submitted. A buffer too
//! small for the launch is an error naming the kernel and the buffer, and nothing is recorded.

use bytemuck::{Pod, Zeroable};

use crate::Result;
use crate::gpu::KernelProfile;
use crate::gpu::check::{fail, need, need_any_weight, need_weight};
use crate::gpu::device::GridLimit;
use crate::gpu::shaders::{
    ATTENTION, ATTENTION_SUBGROUP, ELEMENTWISE, MATMUL, MATMUL_ROWS_SUBGROUP, MATMUL_SUBGROUP,
    MATMUL_WORKGROUP, NORM,
};
use crate::gpu::{Batch, BlockedWeight16, Tensor, Weight16};

mod backward;
mod decode;
mod dropout;
mod loss;
pub use backward::{AttnBackward, GradWrite, KvCacheShape, MAX_PROMPT_FOLLOWERS, SharedPrompt};
pub use decode::MAX_DECODE_ROWS;
pub use dropout::dropout_seed;
pub use loss::{XENT_CHUNK, XENT_IGNORE, xent_chunk_cols};

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
pub(crate) fn grid_rows(x_groups: u32, rows: u32, limit: GridLimit) -> [u32; 3] {
    let (x, hi) = split_groups(x_groups, limit);
    [x, rows, hi]
}

/// Parameters of the elementwise kernels (mirrors `Params` in elementwise.wgsl): `rows` × `dim`, and
/// per kernel `extra` (a table's row count for the gathers, the chunk count for the log-probs) and
/// `flags` (the first id of a table's row block for `embed_rows_add_forward`). Built by the
/// constructors below, one per use, so no kernel gets another's meaning of a field.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ElementwiseParams {
    rows: u32,
    dim: u32,
    extra: u32,
    flags: u32,
}

impl ElementwiseParams {
    /// `rows` × `dim`, no extra field (swiglu: dim = the intermediate width; gelu; pooling).
    fn plain(rows: usize, dim: usize) -> Self {
        Self { rows: rows as u32, dim: dim as u32, extra: 0, flags: 0 }
    }

    /// A gather of `t` rows from a table of `table_rows` × `dim`, whose ids start at `first_id`.
    fn gather(t: usize, dim: usize, table_rows: usize, first_id: usize) -> Self {
        Self { rows: t as u32, dim: dim as u32, extra: table_rows as u32, flags: first_id as u32 }
    }

    /// Log-probs of `rows` rows of `vocab` logits, reduced over `chunks` chunks.
    fn logprob(rows: usize, vocab: usize, chunks: usize) -> Self {
        Self { rows: rows as u32, dim: vocab as u32, extra: chunks as u32, flags: 0 }
    }
}

/// Parameters of the forward matmuls (mirrors `Params` in matmul.wgsl, matmul_workgroup.wgsl and
/// matmul_rows_subgroup.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct MatmulParams {
    t: u32,
    n: u32,
    k: u32,
    flags: u32,
    ldy: u32,
    n_off: u32,
    /// First weight row: output column n reads row `w_row0 + n`. Read by the subgroup forward kernels
    /// only (matmul_subgroup.wgsl), for the cross-entropy's vocabulary chunks; 0 from every other launch.
    w_row0: u32,
    /// First row of X and Y this launch computes: read by the decode kernels only (matmul_decode.wgsl,
    /// which split 5 to 8 rows over packed weights into launches of ≤ 4); 0 from every other launch.
    row0: u32,
}

/// `MatmulParams::flags` bit 2, the SwiGLU epilogue (every forward matmul entry point implements it; see
/// matmul.wgsl): the weight holds 2N rows, gate rows 0..N then up rows N..2N, `n` is N (the output
/// width), and y[t, n_off + c] = silu(x·w[c]) · (x·w[N + c]); bias and residual flags stay off.
pub const MATMUL_SWIGLU: u32 = 4;

/// Parameters of the norms (mirrors `Params` in norm.wgsl).
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
    ) -> Result<()> {
        self.matmul_into(x, w, bias, residual, y, t, w.rows, 0)
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
    ) -> Result<()> {
        let n = w.rows;
        check_matmul(x, w, y, t, ldy, n_off)?;
        if let Some(b) = bias {
            need("matmul", "bias", b, &[n])?;
        }
        if let Some(r) = residual {
            need("matmul", "residual", r, &[t, ldy])?;
        }
        let flags = bias.is_some() as u32 | (residual.is_some() as u32) << 1;
        self.record_matmul(x, w, bias, residual, y, t, ldy, n_off, n, flags)
    }

    /// act (T, I) = silu(x · gateᵀ) · (x · upᵀ) for a fused weight `w` (2I, K) holding the gate rows
    /// 0..I then the up rows I..2I: the gate/up matmul with SwiGLU as its epilogue
    /// ([`MATMUL_SWIGLU`]), equal bit for bit to [`Batch::matmul`] into (T, 2I) then [`Batch::swiglu`].
    pub fn matmul_swiglu(&mut self, x: &Tensor, w: &Weight16, act: &Tensor, t: usize) -> Result<()> {
        let op = "matmul_swiglu";
        if !w.rows.is_multiple_of(2) {
            return Err(fail(op, format!("`w` has {} rows; gate and up need an even count", w.rows)));
        }
        let inter = w.rows / 2;
        need_any_weight(op, "w", w)?;
        need(op, "x", x, &[t, w.cols])?;
        need(op, "act", act, &[t, inter])?;
        self.record_matmul(x, w, None, None, act, t, inter, 0, inter, MATMUL_SWIGLU)
    }

    /// Records one forward matmul launch of `n` output columns (checked by the caller), picking the
    /// kernel by shape and adapter.
    #[allow(clippy::too_many_arguments)]
    fn record_matmul(
        &mut self,
        x: &Tensor,
        w: &Weight16,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        y: &Tensor,
        t: usize,
        ldy: usize,
        n_off: usize,
        n: usize,
        flags: u32,
    ) -> Result<()> {
        let k = w.cols;
        let gpu = self.gpu_ref();
        // SwiGLU: kernels with a tile of columns per invocation (or workgroup) give half of it to gate
        // rows and half to the matching up rows, so each covers half as many output columns.
        let per = |cols: usize| if flags & MATMUL_SWIGLU != 0 { (cols / 2).max(1) } else { cols };
        let params = MatmulParams {
            t: t as u32,
            n: n as u32,
            k: k as u32,
            flags,
            ldy: ldy as u32,
            n_off: n_off as u32,
            w_row0: 0,
            row0: 0,
        };
        let bias = bias.map_or(&gpu.dummy, |b| &b.buffer);
        let residual = residual.map_or(&gpu.dummy, |r| &r.buffer);
        // T ≤ 4 on the CPU family with subgroups of eight: the decode kernels (kernels/decode.rs), for
        // f16 and packed weights. Any other launch of a packed weight runs on its f16 expansion.
        if self.matmul_decode(x, w, bias, residual, y, &params) {
            return Ok(());
        }
        let expanded;
        let w = if w.packed.is_some() {
            expanded = self.expand_packed(w)?;
            &expanded
        } else {
            w
        };
        // CPU adapters with subgroups of eight, from `SubgroupMatmulRows` rows (5 and 32 by default):
        // weights shared across the subgroup by broadcast, one row per lane (8 rows × 8 columns per
        // workgroup) or four (32 × 8). Other CPU adapters or fewer rows, few rows (decoding): four
        // columns per invocation; many rows: a 4×4 tile per invocation. GPUs, few rows: a workgroup per output, reduced with subgroup
        // operations where the adapter has them; many rows: 64×64 tiles staged through workgroup memory.
        // Grid: x = column groups (folded into z past the adapter's limit), y = row groups.
        // Rows per lane of the broadcast kernel that applies, if one does.
        let broadcast_rows = match gpu.subgroup_matmul {
            Some(r) if k.is_multiple_of(8) && t >= r.four_per_lane => 4,
            Some(r) if k.is_multiple_of(8) && t >= r.one_per_lane => 1,
            _ => 0,
        };
        let (shader, entry, column_groups, row_groups) =
            match (k.is_multiple_of(8), t < 4, gpu.profile, gpu.summary.subgroups) {
                _ if broadcast_rows == 4 => (
                    &MATMUL_SUBGROUP,
                    "matmul_forward_subgroup",
                    n.div_ceil(per(8)) as u32,
                    t.div_ceil(32) as u32,
                ),
                _ if broadcast_rows == 1 => (
                    &MATMUL_SUBGROUP,
                    "matmul_forward_subgroup_1row",
                    n.div_ceil(per(8)) as u32,
                    t.div_ceil(8) as u32,
                ),
                (true, true, KernelProfile::Gpu, true) => {
                    (&MATMUL_ROWS_SUBGROUP, "matmul_rows_subgroup_forward", n as u32, t as u32)
                }
                (true, true, KernelProfile::Gpu, false) => {
                    (&MATMUL_WORKGROUP, "matmul_rows_wg_forward", n as u32, t as u32)
                }
                (true, true, KernelProfile::Cpu, _) => {
                    (&MATMUL, "matmul_forward_cols4", groups(n.div_ceil(per(4))), t as u32)
                }
                (true, false, KernelProfile::Gpu, _) if k.is_multiple_of(32) => (
                    &MATMUL_WORKGROUP,
                    "matmul_tiled_forward",
                    n.div_ceil(per(64)) as u32,
                    (t as u32).div_ceil(64),
                ),
                (true, false, ..) => {
                    (&MATMUL, "matmul_forward", groups(n.div_ceil(per(4))), (t as u32).div_ceil(4))
                }
                (false, ..) => (&MATMUL, "matmul_forward_scalar", groups(n), (t as u32).div_ceil(4)),
            };
        let grid = grid_rows(column_groups, row_groups, gpu.grid_limit);
        self.dispatch(shader, entry, &params, &[&x.buffer, &w.buffer, bias, residual, &y.buffer], grid);
        Ok(())
    }

    /// y (T, N) = x (T, K) · wᵀ for a weight stored in row blocks.
    pub fn matmul_blocked(&mut self, x: &Tensor, w: &BlockedWeight16, y: &Tensor, t: usize) -> Result<()> {
        // Every block is checked before the first is recorded.
        for (first, block) in &w.blocks {
            check_matmul(x, block, y, t, w.rows, *first)?;
        }
        for (first, block) in &w.blocks {
            self.matmul_into(x, block, None, None, y, t, w.rows, *first)?;
        }
        Ok(())
    }

    /// out (T, D) = table[ids[t]] for a table stored in row blocks.
    pub fn embed_rows_blocked(
        &mut self,
        ids: &Tensor,
        table: &BlockedWeight16,
        out: &Tensor,
        t: usize,
    ) -> Result<()> {
        if let [(0, only)] = &table.blocks[..] {
            return self.embed_rows(ids, only, out, t);
        }
        check_gather("embed_rows", ids, table.cols, out, t)?;
        for (_, block) in &table.blocks {
            need_weight("embed_rows", "table", block)?;
        }
        self.clear(&out.buffer);
        for (first, block) in &table.blocks {
            self.embed_rows_add_from(ids, block, *first, out, t)?;
        }
        Ok(())
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
    ) -> Result<()> {
        let (op, dim) = ("rms_norm", w.len());
        match rows_map {
            // Gathered rows: the map's entries are the caller's (validated when it was filled).
            Some(m) => {
                need(op, "rows_map", m, &[rows])?;
                need(op, "x", x, &[1, dim])?;
            }
            None => need(op, "x", x, &[rows, dim])?,
        }
        need(op, "out", out, &[rows, dim])?;
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
        Ok(())
    }

    /// out (R, D) = layer_norm(x) · w + b.
    pub fn layer_norm(
        &mut self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        out: &Tensor,
        rows: usize,
        eps: f32,
    ) -> Result<()> {
        let (op, dim) = ("layer_norm", w.len());
        need(op, "x", x, &[rows, dim])?;
        need(op, "b", b, &[dim])?;
        need(op, "out", out, &[rows, dim])?;
        let params = NormParams { rows: rows as u32, dim: dim as u32, eps, flags: 0 };
        let grid = grid_1d(rows, self.gpu_ref().grid_limit);
        self.dispatch(
            &NORM,
            "layer_norm_forward",
            &params,
            &[&x.buffer, &w.buffer, &b.buffer, &out.buffer],
            grid,
        );
        Ok(())
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
    ) -> Result<()> {
        let op = "qkv_split";
        let (t, hd) = (p.t as usize, p.head_dim as usize);
        let heads = (p.n_head + 2 * p.n_kv_head) as usize;
        need(op, "tok", tok, &[t, 4])?;
        need(op, "qkv", qkv, &[t, heads * hd])?;
        need(op, "q", q, &[t, p.n_head as usize, hd])?;
        check_caches(op, p, k_cache, v_cache)?;
        if p.flags & ATTN_ROPE != 0 {
            need(op, "rope", rope, &[p.ctx as usize, hd / 2, 2])?;
        }
        match (p.flags & ATTN_QK_NORM != 0, qk_norm) {
            (true, Some(n)) => need(op, "qk_norm", n, &[2, hd])?,
            (true, None) => return Err(fail(op, "ATTN_QK_NORM is set but no `qk_norm` weights were given")),
            (false, _) => {}
        }
        let gpu = self.gpu_ref();
        let norm = qk_norm.map_or(&gpu.dummy, |n| &n.buffer);
        self.dispatch(
            &ATTENTION,
            "qkv_split_forward",
            p,
            &[&tok.buffer, &qkv.buffer, &rope.buffer, norm, &q.buffer, &k_cache.buffer, &v_cache.buffer],
            grid_rows(groups(heads), p.t, gpu.grid_limit),
        );
        Ok(())
    }

    /// Scaled dot-product attention of q (T, H, hd) over the caches; writes out (T, H·hd).
    /// `scores` holds (T, H, span) floats (scratch). One launch (`attn_fused_forward`: scores, softmax
    /// and values per (head, token) workgroup) where hd % 4 == 0 and hd ≤ 256, else three.
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
    ) -> Result<()> {
        let op = "attention";
        let (tu, hu, hd) = (p.t as usize, p.n_head as usize, p.head_dim as usize);
        need(op, "tok", tok, &[tu, 4])?;
        need(op, "q", q, &[tu, hu, hd])?;
        check_caches(op, p, k_cache, v_cache)?;
        need(op, "scores", scores, &[tu, hu, p.span as usize])?;
        need(op, "out", out, &[tu, hu * hd])?;
        let (t, h) = (p.t, p.n_head);
        if let Some(quads) = self.subgroup_attention_quads(p) {
            // One subgroup per (head, token), as the fused kernel's workgroups.
            let buffers = [&tok.buffer, &q.buffer, &k_cache.buffer, &v_cache.buffer, &out.buffer];
            let quads = [("QUADS", quads as f64)];
            self.dispatch_with(&ATTENTION_SUBGROUP, "attn_subgroup_forward", &quads, p, &buffers, [h, t, 1]);
            return Ok(());
        }
        if fused_attention_fits(p) {
            // One workgroup per (head, token); both stay within the limit (t ≤ MAX_STEP_TOKENS).
            let buffers =
                [&tok.buffer, &q.buffer, &k_cache.buffer, &scores.buffer, &v_cache.buffer, &out.buffer];
            self.dispatch(&ATTENTION, "attn_fused_forward", p, &buffers, [h, t, 1]);
            return Ok(());
        }
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
        Ok(())
    }

    /// out (T, D) = table[ids[t]].
    pub fn embed_rows(&mut self, ids: &Tensor, table: &Weight16, out: &Tensor, t: usize) -> Result<()> {
        check_gather("embed_rows", ids, table.cols, out, t)?;
        need_weight("embed_rows", "table", table)?;
        let params = ElementwiseParams::gather(t, table.cols, table.rows, 0);
        let grid = grid_rows(groups(table.cols / 2), t as u32, self.gpu_ref().grid_limit);
        self.dispatch(
            &ELEMENTWISE,
            "embed_rows_forward",
            &params,
            &[&ids.buffer, &table.buffer, &out.buffer],
            grid,
        );
        Ok(())
    }

    /// out (R, D) = x[rows[i]] for i < R, x holding `x_rows` rows of D (row ids clamped to them).
    pub fn gather_rows(
        &mut self,
        x: &Tensor,
        rows: &Tensor,
        out: &Tensor,
        r: usize,
        x_rows: usize,
        dim: usize,
    ) -> Result<()> {
        self.row_map("gather_rows", "gather_rows_forward", x, rows, out, (r, x_rows, dim), [x_rows, r])
    }

    /// out[rows[i]] = x[i] for i < R (x (R, D), out holding `out_rows` rows of D; row ids clamped to
    /// them); the other rows of out are left as they are.
    pub fn scatter_rows(
        &mut self,
        x: &Tensor,
        rows: &Tensor,
        out: &Tensor,
        r: usize,
        out_rows: usize,
        dim: usize,
    ) -> Result<()> {
        self.row_map("scatter_rows", "scatter_rows_forward", x, rows, out, (r, out_rows, dim), [r, out_rows])
    }

    /// A row gather or scatter: `(r, indexed rows, dim)`, and the row counts of x and out.
    #[allow(clippy::too_many_arguments)]
    fn row_map(
        &mut self,
        op: &str,
        entry: &str,
        x: &Tensor,
        rows: &Tensor,
        out: &Tensor,
        (r, indexed, dim): (usize, usize, usize),
        [x_rows, out_rows]: [usize; 2],
    ) -> Result<()> {
        if r == 0 {
            return Ok(());
        }
        if indexed == 0 {
            return Err(fail(op, "the indexed side has no rows"));
        }
        need(op, "rows", rows, &[r])?;
        need(op, "x", x, &[x_rows, dim])?;
        need(op, "out", out, &[out_rows, dim])?;
        let params = ElementwiseParams { rows: r as u32, dim: dim as u32, extra: indexed as u32, flags: 0 };
        let grid = grid_1d(r * dim, self.gpu_ref().grid_limit);
        self.dispatch(&ELEMENTWISE, entry, &params, &[&rows.buffer, &x.buffer, &out.buffer], grid);
        Ok(())
    }

    /// act (T, I) = silu(gu[:, :I]) · gu[:, I:].
    pub fn swiglu(&mut self, gu: &Tensor, act: &Tensor, t: usize, inter: usize) -> Result<()> {
        need("swiglu", "gu", gu, &[t, 2 * inter])?;
        need("swiglu", "act", act, &[t, inter])?;
        let params = ElementwiseParams::plain(t, inter);
        let grid = grid_rows(groups(inter), t as u32, self.gpu_ref().grid_limit);
        self.dispatch(&ELEMENTWISE, "swiglu_forward", &params, &[&gu.buffer, &act.buffer], grid);
        Ok(())
    }

    /// x = gelu(x) in place over `rows · dim` elements.
    pub fn gelu(&mut self, x: &Tensor, rows: usize, dim: usize) -> Result<()> {
        need("gelu", "x", x, &[rows, dim])?;
        let params = ElementwiseParams::plain(rows, dim);
        let grid = grid_1d(rows * dim, self.gpu_ref().grid_limit);
        self.dispatch(&ELEMENTWISE, "gelu_forward", &params, &[&x.buffer], grid);
        Ok(())
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
    ) -> Result<()> {
        let (op, chunks) = ("logprob", vocab.div_ceil(LOGPROB_CHUNK));
        if vocab == 0 {
            return Err(fail(op, "a vocabulary of 0 columns (a softmax needs at least one)"));
        }
        need(op, "logits", logits, &[rows, vocab])?;
        need(op, "targets", targets, &[rows])?;
        need(op, "partial", partial, &[rows, chunks, 2])?;
        need(op, "out", out, &[rows])?;
        let params = ElementwiseParams::logprob(rows, vocab, chunks);
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
        Ok(())
    }

    /// out (B, D) = mean of x over each (start, len) span in `spans`, then L2-normalised per row.
    pub fn mean_pool_l2(
        &mut self,
        x: &Tensor,
        spans: &Tensor,
        out: &Tensor,
        batch: usize,
        dim: usize,
    ) -> Result<()> {
        // The spans' row ranges are the caller's (built from its own token counts).
        need("mean_pool_l2", "x", x, &[1, dim])?;
        need("mean_pool_l2", "spans", spans, &[batch, 2])?;
        need("mean_pool_l2", "out", out, &[batch, dim])?;
        let params = ElementwiseParams::plain(batch, dim);
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
        Ok(())
    }
}

impl<'g> Batch<'g> {
    /// out (T, D) += table[ids[t]]: an accumulating gather (BERT's word + position + token-type sum).
    pub fn embed_rows_add(&mut self, ids: &Tensor, table: &Weight16, out: &Tensor, t: usize) -> Result<()> {
        self.embed_rows_add_from(ids, table, 0, out, t)
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
    ) -> Result<()> {
        check_gather("embed_rows_add", ids, table.cols, out, t)?;
        need_weight("embed_rows_add", "table", table)?;
        let params = ElementwiseParams::gather(t, table.cols, table.rows, first);
        let grid = grid_rows(groups(table.cols / 2), t as u32, self.gpu_ref().grid_limit);
        let buffers = [&ids.buffer, &table.buffer, &out.buffer];
        self.dispatch(&ELEMENTWISE, "embed_rows_add_forward", &params, &buffers, grid);
        Ok(())
    }
}

/// The sizes one matmul launch (or one row block of one) reads and writes: x (T, K), y (T, ldy) and
/// the block's columns within y's row.
fn check_matmul(x: &Tensor, w: &Weight16, y: &Tensor, t: usize, ldy: usize, n_off: usize) -> Result<()> {
    let (n, k) = (w.rows, w.cols);
    need_any_weight("matmul", "w", w)?;
    need("matmul", "x", x, &[t, k])?;
    need("matmul", "y", y, &[t, ldy])?;
    if n_off + n > ldy {
        return Err(fail(
            "matmul",
            format!("columns {n_off}..{} of `y` exceed its row stride {ldy}", n_off + n),
        ));
    }
    Ok(())
}

/// Whether [`Batch::attention`] runs as one launch: the fused kernel reads q, k, v in whole `vec4`s and
/// gives each of its 64 lanes one feature quad of a head (hd / 4 ≤ 64).
/// Loop iterations one invocation of a kernel may spend (lavapipe's budget is about 65536).
const LOOP_BUDGET: u64 = 60000;

impl Batch<'_> {
    /// The feature quads per lane of attention_subgroup.wgsl's kernel (hd / 32), where it applies: the
    /// CPU family with subgroups of eight (as the broadcast matmuls), hd a multiple of 32 up to 256, and
    /// the longest key walk within lavapipe's loop budget counted as if nothing unrolled.
    pub(super) fn subgroup_attention_quads(&self, p: &AttnParams) -> Option<u32> {
        let gpu = self.gpu_ref();
        let quads = p.head_dim / 32;
        let fits = gpu.subgroup_matmul.is_some()
            && p.head_dim.is_multiple_of(32)
            && (1..=8).contains(&quads)
            && u64::from(p.span) * (1 + 2 * u64::from(quads)) + 2 * u64::from(quads) <= LOOP_BUDGET;
        fits.then_some(quads)
    }
}

fn fused_attention_fits(p: &AttnParams) -> bool {
    p.head_dim.is_multiple_of(4) && (4..=256).contains(&p.head_dim)
}

/// The sizes a row gather reads and writes: ids (T), out (T, D).
fn check_gather(op: &str, ids: &Tensor, dim: usize, out: &Tensor, t: usize) -> Result<()> {
    need(op, "ids", ids, &[t])?;
    need(op, "out", out, &[t, dim])
}

/// The caches hold at least one slot of (Hkv, ctx, hd) each, and the same number of slots (which slot
/// each token writes is read from `tok` on the GPU).
pub(super) fn check_caches(op: &str, p: &AttnParams, k_cache: &Tensor, v_cache: &Tensor) -> Result<()> {
    let slot = [p.n_kv_head as usize, p.ctx as usize, p.head_dim as usize];
    need(op, "k_cache", k_cache, &slot)?;
    need(op, "v_cache", v_cache, &slot)?;
    if k_cache.len() != v_cache.len() {
        return Err(fail(
            op,
            format!("`k_cache` ({}) and `v_cache` ({}) differ in size", k_cache.len(), v_cache.len()),
        ));
    }
    Ok(())
}
