//! Typed launches of the LM head fused with a chunked log-softmax / cross-entropy (shaders/cross_entropy.wgsl):
//! per-row log-sum-exp and negative log-likelihood of the target, and the hidden states' gradient, computed
//! chunk by chunk over the vocabulary so T × vocabulary logits are never resident at once. Every buffer
//! size is checked and a mismatch is an error naming the kernel and the buffer, recording nothing.

use bytemuck::{Pod, Zeroable};

use super::{GradWrite, MatmulParams, grid_1d, grid_rows, groups};
use crate::Result;
use crate::gpu::check::{fail, need, need_weight, to_u32};
use crate::gpu::shaders::{CROSS_ENTROPY, MATMUL_SUBGROUP};
use crate::gpu::{Batch, BlockedWeight16, Tensor};

/// Vocabulary rows per chunk: the scratch holds (T, chunk) logits. lavapipe stops an invocation after
/// about 65536 loop iterations in all; the longest loops walk one chunk (2 · 4096 and 4096 · 4 + 4096).
pub const XENT_CHUNK: usize = 4096;

/// A target id marking a row to ignore (any id ≥ the vocabulary does): its nll is 0 and its gradient
/// zero, whatever its upstream gradient (torch's `ignore_index`).
pub const XENT_IGNORE: u32 = u32::MAX;

/// Columns of the logits scratch a vocabulary of `vocab` needs: the scratch is (T, this).
pub fn xent_chunk_cols(vocab: usize) -> usize {
    XENT_CHUNK.min(vocab)
}

/// Parameters of the cross-entropy kernels (mirrors `Params` in cross_entropy.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct XentParams {
    t: u32,
    d: u32,
    /// Columns of this chunk.
    c: u32,
    /// The chunk's first row within its weight block.
    r0: u32,
    /// The chunk's first vocabulary id.
    v0: u32,
    vocab: u32,
    /// Bit 0: the first chunk (the online update starts its running stats).
    flags: u32,
    pad: u32,
}

impl XentParams {
    /// The parameters of one vocabulary chunk (see `chunks`), with `flags` as the kernel reads them.
    fn chunk(t: u32, d: u32, vocab: u32, (r0, c, v0): (usize, usize, usize), flags: bool) -> XentParams {
        XentParams { t, d, c: c as u32, r0: r0 as u32, v0: v0 as u32, vocab, flags: flags as u32, pad: 0 }
    }

    /// The parameters of the per-row kernels, which walk no chunk.
    fn rows(t: u32, d: u32, vocab: u32) -> XentParams {
        XentParams::chunk(t, d, vocab, (0, 0, 0), false)
    }
}

/// The sizes both directions share, checked before anything is recorded; returns (t, d, vocab) as u32.
fn check_common(
    op: &str,
    h: &Tensor,
    w: &BlockedWeight16,
    targets: &Tensor,
    scratch: &Tensor,
    t: usize,
) -> Result<(u32, u32, u32)> {
    let d = w.cols;
    if d == 0 || !d.is_multiple_of(8) {
        return Err(fail(op, format!("hidden size {d} must be a positive multiple of 8")));
    }
    if w.blocks.iter().any(|(_, b)| b.cols != d) {
        return Err(fail(op, "the weight's row blocks differ in width"));
    }
    if w.rows == 0 {
        return Err(fail(op, "the LM head has no rows (a softmax needs a vocabulary)"));
    }
    for (_, block) in &w.blocks {
        need_weight(op, "w", block)?;
    }
    need(op, "h", h, &[t, d])?;
    need(op, "targets", targets, &[t])?;
    need(op, "scratch", scratch, &[t, xent_chunk_cols(w.rows)])?;
    to_u32(op, "rows × chunk columns", t * xent_chunk_cols(w.rows))?;
    to_u32(op, "rows × hidden size", t * d)?;
    Ok((to_u32(op, "rows", t)?, to_u32(op, "hidden size", d)?, to_u32(op, "vocabulary", w.rows)?))
}

/// The chunks of a weight in row blocks: (block, first row within it, rows, first vocabulary id).
fn chunks(w: &BlockedWeight16) -> impl Iterator<Item = (&crate::gpu::Weight16, usize, usize, usize)> {
    w.blocks.iter().flat_map(|(first, block)| {
        (0..block.rows)
            .step_by(XENT_CHUNK)
            .map(move |r0| (block, r0, XENT_CHUNK.min(block.rows - r0), first + r0))
    })
}

impl<'g> Batch<'g> {
    /// Records logits (T, c) = h · W[r0 .. r0 + c]ᵀ of one chunk into `scratch` (row stride c). On the
    /// CPU family with subgroups of eight, the broadcast matmul's kernels (matmul_subgroup.wgsl, taking
    /// the chunk's rows by `w_row0`); elsewhere the 4×4 tile of cross_entropy.wgsl.
    fn xent_logits(&mut self, p: &XentParams, h: &Tensor, block: &crate::gpu::Weight16, scratch: &Tensor) {
        let gpu = self.gpu_ref();
        let limit = gpu.grid_limit;
        if let Some(rows) = gpu.subgroup_matmul {
            let (entry, rows_per_group) = if p.t as usize >= rows.four_per_lane {
                ("matmul_forward_subgroup", 32)
            } else {
                ("matmul_forward_subgroup_1row", 8)
            };
            let params =
                MatmulParams { t: p.t, n: p.c, k: p.d, flags: 0, ldy: p.c, n_off: 0, w_row0: p.r0, row0: 0 };
            let grid = grid_rows(p.c.div_ceil(8), p.t.div_ceil(rows_per_group), limit);
            let dummy = &gpu.dummy;
            let buffers = [&h.buffer, &block.buffer, dummy, dummy, &scratch.buffer];
            self.dispatch(&MATMUL_SUBGROUP, entry, &params, &buffers, grid);
            return;
        }
        let grid = grid_rows(groups((p.c as usize).div_ceil(4)), p.t.div_ceil(4), limit);
        self.dispatch(
            &CROSS_ENTROPY,
            "xent_logits_chunk",
            p,
            &[&h.buffer, &block.buffer, &scratch.buffer],
            grid,
        );
    }

    /// Records dh (T, D) (+)= chunk (T, c) · W[r0 .. r0 + c]: the frozen linear's input gradient over the
    /// chunk's rows ([`Batch::record_dx`], sizes checked by `check_common`).
    fn xent_chunk_times_w(
        &mut self,
        p: &XentParams,
        chunk: &Tensor,
        block: &crate::gpu::Weight16,
        dh: &Tensor,
        write: GradWrite,
    ) -> Result<()> {
        let (r0, c) = (p.r0 as usize, p.c as usize);
        self.record_dx(chunk, block, r0..r0 + c, c, 0, dh, p.t as usize, write)
    }

    /// Per row of the hidden states h (T, D) (final-normed, f32) and the LM head `w` (V, D) (16-bit, in
    /// row blocks): lse (T) = log Σ_v exp(h · w_v) and nll (T) = lse − h · w_{y_t}, the cross-entropy of
    /// target y_t (−nll is the target's log-prob); 0 for a target ≥ V ([`XENT_IGNORE`]). Chunk by chunk
    /// over the vocabulary: `scratch` holds (T, [`xent_chunk_cols`]) logits, `stats` (T, 4) the running
    /// max, sum and target logit.
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_cross_entropy(
        &mut self,
        h: &Tensor,
        w: &BlockedWeight16,
        targets: &Tensor,
        scratch: &Tensor,
        stats: &Tensor,
        lse: &Tensor,
        nll: &Tensor,
        t: usize,
    ) -> Result<()> {
        let op = "lm_head_cross_entropy";
        let (tu, d, vocab) = check_common(op, h, w, targets, scratch, t)?;
        need(op, "stats", stats, &[t, 4])?;
        need(op, "lse", lse, &[t])?;
        need(op, "nll", nll, &[t])?;
        if t == 0 {
            return Ok(());
        }
        let limit = self.gpu_ref().grid_limit;
        for (i, (block, r0, c, v0)) in chunks(w).enumerate() {
            let p = XentParams::chunk(tu, d, vocab, (r0, c, v0), i == 0);
            self.xent_logits(&p, h, block, scratch);
            let buffers = [&targets.buffer, &scratch.buffer, &stats.buffer];
            self.dispatch(&CROSS_ENTROPY, "xent_online_forward", &p, &buffers, grid_1d(t, limit));
        }
        let p = XentParams::rows(tu, d, vocab);
        let buffers = [&targets.buffer, &stats.buffer, &lse.buffer, &nll.buffer];
        self.dispatch(&CROSS_ENTROPY, "xent_finish_forward", &p, &buffers, grid_1d(t, limit));
        Ok(())
    }

    /// dh (T, D) (+)= Σ_v g_t · (softmax(h_t · Wᵀ)_v − 1[v = y_t]) · w_v: the gradient of Σ_t g_t · nll_t
    /// with respect to h, from the forward's `lse` and the upstream gradient `grad` (T) (e.g. weight /
    /// tokens for a mean cross-entropy; 0 masks a row, as does a target ≥ V). The logits are recomputed
    /// chunk by chunk into `scratch` (T, [`xent_chunk_cols`]). The frozen W gets no gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_cross_entropy_backward(
        &mut self,
        h: &Tensor,
        w: &BlockedWeight16,
        targets: &Tensor,
        lse: &Tensor,
        grad: &Tensor,
        scratch: &Tensor,
        dh: &Tensor,
        t: usize,
        write: GradWrite,
    ) -> Result<()> {
        let op = "lm_head_cross_entropy_backward";
        let (tu, d, vocab) = check_common(op, h, w, targets, scratch, t)?;
        need(op, "lse", lse, &[t])?;
        need(op, "grad", grad, &[t])?;
        need(op, "dh", dh, &[t, w.cols])?;
        if t == 0 {
            return Ok(());
        }
        let limit = self.gpu_ref().grid_limit;
        for (i, (block, r0, c, v0)) in chunks(w).enumerate() {
            let write = if i > 0 { GradWrite::Accumulate } else { write };
            let p = XentParams::chunk(tu, d, vocab, (r0, c, v0), false);
            self.xent_logits(&p, h, block, scratch);
            let buffers = [&targets.buffer, &lse.buffer, &grad.buffer, &scratch.buffer];
            self.dispatch(&CROSS_ENTROPY, "xent_dlogits_backward", &p, &buffers, grid_1d(t * c, limit));
            self.xent_chunk_times_w(&p, scratch, block, dh, write)?;
        }
        Ok(())
    }

    /// [`Batch::lm_head_cross_entropy`] and [`Batch::lm_head_cross_entropy_backward`] (overwriting dh)
    /// in one walk over the vocabulary, for an upstream gradient `grad` known before the forward (a mean
    /// cross-entropy): two matmuls per chunk instead of three. dh accumulates Σ_v exp(logit − running
    /// max) · w_v, rescaled whenever a row's max grows, then is scaled by g_t / Σ and has g_t · w_{y_t}
    /// subtracted.
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_cross_entropy_with_grad(
        &mut self,
        h: &Tensor,
        w: &BlockedWeight16,
        targets: &Tensor,
        grad: &Tensor,
        scratch: &Tensor,
        stats: &Tensor,
        lse: &Tensor,
        nll: &Tensor,
        dh: &Tensor,
        t: usize,
    ) -> Result<()> {
        let op = "lm_head_cross_entropy_with_grad";
        let (tu, d, vocab) = check_common(op, h, w, targets, scratch, t)?;
        need(op, "grad", grad, &[t])?;
        need(op, "stats", stats, &[t, 4])?;
        need(op, "lse", lse, &[t])?;
        need(op, "nll", nll, &[t])?;
        need(op, "dh", dh, &[t, w.cols])?;
        if t == 0 {
            return Ok(());
        }
        let limit = self.gpu_ref().grid_limit;
        for (i, (block, r0, c, v0)) in chunks(w).enumerate() {
            let p = XentParams::chunk(tu, d, vocab, (r0, c, v0), i == 0);
            self.xent_logits(&p, h, block, scratch);
            let buffers = [&targets.buffer, &scratch.buffer, &stats.buffer];
            self.dispatch(&CROSS_ENTROPY, "xent_online_forward", &p, &buffers, grid_1d(t, limit));
            let buffers = [&stats.buffer, &scratch.buffer];
            self.dispatch(&CROSS_ENTROPY, "xent_exp_forward", &p, &buffers, grid_1d(t * c, limit));
            // dh_t = dh_t · factor_t (what earlier chunks summed, to the new running max) + chunk · W.
            let write = if i == 0 {
                GradWrite::Overwrite
            } else {
                let buffers = [&stats.buffer, &dh.buffer];
                self.dispatch(
                    &CROSS_ENTROPY,
                    "xent_rescale_forward",
                    &p,
                    &buffers,
                    grid_1d(t * w.cols, limit),
                );
                GradWrite::Accumulate
            };
            self.xent_chunk_times_w(&p, scratch, block, dh, write)?;
        }
        let p = XentParams::rows(tu, d, vocab);
        let buffers = [&targets.buffer, &stats.buffer, &lse.buffer, &nll.buffer];
        self.dispatch(&CROSS_ENTROPY, "xent_finish_forward", &p, &buffers, grid_1d(t, limit));
        let buffers = [&targets.buffer, &stats.buffer, &grad.buffer, &dh.buffer];
        let grid = grid_1d(t * w.cols, limit);
        self.dispatch(&CROSS_ENTROPY, "xent_finish_grad_backward", &p, &buffers, grid);
        for (first, block) in &w.blocks {
            let p = XentParams { c: block.rows as u32, v0: *first as u32, ..p };
            let buffers = [&targets.buffer, &block.buffer, &grad.buffer, &dh.buffer];
            let grid = grid_1d(t * w.cols / 2, limit);
            self.dispatch(&CROSS_ENTROPY, "xent_target_row_backward", &p, &buffers, grid);
        }
        Ok(())
    }
}
