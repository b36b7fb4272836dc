//! What a training forward saves for its backward, in one struct with a layer dimension (llm.c's
//! `ActivationTensors`): every tensor the backward reads is listed here once with its shape, sized once
//! per (tokens, sequences, longest sequence), so the memory a pass needs is visible and reportable.
//!
//! With gradient checkpointing only each layer's input is kept; one layer's worth of the other tensors
//! is reused, recomputed inside the backward layer by layer.

use crate::Result;
use crate::gpu::kernels::xent_chunk_cols;
use crate::gpu::{Gpu, Tensor};
use crate::lora::Target;
use crate::model::{DecoderConfig, KvCache};

/// The sizes a set of activations is allocated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainShape {
    /// Rows of the flat batch (T).
    pub tokens: usize,
    /// Sequences, one cache slot each (S).
    pub slots: usize,
    /// Longest sequence (cache positions per slot; score rows).
    pub span: usize,
}

impl TrainShape {
    /// Whether activations of shape `self` can hold a pass of shape `other`.
    pub fn holds(&self, other: &TrainShape) -> bool {
        self.tokens >= other.tokens && self.slots >= other.slots && self.span >= other.span
    }
}

/// One layer's saved tensors. T rows, D hidden, H heads of hd, I intermediate, r LoRA rank.
pub struct LayerActivations {
    /// (T) 1/rms of the layer input (attention norm).
    pub inv_rms_attn: Tensor,
    /// (T, D) the attention norm's output: the q/k/v projections' input.
    pub h_attn: Tensor,
    /// (T, (H + 2Hkv)·hd) the fused q/k/v projection, before norms and RoPE.
    pub qkv: Tensor,
    /// (T, H, hd) queries after norm and RoPE.
    pub q: Tensor,
    /// (T, H·hd) attention output: the o projection's input.
    pub attn: Tensor,
    /// (T, H) log-sum-exp of each score row.
    pub lse: Tensor,
    /// (T, D) the residual stream after attention.
    pub x_mid: Tensor,
    /// (T) 1/rms of x_mid (MLP norm).
    pub inv_rms_mlp: Tensor,
    /// (T, D) the MLP norm's output: the gate/up projections' input.
    pub h_mlp: Tensor,
    /// (T, 2I) gate and up projections.
    pub gu: Tensor,
    /// (T, I) silu(gate) · up: the down projection's input.
    pub act: Tensor,
    /// (T, r) A x of each adapted projection, by [`Target::index`].
    pub lora_u: [Option<Tensor>; 7],
}

/// Everything one training pass keeps, plus the per-pass inputs on the GPU.
pub struct Activations {
    pub shape: TrainShape,
    /// Whether only the layer inputs are kept (gradient checkpointing).
    pub checkpointing: bool,
    /// (T) token ids.
    pub ids: Tensor,
    /// (T, 4) position, slot, key count per token.
    pub tok: Tensor,
    /// (S, 2) each slot's range of rows.
    pub slot_tokens: Tensor,
    /// (T) target ids ([`crate::gpu::kernels::XENT_IGNORE`] for none).
    pub targets: Tensor,
    /// (T) upstream gradient of each row's nll.
    pub token_grad: Tensor,
    /// (L + 1) × (T, D): the residual stream entering each layer; the last is the final layer's output.
    pub layer_inputs: Vec<Tensor>,
    /// L layers (1 with checkpointing: the layer being recomputed).
    pub layers: Vec<LayerActivations>,
    /// Keys and values of every layer, (S, Hkv, span, hd) each.
    pub cache: KvCache,
    /// (T) 1/rms of the final norm.
    pub inv_rms_final: Tensor,
    /// (D) the final norm's weights divided by the pass's temperature (used when it is not 1).
    pub final_norm_scaled: Tensor,
    /// (T, D) final-normed hidden states.
    pub normed: Tensor,
    /// (T) log-sum-exp of each row's logits.
    pub lse: Tensor,
    /// (T) −log p(target) of each row (0 for ignored rows).
    pub nll: Tensor,
    /// (T, 4) running statistics of the chunked cross-entropy.
    pub xent_stats: Tensor,
    /// (T, chunk) one vocabulary chunk's logits.
    pub xent_scratch: Tensor,
    /// (T, H, span) attention scores (scratch: probabilities are recomputed from lse).
    pub scores: Tensor,
    /// (T, D) gradient of the final-normed hidden states (written by the forward when the upstream
    /// gradient is known before it).
    pub dnormed: Tensor,
    /// The LM head's cross-entropy over only the rows that have a target.
    pub lm_rows: LmRows,
    /// The last forward's prompts laid out once (`TrainBatch::shared`): each layer's forward copies
    /// their keys and values to the followers' slots, its backward adds the gradients back.
    pub shared_prompts: Vec<crate::train::SharedPrefix>,
    /// (T, max(D, H·hd, I)) the LoRA input after dropout (only with `lora_dropout` > 0; its masks are
    /// recomputed from their seeds in the backward instead of being saved).
    pub dropped: Option<Tensor>,
    /// The last forward pass recorded into these activations (what its backward needs to know).
    pub last: Option<LastPass>,
}

/// Where only some rows have a target (GRPO's completions after their prompts, prompt-masked SFT, the
/// last token of every sequence), the LM head and its cross-entropy run over those rows alone: gathered
/// from `normed`, their nll and hidden-state gradient scattered back (zero on the other rows), so the
/// largest matmul of a step skips the rows whose logits no loss reads.
pub struct LmRows {
    /// (T) the rows with a target, in order (the first `host.len()` entries).
    pub rows: Tensor,
    /// (T, D) their final-normed hidden states.
    pub normed: Tensor,
    /// (T) their nll.
    pub nll: Tensor,
    /// (T, D) the gradient of their final-normed hidden states.
    pub dnormed: Tensor,
    /// The last forward's rows with a target when some rows had none (empty when every row had one,
    /// or none had: the cross-entropy then ran over `normed` directly).
    pub host: Vec<u32>,
}

impl LmRows {
    fn new(gpu: &Gpu, t: usize, d: usize) -> Result<LmRows> {
        Ok(LmRows {
            rows: gpu.zeros("act.lm_rows", &[t])?,
            normed: gpu.zeros("act.lm_rows.normed", &[t, d])?,
            nll: gpu.zeros("act.lm_rows.nll", &[t])?,
            dnormed: gpu.zeros("act.lm_rows.dnormed", &[t, d])?,
            host: Vec::new(),
        })
    }
}

/// The sizes of the last training forward and whether it computed the LM head's gradient already.
#[derive(Debug, Clone, Copy)]
pub struct LastPass {
    pub tokens: usize,
    pub span: usize,
    pub slots: usize,
    pub head_grad: bool,
    /// The pass stopped at the final-normed hidden states (no LM head): only
    /// `Decoder::train_backward_hidden` goes back through it.
    pub hidden_only: bool,
    /// Seed of the pass's LoRA dropout masks.
    pub dropout_seed: u64,
    /// The temperature the pass's log-probs were taken at.
    pub temperature: f32,
}

/// Scratch of the backward walk, reused by every layer.
pub struct Gradients {
    /// (T, D) gradient of the residual stream (accumulated across layers).
    pub dres: Tensor,
    /// (T, D) gradient of a norm's output.
    pub dh: Tensor,
    /// (T, I)
    pub dact: Tensor,
    /// (T, 2I)
    pub dgu: Tensor,
    /// (T, H·hd)
    pub dattn: Tensor,
    /// (T, H, hd)
    pub dq: Tensor,
    /// (S, Hkv, span, hd) each.
    pub dk: Tensor,
    pub dv: Tensor,
    /// (T, (H + 2Hkv)·hd)
    pub dqkv: Tensor,
    /// (T, H) and (T, H, span, 2): attention backward's scratch.
    pub delta: Tensor,
    pub pds: Tensor,
    /// (T, r) the LoRA backward's du.
    pub du: Tensor,
    /// (T, max(D, H·hd, I)) a LoRA input gradient before dropout's backward (with dropout only).
    pub ddropped: Option<Tensor>,
}

/// The widest input of an adapted projection: the hidden size, the attention output or the MLP's.
pub fn widest_input(c: &DecoderConfig) -> usize {
    c.hidden.max(c.n_head * c.head_dim).max(c.intermediate)
}

fn layer(
    gpu: &Gpu,
    c: &DecoderConfig,
    t: usize,
    rank: usize,
    targets: &[Target],
    l: usize,
) -> Result<LayerActivations> {
    let z = |name: &str, shape: &[usize]| gpu.zeros(&format!("act.{l}.{name}"), shape);
    let (qd, d, inter) = (c.n_head * c.head_dim, c.hidden, c.intermediate);
    let mut lora_u: [Option<Tensor>; 7] = Default::default();
    for &target in targets {
        lora_u[target.index()] = Some(z(&format!("lora_u.{}", target.peft_name()), &[t, rank])?);
    }
    Ok(LayerActivations {
        inv_rms_attn: z("inv_rms_attn", &[t])?,
        h_attn: z("h_attn", &[t, d])?,
        qkv: z("qkv", &[t, c.qkv_width()])?,
        q: z("q", &[t, c.n_head, c.head_dim])?,
        attn: z("attn", &[t, qd])?,
        lse: z("lse", &[t, c.n_head])?,
        x_mid: z("x_mid", &[t, d])?,
        inv_rms_mlp: z("inv_rms_mlp", &[t])?,
        h_mlp: z("h_mlp", &[t, d])?,
        gu: z("gu", &[t, 2 * inter])?,
        act: z("act", &[t, inter])?,
        lora_u,
    })
}

impl Activations {
    /// Allocates the activations of `shape` for a model `c` with an adapter of `rank` on `targets`
    /// (`cache` from the decoder, S slots × span positions).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        c: &DecoderConfig,
        cache: KvCache,
        shape: TrainShape,
        rank: usize,
        targets: &[Target],
        checkpointing: bool,
        dropout: bool,
    ) -> Result<Activations> {
        let TrainShape { tokens: t, slots, span } = shape;
        let d = c.hidden;
        let z = |name: &str, shape: &[usize]| gpu.zeros(name, shape);
        let saved_layers = if checkpointing { 1 } else { c.layers };
        Ok(Activations {
            shape,
            checkpointing,
            ids: z("train.ids", &[t])?,
            tok: z("train.tok", &[t, 4])?,
            slot_tokens: z("train.slot_tokens", &[slots, 2])?,
            targets: z("train.targets", &[t])?,
            token_grad: z("train.token_grad", &[t])?,
            layer_inputs: (0..=c.layers)
                .map(|l| z(&format!("act.{l}.x_in"), &[t, d]))
                .collect::<Result<_>>()?,
            layers: (0..saved_layers).map(|l| layer(gpu, c, t, rank, targets, l)).collect::<Result<_>>()?,
            cache,
            inv_rms_final: z("act.inv_rms_final", &[t])?,
            final_norm_scaled: z("act.final_norm_scaled", &[d])?,
            normed: z("act.normed", &[t, d])?,
            lse: z("act.lse", &[t])?,
            nll: z("act.nll", &[t])?,
            xent_stats: z("act.xent_stats", &[t, 4])?,
            xent_scratch: z("act.xent_scratch", &[t, xent_chunk_cols(c.vocab)])?,
            scores: z("act.scores", &[t, c.n_head, span])?,
            dnormed: z("act.dnormed", &[t, d])?,
            lm_rows: LmRows::new(gpu, t, d)?,
            shared_prompts: Vec::new(),
            dropped: match dropout {
                true => Some(z("act.lora_dropped", &[t, widest_input(c)])?),
                false => None,
            },
            last: None,
        })
    }

    /// Bytes of GPU memory these activations hold (the KV cache included).
    pub fn bytes(&self) -> u64 {
        let mut all: Vec<&Tensor> = vec![
            &self.ids,
            &self.tok,
            &self.slot_tokens,
            &self.targets,
            &self.token_grad,
            &self.inv_rms_final,
            &self.final_norm_scaled,
            &self.normed,
            &self.lse,
            &self.nll,
            &self.xent_stats,
            &self.xent_scratch,
            &self.scores,
            &self.dnormed,
            &self.lm_rows.rows,
            &self.lm_rows.normed,
            &self.lm_rows.nll,
            &self.lm_rows.dnormed,
        ];
        all.extend(&self.layer_inputs);
        all.extend(&self.dropped);
        for l in &self.layers {
            all.extend([
                &l.inv_rms_attn,
                &l.h_attn,
                &l.qkv,
                &l.q,
                &l.attn,
                &l.lse,
                &l.x_mid,
                &l.inv_rms_mlp,
                &l.h_mlp,
                &l.gu,
                &l.act,
            ]);
            all.extend(l.lora_u.iter().flatten());
        }
        all.iter().map(|t| t.buffer.size()).sum::<u64>() + self.cache.bytes()
    }
}

impl Gradients {
    /// Backward scratch for passes of `shape` on model `c` with an adapter of `rank`.
    pub fn new(
        gpu: &Gpu,
        c: &DecoderConfig,
        shape: TrainShape,
        rank: usize,
        dropout: bool,
    ) -> Result<Gradients> {
        let TrainShape { tokens: t, slots, span } = shape;
        let z = |name: &str, shape: &[usize]| gpu.zeros(name, shape);
        let kv = [slots, c.n_kv_head, span, c.head_dim];
        Ok(Gradients {
            dres: z("grad.dres", &[t, c.hidden])?,
            dh: z("grad.dh", &[t, c.hidden])?,
            dact: z("grad.dact", &[t, c.intermediate])?,
            dgu: z("grad.dgu", &[t, 2 * c.intermediate])?,
            dattn: z("grad.dattn", &[t, c.n_head * c.head_dim])?,
            dq: z("grad.dq", &[t, c.n_head, c.head_dim])?,
            dk: z("grad.dk", &kv)?,
            dv: z("grad.dv", &kv)?,
            dqkv: z("grad.dqkv", &[t, c.qkv_width()])?,
            delta: z("grad.delta", &[t, c.n_head])?,
            pds: z("grad.pds", &[t, c.n_head, span, 2])?,
            du: z("grad.du", &[t, rank])?,
            ddropped: match dropout {
                true => Some(z("grad.lora_ddropped", &[t, widest_input(c)])?),
                false => None,
            },
        })
    }

    /// Bytes of GPU memory the scratch holds.
    pub fn bytes(&self) -> u64 {
        [
            &self.dres,
            &self.dh,
            &self.dact,
            &self.dgu,
            &self.dattn,
            &self.dq,
            &self.dk,
            &self.dv,
            &self.dqkv,
            &self.delta,
            &self.pds,
            &self.du,
        ]
        .into_iter()
        .chain(&self.ddropped)
        .map(|t| t.buffer.size())
        .sum()
    }
}
