//! The decoder's training forward and backward for a flat batch of sequences with a LoRA adapter: the
//! forward saves what the backward reads ([`Activations`]); the backward walks the layers in reverse,
//! adding each adapted projection's dA and dB into [`LoraGrads`]. The frozen weights get no gradient.
//!
//! Per layer (x the residual stream, h a norm's output; LoRA terms added inside each projection):
//! `h = norm(x); qkv = h·Wqkvᵀ; q, k, v = split(qkv) (+ q/k norms, RoPE); a = attention(q, k, v);
//!  x' = x + a·Woᵀ; h' = norm(x'); gu = h'·Wguᵀ; m = silu(g)·u; x'' = x' + m·Wdownᵀ`.
//! Then `z = norm(x_L)` and the LM head with a chunked cross-entropy per row.

use crate::gpu::cpu_ref::TokenInfo;
use crate::gpu::kernels::{AttnBackward, AttnParams, GradWrite, KvCacheShape, SharedPrompt, dropout_seed};
use crate::gpu::kernels_lora::{LoraGradBuffers, LoraShape, OutputSlice};
use crate::gpu::{Batch, Tensor};
use crate::lora::{Adapter, Target};
use crate::model::{Decoder, KvCache};
use crate::train::activations::{Activations, Gradients, LastPass, LayerActivations, TrainShape};
use crate::train::batch::TrainBatch;
use crate::train::lora_grads::LoraGrads;
use crate::{Error, Result};

use super::Layer;

/// What a training forward ends with.
#[derive(Debug, Clone, Copy)]
pub(super) enum Head<'a> {
    /// The LM head's cross-entropy, with each row's upstream gradient when known before the forward.
    Lm(Option<&'a [f32]>),
    /// Nothing: the pass stops at the final-normed hidden states (a scalar head's input).
    None,
}

impl KvCache {
    /// Bytes of GPU memory the cache holds.
    pub fn bytes(&self) -> u64 {
        self.k.iter().chain(&self.v).map(|t| t.buffer.size()).sum()
    }
}

impl Decoder {
    /// Bytes of GPU memory the frozen model holds (16-bit or packed weights, f32 norms and biases, RoPE table).
    pub fn weight_bytes(&self) -> u64 {
        let blocked =
            |w: &crate::gpu::BlockedWeight16| w.blocks.iter().map(|(_, b)| b.buffer.size()).sum::<u64>();
        let mut n = blocked(&self.embed) + self.lm_head.as_ref().map_or(0, blocked);
        n += self.final_norm.buffer.size() + self.rope.buffer.size();
        for l in &self.layers {
            n += [&l.qkv, &l.o, &l.gate_up, &l.down]
                .iter()
                .map(|w| w.buffer.size() + w.packed.as_ref().map_or(0, |p| p.scales.size()))
                .sum::<u64>();
            n += [&l.attn_norm, &l.mlp_norm].iter().map(|t| t.buffer.size()).sum::<u64>();
            n += l.qkv_bias.as_ref().map_or(0, |t| t.buffer.size())
                + l.qk_norm.as_ref().map_or(0, |t| t.buffer.size());
        }
        n
    }

    /// Activations for training passes of up to `shape` with `adapter` (its rank and targets);
    /// `checkpointing` keeps only each layer's input and recomputes the rest inside the backward.
    pub fn train_activations(
        &self,
        shape: TrainShape,
        adapter: &Adapter,
        checkpointing: bool,
    ) -> Result<Activations> {
        adapter.check_fits(&self.gpu, &self.cfg)?;
        let cache = self.new_cache(shape.slots, shape.span)?;
        let cfg = adapter.config();
        let dropout = cfg.dropout > 0.0;
        Activations::new(&self.gpu, &self.cfg, cache, shape, cfg.r, &cfg.targets, checkpointing, dropout)
    }

    /// Makes `buffers` hold a pass of `shape`: kept when they already do, else reallocated grown to the
    /// largest of every size seen (so a run's passes of varying shapes settle on one allocation).
    /// Returns the activations and the backward scratch.
    pub fn grow_train_buffers<'b>(
        &self,
        buffers: &'b mut Option<(Activations, Gradients)>,
        shape: TrainShape,
        adapter: &Adapter,
        checkpointing: bool,
    ) -> Result<(&'b mut Activations, &'b mut Gradients)> {
        if !buffers.as_ref().is_some_and(|(a, _)| a.shape.holds(&shape) && a.checkpointing == checkpointing) {
            let old = buffers.take().map_or(shape, |(a, _)| a.shape);
            let grown = TrainShape {
                tokens: shape.tokens.max(old.tokens),
                slots: shape.slots.max(old.slots),
                span: shape.span.max(old.span),
            };
            let acts = self.train_activations(grown, adapter, checkpointing)?;
            let scratch = self.train_gradients(grown, adapter)?;
            *buffers = Some((acts, scratch));
        }
        let (acts, scratch) = buffers.as_mut().expect("allocated above");
        Ok((acts, scratch))
    }

    /// Backward scratch for passes of up to `shape`.
    pub fn train_gradients(&self, shape: TrainShape, adapter: &Adapter) -> Result<Gradients> {
        Gradients::new(&self.gpu, &self.cfg, shape, adapter.config().r, adapter.config().dropout > 0.0)
    }

    /// The training forward of `batch` with `adapter` on: fills `acts` (their shape must hold the
    /// batch's) and each row's log-sum-exp and nll (`acts.nll`, the cross-entropy of the row's target).
    /// With `token_grad` (T) given — the upstream gradient of each row's nll, known before the forward
    /// for a mean cross-entropy — the LM head's gradient is computed in the same walk over the
    /// vocabulary and [`Decoder::train_backward`] is then called with `None`.
    pub fn train_forward(
        &self,
        acts: &mut Activations,
        batch: &TrainBatch,
        adapter: &Adapter,
        token_grad: Option<&[f32]>,
    ) -> Result<()> {
        self.forward_walk(acts, batch, Some(adapter), Head::Lm(token_grad))
    }

    /// The same walk with the adapter switched off: the reference policy's (the base model's) nll of
    /// every row at the batch's temperature in `acts.nll` (GRPO's reference log-probs when `beta ≠ 0`).
    /// It overwrites the activations and leaves nothing to go back through: run it before the policy's
    /// [`Decoder::train_forward`].
    pub fn reference_forward(&self, acts: &mut Activations, batch: &TrainBatch) -> Result<()> {
        self.forward_walk(acts, batch, None, Head::Lm(None))?;
        acts.last = None;
        Ok(())
    }

    pub(super) fn forward_walk(
        &self,
        acts: &mut Activations,
        batch: &TrainBatch,
        adapter: Option<&Adapter>,
        head: Head<'_>,
    ) -> Result<()> {
        // A forward that fails part-way leaves nothing a backward could mistake for its pass.
        acts.last = None;
        let token_grad = match head {
            Head::Lm(g) => g,
            Head::None => None,
        };
        if self.headless && matches!(head, Head::Lm(_)) {
            return Err(Error::Input(
                "this decoder was loaded without its LM head (a reward model's body): it cannot be \
                 trained on next-token log-probs"
                    .into(),
            ));
        }
        if let Some(adapter) = adapter {
            adapter.check_fits(&self.gpu, &self.cfg)?;
        }
        let t = batch.len();
        let shape = TrainShape { tokens: t, slots: batch.slots, span: batch.span };
        if !acts.shape.holds(&shape) {
            return Err(Error::Input(format!(
                "training forward: a batch of {shape:?} does not fit activations allocated for {:?}",
                acts.shape
            )));
        }
        if batch.tokens.len() != batch.info.len() || batch.targets.len() != t {
            return Err(Error::Input(
                "training forward: tokens, positions and targets differ in length".into(),
            ));
        }
        self.check_step(&acts.cache, &batch.tokens, &batch.info, &[])?;
        if let Some(g) = token_grad
            && g.len() != t
        {
            return Err(Error::Input(format!("training forward: {} token gradients for {t} rows", g.len())));
        }
        self.check_shared_prompts(batch)?;
        acts.shared_prompts = batch.shared.clone();
        let g = &self.gpu;
        g.write_u32(&acts.ids, &batch.tokens);
        g.write_u32(&acts.tok, &TokenInfo::words(&batch.info));
        g.write_u32(&acts.slot_tokens, &TokenInfo::slot_ranges(&batch.info, acts.cache.slots));
        // The LM head runs over the rows with a target only (`LmRows`), when some have none: their
        // targets and upstream gradients go compacted into `targets` and `token_grad`.
        let vocab = self.cfg.vocab as u32;
        let with_target: Vec<u32> = (0..t as u32).filter(|&r| batch.targets[r as usize] < vocab).collect();
        let some = !with_target.is_empty() && with_target.len() < t;
        acts.lm_rows.host = if some { with_target } else { Vec::new() };
        let rows = &acts.lm_rows.host;
        if rows.is_empty() {
            g.write_u32(&acts.targets, &batch.targets);
        } else {
            g.write_u32(&acts.lm_rows.rows, rows);
            g.write_u32(&acts.targets, &gather(&batch.targets, rows));
        }
        if let Some(grad) = token_grad {
            match rows.is_empty() {
                true => g.write_f32(&acts.token_grad, grad),
                false => g.write_f32(&acts.token_grad, &gather(grad, rows)),
            }
        }
        let temperature = batch.temperature;
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(Error::Input(format!("training forward: temperature {temperature} (must be > 0)")));
        }
        if temperature != 1.0 {
            // logits / T = (normed · Wᵀ) / T: the final norm's weights divided by T.
            let scaled: Vec<f32> = self.final_norm_host.iter().map(|w| w / temperature).collect();
            g.write_f32(&acts.final_norm_scaled, &scaled);
        }
        let p = self.attn_params(t, &acts.cache, batch.span);
        let c = &self.cfg;
        let mut b = g.batch();
        b.embed_rows_blocked(&acts.ids, &self.embed, &acts.layer_inputs[0], t)?;
        for l in 0..self.layers.len() {
            let saved = if acts.checkpointing { 0 } else { l };
            self.layer_forward(&mut b, &p, acts, saved, l, adapter, batch.dropout_seed)?;
        }
        let x_last = &acts.layer_inputs[self.layers.len()];
        let final_norm = self.final_norm_at(acts, temperature);
        b.rms_norm_train(x_last, final_norm, &acts.normed, &acts.inv_rms_final, t, c.rms_eps)?;
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let a = &*acts;
        let lm = LmPass::of(a, t, c.hidden);
        if matches!(head, Head::None) {
            // Stopped at the final-normed hidden states: another head reads `acts.normed`.
        } else {
            lm.gather(&mut b, a)?;
            if token_grad.is_some() {
                b.lm_head_cross_entropy_with_grad(
                    lm.normed,
                    lm_head,
                    &a.targets,
                    &a.token_grad,
                    &a.xent_scratch,
                    &a.xent_stats,
                    &a.lse,
                    lm.nll,
                    lm.dnormed,
                    lm.rows,
                )?;
                lm.scatter(&mut b, a, true, true)?;
            } else {
                b.lm_head_cross_entropy(
                    lm.normed,
                    lm_head,
                    &a.targets,
                    &a.xent_scratch,
                    &a.xent_stats,
                    &a.lse,
                    lm.nll,
                    lm.rows,
                )?;
                lm.scatter(&mut b, a, true, false)?;
            }
        }
        b.submit()?;
        acts.last = Some(LastPass {
            tokens: t,
            span: batch.span,
            slots: batch.slots,
            head_grad: token_grad.is_some(),
            hidden_only: matches!(head, Head::None),
            dropout_seed: batch.dropout_seed,
            temperature,
        });
        Ok(())
    }

    /// The backward of the last [`Decoder::train_forward`] on `acts`: adds every LoRA gradient into
    /// `grads` (zero them first for a new accumulation). `token_grad` (T) is the upstream gradient of
    /// each row's nll, required unless the forward was given it.
    pub fn train_backward(
        &self,
        acts: &Activations,
        scratch: &Gradients,
        adapter: &Adapter,
        grads: &LoraGrads,
        token_grad: Option<&[f32]>,
    ) -> Result<()> {
        let Some(last) = acts.last else {
            return Err(Error::Input("training backward: no forward pass to go back through".into()));
        };
        if last.hidden_only {
            return Err(Error::Input(
                "training backward: the forward stopped at the hidden states (a scalar head's pass); go \
                 back through it with train_backward_hidden"
                    .into(),
            ));
        }
        let t = last.tokens;
        let g = &self.gpu;
        let p = self.attn_params(t, &acts.cache, last.span);
        let mut b = g.batch();
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        match (token_grad, last.head_grad) {
            (Some(grad), false) => {
                if grad.len() != t {
                    return Err(Error::Input(format!(
                        "training backward: {} token gradients for {t} rows",
                        grad.len()
                    )));
                }
                let lm = LmPass::of(acts, t, self.cfg.hidden);
                match acts.lm_rows.host.is_empty() {
                    true => g.write_f32(&acts.token_grad, grad),
                    false => g.write_f32(&acts.token_grad, &gather(grad, &acts.lm_rows.host)),
                }
                b.lm_head_cross_entropy_backward(
                    lm.normed,
                    head,
                    &acts.targets,
                    &acts.lse,
                    &acts.token_grad,
                    &acts.xent_scratch,
                    lm.dnormed,
                    lm.rows,
                    GradWrite::Overwrite,
                )?;
                // The forward scattered the nll already.
                lm.scatter(&mut b, acts, false, true)?;
            }
            (None, true) => {}
            (Some(_), true) => {
                return Err(Error::Input(
                    "training backward: the forward already took the token gradients; pass None".into(),
                ));
            }
            (None, false) => {
                return Err(Error::Input(
                    "training backward: token gradients are needed (the forward was run without them)".into(),
                ));
            }
        }
        self.body_backward(&mut b, &p, acts, scratch, adapter, grads, last)?;
        b.submit()
    }

    /// Records the backward from `acts.dnormed` (the gradient of the final-normed hidden states) down
    /// through the final norm and every layer, adding the LoRA gradients into `grads`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn body_backward(
        &self,
        b: &mut Batch<'_>,
        p: &AttnParams,
        acts: &Activations,
        scratch: &Gradients,
        adapter: &Adapter,
        grads: &LoraGrads,
        last: LastPass,
    ) -> Result<()> {
        let x_last = &acts.layer_inputs[self.layers.len()];
        b.rms_norm_backward(
            x_last,
            self.final_norm_at(acts, last.temperature),
            &acts.dnormed,
            &acts.inv_rms_final,
            &scratch.dres,
            last.tokens,
            GradWrite::Overwrite,
        )?;
        for l in (0..self.layers.len()).rev() {
            let saved = if acts.checkpointing {
                self.layer_forward(b, p, acts, 0, l, Some(adapter), last.dropout_seed)?;
                0
            } else {
                l
            };
            self.layer_backward(b, p, acts, saved, l, scratch, adapter, grads, last)?;
        }
        Ok(())
    }

    /// The caches' shape, as the shared-prompt launches take it.
    fn kv_shape(&self, cache: &KvCache) -> KvCacheShape {
        let c = &self.cfg;
        KvCacheShape { slots: cache.slots, n_kv_head: c.n_kv_head, ctx: cache.ctx, head_dim: c.head_dim }
    }

    /// A batch's shared prompts name slots of the batch, and each follower's rows start right after the
    /// prompt positions it takes from its leader (errors name the prefix).
    fn check_shared_prompts(&self, batch: &TrainBatch) -> Result<()> {
        for (i, prefix) in batch.shared.iter().enumerate() {
            let bad = |what: String| Err(Error::Input(format!("training batch: shared prompt {i}: {what}")));
            for &f in &prefix.followers {
                let Some(&first) = batch.starts.get(f).and_then(|&s| batch.info.get(s)) else {
                    return bad(format!("follower {f} is not a sequence of the batch"));
                };
                if first.slot as usize != f || first.pos as usize != prefix.len {
                    return bad(format!(
                        "follower {f}'s first row is position {} of slot {}; it must be position {} of slot {f}",
                        first.pos, first.slot, prefix.len
                    ));
                }
            }
            // The leader's own rows hold every shared position: 0 .. len of its slot, in order.
            let leader = prefix.leader;
            let rows = match (batch.starts.get(leader), batch.starts.get(leader + 1)) {
                (Some(&a), Some(&b)) => &batch.info[a..b],
                _ => return bad(format!("leader {leader} is not a sequence of the batch")),
            };
            let holds = rows.len() >= prefix.len
                && rows[..prefix.len]
                    .iter()
                    .enumerate()
                    .all(|(p, i)| i.pos as usize == p && i.slot as usize == leader);
            if !holds {
                return bad(format!(
                    "leader {leader}'s rows do not hold positions 0..{} of its slot",
                    prefix.len
                ));
            }
        }
        Ok(())
    }

    /// The final norm's weights of a pass at `temperature` (divided by it unless it is 1).
    fn final_norm_at<'a>(&'a self, acts: &'a Activations, temperature: f32) -> &'a Tensor {
        if temperature == 1.0 { &self.final_norm } else { &acts.final_norm_scaled }
    }

    /// Layer `l`'s training forward from `acts.layer_inputs[l]` into `acts.layer_inputs[l + 1]`, saving
    /// into `acts.layers[saved]`.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        b: &mut Batch<'_>,
        p: &AttnParams,
        acts: &Activations,
        saved: usize,
        l: usize,
        adapter: Option<&Adapter>,
        dropout_seed_of_pass: u64,
    ) -> Result<()> {
        let c = &self.cfg;
        let t = p.t as usize;
        let layer: &Layer = &self.layers[l];
        let s: &LayerActivations = &acts.layers[saved];
        let (x_in, x_out) = (&acts.layer_inputs[l], &acts.layer_inputs[l + 1]);
        let (qd, kvd, inter) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.intermediate);
        let drop_p = adapter.map_or(0.0, |a| a.config().dropout as f32);
        let lora = |b: &mut Batch<'_>, target: Target, x: &Tensor, y: &Tensor, ldy: usize, n_off: usize| {
            let (Some(adapter), Some(u)) = (adapter, &s.lora_u[target.index()]) else { return Ok(()) };
            let x = match &acts.dropped {
                Some(dropped) => {
                    let seed = dropout_seed(dropout_seed_of_pass, 0, 0, l, target.index());
                    b.dropout_forward(x, dropped, t * target.shape(c).1, drop_p, seed)?;
                    dropped
                }
                None => x,
            };
            adapter.record_forward(b, l, target, x, u, y, t, OutputSlice { ldy, n_off })
        };
        b.rms_norm_train(x_in, &layer.attn_norm, &s.h_attn, &s.inv_rms_attn, t, c.rms_eps)?;
        b.matmul(&s.h_attn, &layer.qkv, layer.qkv_bias.as_ref(), None, &s.qkv, t)?;
        let qkv_w = c.qkv_width();
        lora(b, Target::Q, &s.h_attn, &s.qkv, qkv_w, 0)?;
        lora(b, Target::K, &s.h_attn, &s.qkv, qkv_w, qd)?;
        lora(b, Target::V, &s.h_attn, &s.qkv, qkv_w, qd + kvd)?;
        let (k_cache, v_cache) = (&acts.cache.k[l], &acts.cache.v[l]);
        b.qkv_split(p, &acts.tok, &s.qkv, &self.rope, layer.qk_norm.as_ref(), &s.q, k_cache, v_cache)?;
        for prefix in &acts.shared_prompts {
            let prompt =
                SharedPrompt { leader: prefix.leader, followers: &prefix.followers, len: prefix.len };
            b.copy_shared_prompt_to_followers(k_cache, self.kv_shape(&acts.cache), prompt)?;
            b.copy_shared_prompt_to_followers(v_cache, self.kv_shape(&acts.cache), prompt)?;
        }
        b.attention_train(p, &acts.tok, &s.q, k_cache, v_cache, &acts.scores, &s.attn, &s.lse)?;
        b.matmul(&s.attn, &layer.o, None, Some(x_in), &s.x_mid, t)?;
        lora(b, Target::O, &s.attn, &s.x_mid, c.hidden, 0)?;
        b.rms_norm_train(&s.x_mid, &layer.mlp_norm, &s.h_mlp, &s.inv_rms_mlp, t, c.rms_eps)?;
        b.matmul(&s.h_mlp, &layer.gate_up, None, None, &s.gu, t)?;
        lora(b, Target::Gate, &s.h_mlp, &s.gu, 2 * inter, 0)?;
        lora(b, Target::Up, &s.h_mlp, &s.gu, 2 * inter, inter)?;
        b.swiglu(&s.gu, &s.act, t, inter)?;
        b.matmul(&s.act, &layer.down, None, Some(&s.x_mid), x_out, t)?;
        lora(b, Target::Down, &s.act, x_out, c.hidden, 0)?;
        Ok(())
    }

    /// Layer `l`'s backward: `scratch.dres` holds the gradient of the layer's output and is left holding
    /// that of its input (not computed for layer 0, whose input is the frozen embedding's).
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        b: &mut Batch<'_>,
        p: &AttnParams,
        acts: &Activations,
        saved: usize,
        l: usize,
        g: &Gradients,
        adapter: &Adapter,
        grads: &LoraGrads,
        last: LastPass,
    ) -> Result<()> {
        let c = &self.cfg;
        let slots = last.slots;
        let drop_p = adapter.config().dropout as f32;
        let t = p.t as usize;
        let layer = &self.layers[l];
        let s = &acts.layers[saved];
        let (qd, kvd, inter, d) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.intermediate, c.hidden);
        let scale = adapter.config().scale();
        let r = adapter.config().r;
        // The adapter's backward of `target`: dy's columns n_off.. (row stride ldy), the input x; adds
        // dA, dB and (when given) dx.
        let lora = |b: &mut Batch<'_>,
                    target: Target,
                    dy: &Tensor,
                    x: &Tensor,
                    dx: Option<&Tensor>,
                    ldy: usize,
                    n_off: usize| {
            let (Some(pair), Some(u), Some(pg)) =
                (adapter.pair(l, target), &s.lora_u[target.index()], grads.pair(l, target))
            else {
                return Ok(());
            };
            let (n, k) = target.shape(c);
            let shape = LoraShape { t, k, r, n };
            let slice = OutputSlice { ldy, n_off };
            let (Some(dropped), Some(ddropped)) = (&acts.dropped, &g.ddropped) else {
                let bufs = LoraGradBuffers { du: &g.du, da: &pg.da, db: &pg.db, dx };
                return b.lora_backward(dy, x, &pair.a, &pair.b, u, scale, bufs, shape, slice);
            };
            // Dropout: the forward's mask is recomputed from its seed; the adapter's input gradient
            // goes through the mask on its way into dx.
            let seed = dropout_seed(last.dropout_seed, 0, 0, l, target.index());
            b.dropout_forward(x, dropped, t * k, drop_p, seed)?;
            if dx.is_some() {
                b.clear(&ddropped.buffer);
            }
            let bufs = LoraGradBuffers { du: &g.du, da: &pg.da, db: &pg.db, dx: dx.map(|_| ddropped) };
            b.lora_backward(dy, dropped, &pair.a, &pair.b, u, scale, bufs, shape, slice)?;
            match dx {
                Some(dx) => b.dropout_backward(ddropped, dx, t * k, drop_p, seed),
                None => Ok(()),
            }
        };
        // MLP: x'' = x' + m·Wdownᵀ, m = silu(g)·u, gu = h'·Wguᵀ, h' = norm(x').
        b.matmul_backward_dx(&g.dres, &layer.down, &g.dact, t, d, 0, GradWrite::Overwrite)?;
        lora(b, Target::Down, &g.dres, &s.act, Some(&g.dact), d, 0)?;
        b.swiglu_backward(&s.gu, &g.dact, &g.dgu, t, inter)?;
        b.matmul_backward_dx(&g.dgu, &layer.gate_up, &g.dh, t, 2 * inter, 0, GradWrite::Overwrite)?;
        lora(b, Target::Gate, &g.dgu, &s.h_mlp, Some(&g.dh), 2 * inter, 0)?;
        lora(b, Target::Up, &g.dgu, &s.h_mlp, Some(&g.dh), 2 * inter, inter)?;
        b.rms_norm_backward(
            &s.x_mid,
            &layer.mlp_norm,
            &g.dh,
            &s.inv_rms_mlp,
            &g.dres,
            t,
            GradWrite::Accumulate,
        )?;
        // Attention: x' = x + a·Woᵀ.
        b.matmul_backward_dx(&g.dres, &layer.o, &g.dattn, t, d, 0, GradWrite::Overwrite)?;
        lora(b, Target::O, &g.dres, &s.attn, Some(&g.dattn), d, 0)?;
        let back = AttnBackward {
            tok: &acts.tok,
            slot_tokens: &acts.slot_tokens,
            q: &s.q,
            k_cache: &acts.cache.k[l],
            v_cache: &acts.cache.v[l],
            out: &s.attn,
            dout: &g.dattn,
            lse: &s.lse,
            delta: &g.delta,
            pds: &g.pds,
            dq: &g.dq,
            dk_cache: &g.dk,
            dv_cache: &g.dv,
        };
        b.attention_backward(p, slots, &back, GradWrite::Overwrite)?;
        // A shared prompt's rows live in the leader's slot: the followers' key and value gradients of
        // its positions go there before the q/k/v split's backward reads them.
        for prefix in &acts.shared_prompts {
            let prompt =
                SharedPrompt { leader: prefix.leader, followers: &prefix.followers, len: prefix.len };
            b.sum_shared_prompt_grad_into_leader(&g.dk, self.kv_shape(&acts.cache), prompt)?;
            b.sum_shared_prompt_grad_into_leader(&g.dv, self.kv_shape(&acts.cache), prompt)?;
        }
        b.qkv_split_backward(
            p,
            &acts.tok,
            &s.qkv,
            &self.rope,
            layer.qk_norm.as_ref(),
            &g.dq,
            &g.dk,
            &g.dv,
            &g.dqkv,
        )?;
        // The first layer's input is the frozen embedding's output: no input gradient needed.
        let dh = (l > 0).then_some(&g.dh);
        if let Some(dh) = dh {
            b.matmul_backward_dx(&g.dqkv, &layer.qkv, dh, t, c.qkv_width(), 0, GradWrite::Overwrite)?;
        }
        let qkv_w = c.qkv_width();
        lora(b, Target::Q, &g.dqkv, &s.h_attn, dh, qkv_w, 0)?;
        lora(b, Target::K, &g.dqkv, &s.h_attn, dh, qkv_w, qd)?;
        lora(b, Target::V, &g.dqkv, &s.h_attn, dh, qkv_w, qd + kvd)?;
        if let Some(dh) = dh {
            b.rms_norm_backward(
                &acts.layer_inputs[l],
                &layer.attn_norm,
                dh,
                &s.inv_rms_attn,
                &g.dres,
                t,
                GradWrite::Accumulate,
            )?;
        }
        Ok(())
    }
}

/// `values` at `rows`, in order.
fn gather<V: Copy>(values: &[V], rows: &[u32]) -> Vec<V> {
    rows.iter().map(|&r| values[r as usize]).collect()
}

/// The buffers the LM head's cross-entropy of one pass reads and writes: `normed`, `nll` and `dnormed`
/// over all T rows, or their [`crate::train::LmRows`] copies over the rows with a target.
struct LmPass<'a> {
    normed: &'a Tensor,
    nll: &'a Tensor,
    dnormed: &'a Tensor,
    /// Rows the cross-entropy runs over.
    rows: usize,
    /// All T rows of the pass.
    tokens: usize,
    hidden: usize,
    compact: bool,
}

impl<'a> LmPass<'a> {
    fn of(acts: &'a Activations, tokens: usize, hidden: usize) -> LmPass<'a> {
        let lm = &acts.lm_rows;
        match lm.host.is_empty() {
            true => LmPass {
                normed: &acts.normed,
                nll: &acts.nll,
                dnormed: &acts.dnormed,
                rows: tokens,
                tokens,
                hidden,
                compact: false,
            },
            false => LmPass {
                normed: &lm.normed,
                nll: &lm.nll,
                dnormed: &lm.dnormed,
                rows: lm.host.len(),
                tokens,
                hidden,
                compact: true,
            },
        }
    }

    /// Records the gather of the rows with a target from `acts.normed` (nothing when all have one).
    fn gather(&self, b: &mut Batch<'_>, acts: &Activations) -> Result<()> {
        match self.compact {
            true => b.gather_rows(
                &acts.normed,
                &acts.lm_rows.rows,
                self.normed,
                self.rows,
                self.tokens,
                self.hidden,
            ),
            false => Ok(()),
        }
    }

    /// Records the scatter of the rows' nll (with `nll`) and hidden-state gradient (with `grad`) into
    /// `acts.nll` / `acts.dnormed`, zero on the rows without a target (nothing when all have one).
    fn scatter(&self, b: &mut Batch<'_>, acts: &Activations, nll: bool, grad: bool) -> Result<()> {
        if !self.compact {
            return Ok(());
        }
        let (map, t, n) = (&acts.lm_rows.rows, self.tokens, self.rows);
        if nll {
            b.clear(&acts.nll.buffer);
            b.scatter_rows(self.nll, map, &acts.nll, n, t, 1)?;
        }
        if grad {
            b.clear(&acts.dnormed.buffer);
            b.scatter_rows(self.dnormed, map, &acts.dnormed, n, t, self.hidden)?;
        }
        Ok(())
    }
}
