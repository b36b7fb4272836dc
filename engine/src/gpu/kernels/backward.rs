//! Typed launches of the backward kernels (and the forward variants that save what a backward needs):
//! RMSNorm, SwiGLU, the fused q/k/v split with RoPE, attention, and the frozen linear's input gradient.
//! Unlike the inference launches, every buffer size is checked here and a mismatch is an error: in a
//! release build wgpu's bounds checks would otherwise clamp the access and return wrong gradients.

use bytemuck::{Pod, Zeroable};

use super::{AttnParams, ElementwiseParams, NormParams, grid_1d, grid_rows, groups};
use crate::Result;
use crate::gpu::check::{fail, need, need_weight, to_u32};
use crate::gpu::shaders::{ATTENTION, ATTENTION_SUBGROUP, ELEMENTWISE, MATMUL, MATMUL_SUBGROUP, NORM};
use crate::gpu::{Batch, Tensor, Weight16};

/// Whether a backward launch overwrites its gradient output or adds into it (a residual stream's
/// gradient, or fused projections summing their parts of one input's gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradWrite {
    Overwrite,
    Accumulate,
}

impl GradWrite {
    fn flag(self) -> u32 {
        (self == GradWrite::Accumulate) as u32
    }
}

/// Parameters of matmul_backward_dx (mirrors `DxParams` in matmul.wgsl): weight rows
/// `first .. first + n`, read against dY columns `n_off + first − row0 ..`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DxParams {
    t: u32,
    n: u32,
    k: u32,
    flags: u32,
    ldy: u32,
    n_off: u32,
    first: u32,
    /// Weight row n's dY value is in column `n_off + n − row0` (the launch's first row of its range).
    row0: u32,
}

/// Weight rows one dX launch walks: lavapipe stops an invocation after about 65536 loop iterations in
/// all, so a long N (an LM head's vocabulary) is split into launches that add up.
const DX_ROWS_PER_LAUNCH: usize = 16384;

/// Loop iterations one attention-backward invocation may spend walking tokens (lavapipe's budget).
const TOKEN_WALK_BUDGET: usize = 60000;

/// Followers one shared-prompt summing may add (one loop iteration each, far inside lavapipe's budget).
pub const MAX_PROMPT_FOLLOWERS: usize = 1024;

/// A prompt computed once in the `leader`'s cache slot and copied into the `followers`' slots
/// (`Decoder::copy_cache_prefix`), over cache positions `0 .. len`.
#[derive(Debug, Clone, Copy)]
pub struct SharedPrompt<'a> {
    pub leader: usize,
    pub followers: &'a [usize],
    pub len: usize,
}

/// The shape of a KV cache (and of its dK / dV): (slots, Hkv, ctx, hd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheShape {
    pub slots: usize,
    pub n_kv_head: usize,
    pub ctx: usize,
    pub head_dim: usize,
}

/// Parameters of shared_prompt_grad_backward (mirrors `SharedPromptParams` in attention.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SharedPromptParams {
    n_kv_head: u32,
    ctx: u32,
    head_dim: u32,
    len: u32,
    leader: u32,
    n_followers: u32,
    pad: [u32; 2],
}

/// Parameters of the attention backward kernels (mirrors `BackParams` in attention.wgsl). `flags` holds
/// [`GradWrite::flag`] for dK and dV (`DKV_ACCUMULATE`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttnBackParams {
    t: u32,
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    ctx: u32,
    span: u32,
    slots: u32,
    flags: u32,
}

/// The buffers attention's backward reads and writes. `lse` comes from [`Batch::attention_train`] in
/// the forward; `delta` (T, H) and `pds` (T, H, span, 2) are scratch. `slot_tokens` (slots, 2) holds, per
/// cache slot, the range of this pass's tokens in it, [first, end) (`TokenInfo::slot_ranges`).
/// `dk_cache`, `dv_cache` have the caches' shape; [`Batch::attention_backward`]'s [`GradWrite`] says
/// whether they are overwritten whole or added into.
pub struct AttnBackward<'a> {
    pub tok: &'a Tensor,
    pub slot_tokens: &'a Tensor,
    pub q: &'a Tensor,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub out: &'a Tensor,
    pub dout: &'a Tensor,
    pub lse: &'a Tensor,
    pub delta: &'a Tensor,
    pub pds: &'a Tensor,
    pub dq: &'a Tensor,
    pub dk_cache: &'a Tensor,
    pub dv_cache: &'a Tensor,
}

impl<'g> Batch<'g> {
    /// out (R, D) = rms_norm(x) · w as [`Batch::rms_norm`] (no gather), also saving inv_rms (R) for
    /// [`Batch::rms_norm_backward`].
    pub fn rms_norm_train(
        &mut self,
        x: &Tensor,
        w: &Tensor,
        out: &Tensor,
        inv_rms: &Tensor,
        rows: usize,
        eps: f32,
    ) -> Result<()> {
        let (k, dim) = ("rms_norm_train_forward", w.len());
        need(k, "x", x, &[rows, dim])?;
        need(k, "out", out, &[rows, dim])?;
        need(k, "inv_rms", inv_rms, &[rows])?;
        let params =
            NormParams { rows: to_u32(k, "rows", rows)?, dim: to_u32(k, "dim", dim)?, eps, flags: 0 };
        let buffers = [&x.buffer, &w.buffer, &out.buffer, &inv_rms.buffer];
        self.dispatch(&NORM, k, &params, &buffers, grid_1d(rows, self.gpu_ref().grid_limit));
        Ok(())
    }

    /// dx (R, D) (+)= RMSNorm's input gradient from dy, the saved input x and inv_rms. Rows of any
    /// length (also Qwen3's per-head q/k norms). The frozen weight gets no gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward(
        &mut self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        inv_rms: &Tensor,
        dx: &Tensor,
        rows: usize,
        write: GradWrite,
    ) -> Result<()> {
        let (k, dim) = ("rms_norm_backward", w.len());
        for (name, t) in [("x", x), ("dy", dy), ("dx", dx)] {
            need(k, name, t, &[rows, dim])?;
        }
        need(k, "inv_rms", inv_rms, &[rows])?;
        let params = NormParams {
            rows: to_u32(k, "rows", rows)?,
            dim: to_u32(k, "dim", dim)?,
            eps: 0.0,
            flags: write.flag(),
        };
        let buffers = [&x.buffer, &w.buffer, &dy.buffer, &inv_rms.buffer, &dx.buffer];
        self.dispatch(&NORM, k, &params, &buffers, grid_1d(rows, self.gpu_ref().grid_limit));
        Ok(())
    }

    /// dgu (T, 2I) = (d gate, d up) of act = silu(gate) · up, from dact (T, I) and the saved gu.
    pub fn swiglu_backward(
        &mut self,
        gu: &Tensor,
        dact: &Tensor,
        dgu: &Tensor,
        t: usize,
        inter: usize,
    ) -> Result<()> {
        let k = "swiglu_backward";
        need(k, "gu", gu, &[t, 2 * inter])?;
        need(k, "dact", dact, &[t, inter])?;
        need(k, "dgu", dgu, &[t, 2 * inter])?;
        let params = ElementwiseParams::plain(t, inter);
        let grid = [groups(inter), to_u32(k, "tokens", t)?, 1];
        self.dispatch(&ELEMENTWISE, k, &params, &[&gu.buffer, &dact.buffer, &dgu.buffer], grid);
        Ok(())
    }

    /// dX (T, K) (+)= dY[:, n_off .. n_off + N] · W for a frozen W (N, K), dY of row stride `ldy`: the
    /// frozen linear's input gradient. For a weight in row blocks, or fused projections that share an
    /// input, call once per block with [`GradWrite::Accumulate`] after the first.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_dx(
        &mut self,
        dy: &Tensor,
        w: &Weight16,
        dx: &Tensor,
        t: usize,
        ldy: usize,
        n_off: usize,
        write: GradWrite,
    ) -> Result<()> {
        let (k, n, cols) = ("matmul_backward_dx", w.rows, w.cols);
        // A packed weight runs on its f16 expansion.
        let expanded;
        let w = if w.packed.is_some() {
            expanded = self.expand_packed(w)?;
            &expanded
        } else {
            w
        };
        if n_off + n > ldy {
            return Err(fail(k, format!("columns {n_off}..{} of dY exceed its row stride {ldy}", n_off + n)));
        }
        need_weight(k, "w", w)?;
        need(k, "dy", dy, &[t, ldy])?;
        need(k, "dx", dx, &[t, cols])?;
        self.record_dx(dy, w, 0..n, ldy, n_off, dx, t, write)
    }

    /// Records dX (T, K) (+)= Σ over weight rows n in `rows` of dY[t, n_off + n − rows.start] · W[n], in
    /// launches of at most [`DX_ROWS_PER_LAUNCH`] rows that add up: a whole weight (`rows` = 0..N), or
    /// a range of one taken against its own dY (the cross-entropy's vocabulary chunks, loss.rs). The
    /// caller has checked the sizes; `w` is not packed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_dx(
        &mut self,
        dy: &Tensor,
        w: &Weight16,
        rows: std::ops::Range<usize>,
        ldy: usize,
        n_off: usize,
        dx: &Tensor,
        t: usize,
        write: GradWrite,
    ) -> Result<()> {
        let (k, cols) = ("matmul_backward_dx", w.cols);
        debug_assert!(w.packed.is_none(), "{k}: a packed weight reaches the dX launch unexpanded");
        let t32 = to_u32(k, "tokens", t)?;
        // CPU family with subgroups of eight: dY values shared by broadcast, 64 columns × 4 rows per
        // workgroup of eight; else 8 (K % 8 == 0) or 2 columns × 4 rows per invocation.
        let (shader, entry, column_groups) = match (cols % 8 == 0, self.gpu_ref().subgroup_matmul) {
            (true, Some(_)) => {
                (&MATMUL_SUBGROUP, "matmul_backward_dx_subgroup", (cols / 8).div_ceil(8) as u32)
            }
            (true, None) => (&MATMUL, "matmul_backward_dx", groups(cols / 8)),
            (false, _) => (&MATMUL, "matmul_backward_dx_scalar", groups(cols / 2)),
        };
        let grid = [column_groups, t32.div_ceil(4), 1];
        let (k32, ldy32, n_off32) =
            (to_u32(k, "K", cols)?, to_u32(k, "ldy", ldy)?, to_u32(k, "n_off", n_off)?);
        let row0 = to_u32(k, "first row", rows.start)?;
        for first in rows.clone().step_by(DX_ROWS_PER_LAUNCH) {
            let write = if first == rows.start { write } else { GradWrite::Accumulate };
            let params = DxParams {
                t: t32,
                n: to_u32(k, "rows", DX_ROWS_PER_LAUNCH.min(rows.end - first))?,
                k: k32,
                flags: write.flag(),
                ldy: ldy32,
                n_off: n_off32,
                first: to_u32(k, "first row", first)?,
                row0,
            };
            self.dispatch(shader, entry, &params, &[&dy.buffer, &w.buffer, &dx.buffer], grid);
        }
        Ok(())
    }

    /// dqkv (T, (H + 2Hkv)·hd) of [`Batch::qkv_split`] from dq (T, H, hd) and dk, dv in the caches'
    /// layout, with the saved qkv (the q/k norms' 1/rms is recomputed from it). Same flags and grid as
    /// the forward (heads along x, folded into z past the limit; tokens along y).
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_split_backward(
        &mut self,
        p: &AttnParams,
        tok: &Tensor,
        qkv: &Tensor,
        rope: &Tensor,
        qk_norm: Option<&Tensor>,
        dq: &Tensor,
        dk_cache: &Tensor,
        dv_cache: &Tensor,
        dqkv: &Tensor,
    ) -> Result<()> {
        let k = "qkv_split_backward";
        let (t, hd) = (p.t as usize, p.head_dim as usize);
        let heads = p.n_head as usize + 2 * p.n_kv_head as usize;
        need(k, "tok", tok, &[t, 4])?;
        need(k, "qkv", qkv, &[t, heads * hd])?;
        need(k, "dqkv", dqkv, &[t, heads * hd])?;
        need(k, "dq", dq, &[t, p.n_head as usize, hd])?;
        if dk_cache.len() != dv_cache.len() {
            return Err(fail(
                k,
                format!("dk ({}) and dv ({}) differ in size", dk_cache.len(), dv_cache.len()),
            ));
        }
        let gpu = self.gpu_ref();
        let norm = match qk_norm {
            Some(n) => {
                need(k, "qk_norm", n, &[2, hd])?;
                &n.buffer
            }
            None => &gpu.dummy,
        };
        let buffers = [
            &tok.buffer,
            &qkv.buffer,
            &rope.buffer,
            norm,
            &dq.buffer,
            &dk_cache.buffer,
            &dv_cache.buffer,
            &dqkv.buffer,
        ];
        let grid = grid_rows(groups(heads), p.t, gpu.grid_limit);
        self.dispatch(&ATTENTION, k, p, &buffers, grid);
        Ok(())
    }

    /// Attention's forward as [`Batch::attention`], also saving lse (T, H), the log-sum-exp of each score
    /// row, for [`Batch::attention_backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_train(
        &mut self,
        p: &AttnParams,
        tok: &Tensor,
        q: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        scores: &Tensor,
        out: &Tensor,
        lse: &Tensor,
    ) -> Result<()> {
        let k = "attention_train";
        let (t, h, hd) = (p.t as usize, p.n_head as usize, p.head_dim as usize);
        need(k, "scores", scores, &[t, h, p.span as usize])?;
        need(k, "q", q, &[t, h, hd])?;
        need(k, "out", out, &[t, h * hd])?;
        need(k, "lse", lse, &[t, h])?;
        need(k, "tok", tok, &[t, 4])?;
        super::check_caches(k, p, k_cache, v_cache)?;
        if let Some(quads) = self.subgroup_attention_quads(p) {
            // One subgroup per (head, token) with an online softmax (attention_subgroup.wgsl): no
            // scores written; the backward recomputes them from lse as it does after the three kernels.
            let buffers =
                [&tok.buffer, &q.buffer, &k_cache.buffer, &v_cache.buffer, &out.buffer, &lse.buffer];
            let quads = [("QUADS", quads as f64)];
            let entry = "attn_subgroup_train_forward";
            self.dispatch_with(&ATTENTION_SUBGROUP, entry, &quads, p, &buffers, [p.n_head, p.t, 1]);
            return Ok(());
        }
        self.dispatch(
            &ATTENTION,
            "attn_scores_forward",
            p,
            &[&tok.buffer, &q.buffer, &k_cache.buffer, &scores.buffer],
            [groups(p.span as usize), p.n_head, p.t],
        );
        self.attention_softmax_lse(p, tok, scores, lse)?;
        self.dispatch(
            &ATTENTION,
            "attn_values_forward",
            p,
            &[&tok.buffer, &v_cache.buffer, &scores.buffer, &out.buffer],
            [groups(hd), p.n_head, p.t],
        );
        Ok(())
    }

    /// Softmax over each score row in place, saving its log-sum-exp into lse (T, H). One invocation per
    /// row on a 1-D grid folded past the per-dimension limit, as `attn_softmax_forward`.
    fn attention_softmax_lse(
        &mut self,
        p: &AttnParams,
        tok: &Tensor,
        scores: &Tensor,
        lse: &Tensor,
    ) -> Result<()> {
        let rows = p.t as usize * p.n_head as usize;
        to_u32("attention_train", "rows (tokens × heads)", rows)?;
        let buffers = [&tok.buffer, &scores.buffer, &lse.buffer];
        let grid = grid_1d(rows, self.gpu_ref().grid_limit);
        self.dispatch(&ATTENTION, "attn_softmax_lse_forward", p, &buffers, grid);
        Ok(())
    }

    /// dq, dk, dv of causal grouped-query attention, probabilities recomputed from q, k and the saved
    /// lse. `slots` is the number of cache slots (dk, dv have shape (slots, Hkv, ctx, hd)). dq is
    /// overwritten (one row per token of the pass); `dkv_write` says whether dk and dv are overwritten
    /// whole (entries no token of the pass attends to become zero) or added into.
    ///
    /// With [`GradWrite::Accumulate`], the tokens of one sequence may be split over several passes (the
    /// caches holding the whole sequence's keys and values, each pass with its own q, out, dout, lse and
    /// dq rows): zero dk and dv once, or overwrite in the first pass, and the passes add up to the
    /// gradient of one pass over all the tokens.
    ///
    /// Shared prompts: dk and dv are per slot, in the caches' layout, and an entry's gradient sums only
    /// the tokens of its own slot. When a prompt shared by several sequences ran once in a leader's slot
    /// and its keys and values were copied into the followers' slots (`copy_cache_prefix`), each
    /// follower's gradient for those prompt positions lands in the follower's own slot, where no prompt
    /// token of the pass reads it back. Before [`Batch::qkv_split_backward`], the caller must add, for
    /// every follower, layer and kv head h, the follower's entries `[follower, h, 0 .. prompt_len, ..]`
    /// of dk and dv into the leader's `[leader, h, 0 .. prompt_len, ..]` (contiguous runs of
    /// prompt_len · hd floats), or the LoRA gradients of k and v lose every follower's share:
    /// [`Batch::sum_shared_prompt_grad_into_leader`] does that for one dK or dV buffer.
    pub fn attention_backward(
        &mut self,
        p: &AttnParams,
        slots: usize,
        b: &AttnBackward,
        dkv_write: GradWrite,
    ) -> Result<()> {
        let k = "attention_backward";
        let (t, h, hkv, hd) = (p.t as usize, p.n_head as usize, p.n_kv_head as usize, p.head_dim as usize);
        let (span, ctx) = (p.span as usize, p.ctx as usize);
        if hkv == 0 || h % hkv != 0 || hd == 0 || hd % 4 != 0 {
            return Err(fail(
                k,
                format!("{h} query heads over {hkv} kv heads of {hd}: needs H a multiple of Hkv and hd of 4"),
            ));
        }
        if t * (1 + h / hkv) > TOKEN_WALK_BUDGET {
            return Err(fail(
                k,
                format!(
                    "{t} tokens × {} heads per kv head exceed what one pass can walk ({TOKEN_WALK_BUDGET} loop \
                     iterations per invocation); split the batch into smaller passes: with \
                     GradWrite::Accumulate for dK and dV the passes add up, so a pass may hold part of a \
                     sequence's tokens (the caches holding all of its keys and values)",
                    h / hkv
                ),
            ));
        }
        let cache = [slots, hkv, ctx, hd];
        need(k, "tok", b.tok, &[t, 4])?;
        need(k, "slot_tokens", b.slot_tokens, &[slots, 2])?;
        for (name, x) in [("q", b.q), ("out", b.out), ("dout", b.dout), ("dq", b.dq)] {
            need(k, name, x, &[t, h, hd])?;
        }
        for (name, x) in
            [("k_cache", b.k_cache), ("v_cache", b.v_cache), ("dk", b.dk_cache), ("dv", b.dv_cache)]
        {
            need(k, name, x, &cache)?;
        }
        need(k, "lse", b.lse, &[t, h])?;
        need(k, "delta", b.delta, &[t, h])?;
        need(k, "pds", b.pds, &[t, h, span, 2])?;
        // The shaders index these flat in u32.
        to_u32(k, "score entries (T · H · span · 2)", t * h * span * 2)?;
        to_u32(k, "cache entries (slots · Hkv · ctx · hd)", cache.iter().product())?;
        let pb = AttnBackParams {
            t: p.t,
            n_head: p.n_head,
            n_kv_head: p.n_kv_head,
            head_dim: p.head_dim,
            ctx: p.ctx,
            span: p.span,
            slots: to_u32(k, "slots", slots)?,
            flags: dkv_write.flag(),
        };
        let a = &ATTENTION;
        self.dispatch(
            a,
            "attn_delta_backward",
            &pb,
            &[&b.dout.buffer, &b.out.buffer, &b.delta.buffer],
            grid_1d(t * h, self.gpu_ref().grid_limit),
        );
        let ds_in = [
            &b.tok.buffer,
            &b.q.buffer,
            &b.k_cache.buffer,
            &b.v_cache.buffer,
            &b.dout.buffer,
            &b.lse.buffer,
            &b.delta.buffer,
            &b.pds.buffer,
        ];
        if let Some(quads) = self.subgroup_attention_quads(p) {
            // One subgroup per (head, token), as the training forward (attention_subgroup.wgsl).
            let quads = [("QUADS", quads as f64)];
            let entry = "attn_subgroup_dscores_backward";
            self.dispatch_with(&ATTENTION_SUBGROUP, entry, &quads, &pb, &ds_in, [p.n_head, p.t, 1]);
        } else {
            self.dispatch(
                a,
                "attn_dscores_backward",
                &pb,
                &ds_in,
                grid_1d(t * h * span, self.gpu_ref().grid_limit),
            );
        }
        let dq_in = [&b.tok.buffer, &b.k_cache.buffer, &b.pds.buffer, &b.dq.buffer];
        self.dispatch(a, "attn_dq_backward", &pb, &dq_in, grid_1d(t * h * hd / 4, self.gpu_ref().grid_limit));
        let dkv_in = [
            &b.tok.buffer,
            &b.q.buffer,
            &b.dout.buffer,
            &b.pds.buffer,
            &b.dk_cache.buffer,
            &b.dv_cache.buffer,
            &b.slot_tokens.buffer,
        ];
        self.dispatch(
            a,
            "attn_dkv_backward",
            &pb,
            &dkv_in,
            grid_1d(cache.iter().product::<usize>() / 4, self.gpu_ref().grid_limit),
        );
        Ok(())
    }

    /// Adds the followers' share of a shared prompt's gradient into its leader: for one dK or dV
    /// buffer of shape `cache` (call it for every layer's dK and dV), `grad[leader, h, 0 .. len, :] +=
    /// Σ_f grad[f, h, 0 .. len, :]` over the followers f and kv heads h. Nothing else changes: the
    /// followers' own entries keep their values (they are no longer needed; a caller that reads the
    /// followers' slots afterwards must not count them twice). Run it after the last
    /// [`Batch::attention_backward`] of the layer and before [`Batch::qkv_split_backward`], whose
    /// prompt tokens live in the leader's slot only; without it the k and v LoRA gradients lose every
    /// follower's share. Errors (recording nothing) on a slot outside the cache, a follower equal to
    /// the leader or listed twice, `len` past the context, more than [`MAX_PROMPT_FOLLOWERS`]
    /// followers, or a mis-sized buffer.
    pub fn sum_shared_prompt_grad_into_leader(
        &mut self,
        grad: &Tensor,
        cache: KvCacheShape,
        prompt: SharedPrompt,
    ) -> Result<()> {
        self.shared_prompt_launch("shared_prompt_grad_backward", grad, cache, prompt)
    }

    /// The forward's side of a shared prompt in one training pass: copies the leader's entries
    /// `[leader, h, 0 .. len, ..]` of one K or V cache into every follower's slot, after
    /// [`Batch::qkv_split`] wrote the prompt's keys and values (its rows ran once, in the leader's slot)
    /// and before [`Batch::attention`] reads them for the followers' rows. Same checks as
    /// [`Batch::sum_shared_prompt_grad_into_leader`].
    pub fn copy_shared_prompt_to_followers(
        &mut self,
        cache_kv: &Tensor,
        cache: KvCacheShape,
        prompt: SharedPrompt,
    ) -> Result<()> {
        self.shared_prompt_launch("shared_prompt_copy_forward", cache_kv, cache, prompt)
    }

    /// One launch of a shared-prompt kernel (`k`, its entry point) over one (S, Hkv, ctx, hd) buffer.
    fn shared_prompt_launch(
        &mut self,
        k: &str,
        grad: &Tensor,
        cache: KvCacheShape,
        prompt: SharedPrompt,
    ) -> Result<()> {
        let KvCacheShape { slots, n_kv_head, ctx, head_dim } = cache;
        let SharedPrompt { leader, followers, len } = prompt;
        if let Some(&bad) = followers.iter().chain([&leader]).find(|&&s| s >= slots) {
            return Err(fail(k, format!("slot {bad} of a cache with {slots} slots")));
        }
        if len > ctx {
            return Err(fail(k, format!("a prompt of {len} positions in a cache of {ctx}")));
        }
        if followers.len() > MAX_PROMPT_FOLLOWERS {
            return Err(fail(
                k,
                format!(
                    "{} followers of one prompt; at most {MAX_PROMPT_FOLLOWERS} per launch (split the \
                     followers over several launches: their sums add up)",
                    followers.len()
                ),
            ));
        }
        let mut sorted: Vec<usize> = followers.iter().copied().chain([leader]).collect();
        sorted.sort_unstable();
        if let Some(dup) = sorted.windows(2).find_map(|w| (w[0] == w[1]).then_some(w[0])) {
            return Err(fail(
                k,
                format!("slot {dup} is listed twice (or is the leader {leader}) among the followers"),
            ));
        }
        need(k, "grad", grad, &[slots, n_kv_head, ctx, head_dim])?;
        to_u32(k, "cache entries (slots · Hkv · ctx · hd)", slots * n_kv_head * ctx * head_dim)?;
        let n = n_kv_head * len * head_dim;
        if followers.is_empty() || n == 0 {
            return Ok(());
        }
        let params = SharedPromptParams {
            n_kv_head: to_u32(k, "n_kv_head", n_kv_head)?,
            ctx: to_u32(k, "ctx", ctx)?,
            head_dim: to_u32(k, "head_dim", head_dim)?,
            len: to_u32(k, "len", len)?,
            leader: to_u32(k, "leader", leader)?,
            n_followers: to_u32(k, "followers", followers.len())?,
            pad: [0; 2],
        };
        let words = followers.iter().map(|&f| to_u32(k, "follower", f)).collect::<Result<Vec<u32>>>()?;
        let gpu = self.gpu_ref();
        let list = gpu.upload_u32("prompt followers", &words, &[words.len()])?;
        let grid = grid_1d(n, gpu.grid_limit);
        self.dispatch(&ATTENTION, k, &params, &[&list.buffer, &grad.buffer], grid);
        Ok(())
    }
}
