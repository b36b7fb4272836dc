//! The decoder (Llama / SmolLM2, Qwen2, Qwen3) on the GPU: grouped-query attention over a KV cache,
//! RoPE, RMSNorm and SwiGLU, for a flat batch of tokens from any number of sequences.

use std::sync::{Arc, Mutex};

use crate::gpu::cpu_ref::{TokenInfo, rope_table};
use crate::gpu::kernels::{ATTN_QK_NORM, ATTN_ROPE, AttnParams};
use crate::gpu::kernels_lora::OutputSlice;
use crate::gpu::{BlockedWeight16, Gpu, PackedHost, Tensor, Weight16};
use crate::lora::{Adapter, Target};
use crate::model::config::DecoderConfig;
use crate::model::loader::LoadOptions;
use crate::model::weights::{WeightSource, concat_rows};
use crate::{Error, Result};

mod train;
mod train_hidden;

/// Longest context the kernels support: their per-invocation loops over keys must stay under 16384
/// iterations, where lavapipe silently stops loops.
pub const MAX_CONTEXT: usize = 16384;

/// Most tokens in one forward pass (grid dimensions hold at most 65535 workgroups).
pub const MAX_STEP_TOKENS: usize = 65535;

/// Frozen weights of one transformer block, with q/k/v and gate/up fused into single matrices.
struct Layer {
    attn_norm: Tensor,
    qkv: Weight16,
    qkv_bias: Option<Tensor>,
    qk_norm: Option<Tensor>,
    o: Weight16,
    mlp_norm: Tensor,
    gate_up: Weight16,
    down: Weight16,
}

/// Keys and values of every layer for `slots` sequences of up to `ctx` positions.
pub struct KvCache {
    pub slots: usize,
    pub ctx: usize,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

/// Scratch buffers of one forward pass, reused while large enough.
struct Workspace {
    tokens: usize,
    span: usize,
    ids: Tensor,
    tok: Tensor,
    x: Tensor,
    x2: Tensor,
    h: Tensor,
    qkv: Tensor,
    q: Tensor,
    attn: Tensor,
    gu: Tensor,
    act: Tensor,
    scores: Tensor,
    /// Output rows: capacity, row map and final hidden states (the logits are each pass's own).
    rows_cap: usize,
    rows: Tensor,
    normed: Tensor,
    /// A x of the adapter's current projection (T, r), when a pass runs with an adapter.
    lora_u: Option<Tensor>,
}

/// A decoder-only language model resident on the GPU.
pub struct Decoder {
    gpu: Arc<Gpu>,
    cfg: DecoderConfig,
    embed: BlockedWeight16,
    lm_head: Option<BlockedWeight16>,
    final_norm: Tensor,
    /// The final norm's weights on the host (a training pass at a sampling temperature scales them).
    final_norm_host: Vec<f32>,
    layers: Vec<Layer>,
    rope: Tensor,
    rope_positions: usize,
    workspace: Mutex<Option<Workspace>>,
    /// Loaded without an LM head ([`Decoder::load_headless`]): only hidden states can be asked for.
    headless: bool,
}

/// What a pass ends with: the LM head's logits, or the final-normed hidden states for another head.
#[derive(Clone, Copy)]
enum Output {
    Logits,
    Hidden,
}

/// Uploads the rows of the `(name, rows)` matrices of `cols` columns stacked as one weight: as packed
/// blocks if `packed` and every part packs to one format ([`WeightSource::get_packed`]), else f16.
fn upload_linear(
    gpu: &Gpu,
    source: &WeightSource,
    packed: bool,
    label: &str,
    parts: &[(String, usize)],
    cols: usize,
) -> Result<Weight16> {
    if packed {
        let mut blocks = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            match source.get_packed(name, [*rows, cols])? {
                Some(b) => blocks.push(b),
                None => break,
            }
        }
        if blocks.len() == parts.len()
            && let Some(all) = PackedHost::concat_rows(&blocks)
        {
            return gpu.upload_packed(label, &all);
        }
    }
    let mut data = Vec::new();
    for (name, rows) in parts {
        data.extend_from_slice(&source.require(name, &[*rows, cols])?.data);
    }
    gpu.upload_weight(label, &data, parts.iter().map(|(_, r)| r).sum(), cols)
}

impl Decoder {
    /// Uploads the weights of `source` (checked against `cfg`) to the GPU at 16 bits.
    pub fn load(gpu: Arc<Gpu>, source: &WeightSource, cfg: DecoderConfig) -> Result<Decoder> {
        Self::load_parts(gpu, source, cfg, false, &LoadOptions::default())
    }

    /// [`Decoder::load`] with options (packed weights).
    pub fn load_with(
        gpu: Arc<Gpu>,
        source: &WeightSource,
        cfg: DecoderConfig,
        options: &LoadOptions,
    ) -> Result<Decoder> {
        Self::load_parts(gpu, source, cfg, false, options)
    }

    /// [`Decoder::load`] without the LM head (`lm_head.weight` is neither needed nor read): the body of
    /// a model with another head, such as a `*ForSequenceClassification` reward model. Only
    /// [`Decoder::forward_hidden`] may run on it; a pass asking for logits is an error.
    pub fn load_headless(gpu: Arc<Gpu>, source: &WeightSource, cfg: DecoderConfig) -> Result<Decoder> {
        Self::load_parts(gpu, source, cfg, true, &LoadOptions::default())
    }

    fn load_parts(
        gpu: Arc<Gpu>,
        source: &WeightSource,
        cfg: DecoderConfig,
        headless: bool,
        options: &LoadOptions,
    ) -> Result<Decoder> {
        let (d, hd) = (cfg.hidden, cfg.head_dim);
        let (qd, kvd, inter) = (cfg.n_head * hd, cfg.n_kv_head * hd, cfg.intermediate);
        let f32_tensor = |name: &str, len: usize| -> Result<Tensor> {
            let t = source.require(name, &[len])?;
            gpu.upload_f32(name, &t.data, &[len])
        };

        let embed_host = source.require("model.embed_tokens.weight", &[cfg.vocab, d])?;
        let embed = gpu.upload_weight_blocked("embed_tokens", &embed_host.data, cfg.vocab, d)?;
        drop(embed_host);
        let lm_head = if cfg.tie_embeddings || headless {
            None
        } else {
            let t = source.require("lm_head.weight", &[cfg.vocab, d])?;
            Some(gpu.upload_weight_blocked("lm_head", &t.data, cfg.vocab, d)?)
        };

        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let linear = |label: &str, parts: &[(&str, usize)], cols: usize| {
                let parts: Vec<(String, usize)> = parts.iter().map(|&(n, rows)| (p(n), rows)).collect();
                upload_linear(&gpu, source, options.packed_weights, &p(label), &parts, cols)
            };
            let qkv = linear(
                "qkv",
                &[
                    ("self_attn.q_proj.weight", qd),
                    ("self_attn.k_proj.weight", kvd),
                    ("self_attn.v_proj.weight", kvd),
                ],
                d,
            )?;
            let qkv_bias = if cfg.qkv_bias {
                let qb = source.require(&p("self_attn.q_proj.bias"), &[qd])?;
                let kb = source.require(&p("self_attn.k_proj.bias"), &[kvd])?;
                let vb = source.require(&p("self_attn.v_proj.bias"), &[kvd])?;
                Some(gpu.upload_f32(&p("qkv_bias"), &concat_rows(&[&qb, &kb, &vb]), &[cfg.qkv_width()])?)
            } else {
                None
            };
            let qk_norm = if cfg.qk_norm {
                let qn = source.require(&p("self_attn.q_norm.weight"), &[hd])?;
                let kn = source.require(&p("self_attn.k_norm.weight"), &[hd])?;
                Some(gpu.upload_f32(&p("qk_norm"), &concat_rows(&[&qn, &kn]), &[2 * hd])?)
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: f32_tensor(&p("input_layernorm.weight"), d)?,
                qkv,
                qkv_bias,
                qk_norm,
                o: linear("o_proj", &[("self_attn.o_proj.weight", d)], qd)?,
                mlp_norm: f32_tensor(&p("post_attention_layernorm.weight"), d)?,
                gate_up: linear(
                    "gate_up",
                    &[("mlp.gate_proj.weight", inter), ("mlp.up_proj.weight", inter)],
                    d,
                )?,
                down: linear("down_proj", &[("mlp.down_proj.weight", d)], inter)?,
            });
        }
        let final_norm_host = source.require("model.norm.weight", &[d])?.data.clone();
        let final_norm = gpu.upload_f32("model.norm.weight", &final_norm_host, &[d])?;
        // Attention loops run over the context; lavapipe cuts loops off after 16384 iterations.
        let rope_positions = cfg.max_positions.clamp(1, MAX_CONTEXT);
        let table = rope_table(rope_positions, hd, cfg.rope_theta);
        let rope = gpu.upload_f32("rope", table.as_flattened(), &[rope_positions, hd / 2, 2])?;
        gpu.wait()?;
        Ok(Decoder {
            gpu,
            cfg,
            embed,
            lm_head,
            final_norm,
            final_norm_host,
            layers,
            rope,
            rope_positions,
            workspace: Mutex::new(None),
            headless,
        })
    }

    /// Whether the model was loaded without an LM head ([`Decoder::load_headless`]).
    pub fn is_headless(&self) -> bool {
        self.headless
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The device the model lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Longest context the model supports (positions with a RoPE entry).
    pub fn max_context(&self) -> usize {
        self.rope_positions
    }

    /// Most rows of logits one forward pass can return (one storage binding holds them all).
    pub fn max_logit_rows(&self) -> usize {
        ((self.gpu.max_binding() / (4 * self.cfg.vocab as u64)) as usize).max(1)
    }

    /// A KV cache for `slots` sequences of up to `ctx` positions each.
    pub fn new_cache(&self, slots: usize, ctx: usize) -> Result<KvCache> {
        if ctx > self.rope_positions {
            return Err(Error::Input(format!(
                "context of {ctx} positions exceeds the model's maximum of {}",
                self.rope_positions
            )));
        }
        let len = slots * self.cfg.n_kv_head * ctx * self.cfg.head_dim;
        let mut k = Vec::with_capacity(self.cfg.layers);
        let mut v = Vec::with_capacity(self.cfg.layers);
        for l in 0..self.cfg.layers {
            k.push(self.gpu.zeros(&format!("k_cache.{l}"), &[len])?);
            v.push(self.gpu.zeros(&format!("v_cache.{l}"), &[len])?);
        }
        Ok(KvCache { slots, ctx, k, v })
    }

    /// Copies the keys and values of positions `0..len` of slot `from` into each slot of `to`, so that
    /// sequences sharing a prefix compute it once.
    pub fn copy_cache_prefix(&self, cache: &KvCache, from: usize, to: &[usize], len: usize) -> Result<()> {
        if let Some(&bad) = to.iter().chain([&from]).find(|&&s| s >= cache.slots) {
            return Err(Error::Input(format!("slot {bad} of a cache with {} slots", cache.slots)));
        }
        if len > cache.ctx {
            return Err(Error::Input(format!("{len} positions of a cache of {}", cache.ctx)));
        }
        let (heads, hd) = (self.cfg.n_kv_head, self.cfg.head_dim);
        let at = |slot: usize, h: usize| (4 * ((slot * heads + h) * cache.ctx * hd)) as u64;
        let bytes = (4 * len * hd) as u64;
        if to.is_empty() || bytes == 0 {
            return Ok(());
        }
        // wgpu refuses a copy within one buffer: the prefix goes through a scratch buffer, which each
        // layer reuses (copies run in order).
        let scratch = self.gpu.zeros("kv_prefix", &[heads * len * hd])?;
        let mut b = self.gpu.batch();
        for layer in cache.k.iter().chain(&cache.v) {
            for h in 0..heads {
                b.copy(&layer.buffer, at(from, h), &scratch.buffer, h as u64 * bytes, bytes);
            }
            for h in 0..heads {
                for &dst in to {
                    b.copy(&scratch.buffer, h as u64 * bytes, &layer.buffer, at(dst, h), bytes);
                }
            }
        }
        b.submit()
    }

    fn workspace(
        &self,
        tokens: usize,
        span: usize,
        rows: usize,
    ) -> Result<std::sync::MutexGuard<'_, Option<Workspace>>> {
        let mut guard = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|w| w.tokens >= tokens && w.span >= span && w.rows_cap >= rows) {
            return Ok(guard);
        }
        let (t, s, r) = (
            tokens.max(guard.as_ref().map_or(0, |w| w.tokens)),
            span.max(guard.as_ref().map_or(0, |w| w.span)),
            rows.max(guard.as_ref().map_or(0, |w| w.rows_cap)).max(1),
        );
        *guard = None; // free the old buffers before allocating larger ones
        let c = &self.cfg;
        let g = &self.gpu;
        *guard = Some(Workspace {
            tokens: t,
            span: s,
            ids: g.zeros("ids", &[t])?,
            tok: g.zeros("tok", &[t, 4])?,
            x: g.zeros("x", &[t, c.hidden])?,
            x2: g.zeros("x2", &[t, c.hidden])?,
            h: g.zeros("h", &[t, c.hidden])?,
            qkv: g.zeros("qkv", &[t, c.qkv_width()])?,
            q: g.zeros("q", &[t, c.n_head * c.head_dim])?,
            attn: g.zeros("attn", &[t, c.n_head * c.head_dim])?,
            gu: g.zeros("gate_up", &[t, 2 * c.intermediate])?,
            act: g.zeros("act", &[t, c.intermediate])?,
            scores: g.zeros("scores", &[t, c.n_head, s])?,
            rows_cap: r,
            rows: g.zeros("out_rows", &[r])?,
            normed: g.zeros("final_hidden", &[r, c.hidden])?,
            lora_u: None,
        });
        Ok(guard)
    }

    fn check_step(
        &self,
        cache: &KvCache,
        tokens: &[u32],
        info: &[TokenInfo],
        out_rows: &[u32],
    ) -> Result<()> {
        if tokens.is_empty() || tokens.len() != info.len() {
            return Err(Error::Input(format!(
                "forward: {} tokens but {} positions",
                tokens.len(),
                info.len()
            )));
        }
        if tokens.len() > MAX_STEP_TOKENS {
            return Err(Error::Input(format!(
                "forward: {} tokens in one pass; at most {MAX_STEP_TOKENS} (split the batch, as generate does)",
                tokens.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.cfg.vocab
            )));
        }
        for i in info {
            if i.slot as usize >= cache.slots || i.pos as usize >= cache.ctx || i.n_keys as usize > cache.ctx
            {
                return Err(Error::Input(format!(
                    "position {} in slot {} does not fit a cache of {} slots × {} positions",
                    i.pos, i.slot, cache.slots, cache.ctx
                )));
            }
        }
        if out_rows.len() > self.max_logit_rows() {
            return Err(Error::Input(format!(
                "{} output rows in one pass; at most {} fit one buffer of logits on this adapter",
                out_rows.len(),
                self.max_logit_rows()
            )));
        }
        if let Some(&r) = out_rows.iter().find(|&&r| r as usize >= tokens.len()) {
            return Err(Error::Input(format!("output row {r} of a {}-token step", tokens.len())));
        }
        Ok(())
    }

    /// Runs `tokens` (each with its position, cache slot and key count) through the base model (no
    /// adapter), writing their keys and values into `cache`, and returns the logits (R, V) of the rows
    /// `out_rows`. The logits are the pass's own (a later pass does not change them); everything else
    /// the pass computes lives in the model's workspace.
    pub fn forward(
        &self,
        cache: &KvCache,
        tokens: &[u32],
        info: &[TokenInfo],
        out_rows: &[u32],
    ) -> Result<Tensor> {
        self.forward_with(cache, tokens, info, out_rows, None)
    }

    /// [`Decoder::forward`] with a LoRA adapter on (`Some`) or off (`None`) for this pass: each
    /// adapted projection outputs `W x + scale · B (A x)`; the base weights are never changed.
    pub fn forward_with(
        &self,
        cache: &KvCache,
        tokens: &[u32],
        info: &[TokenInfo],
        out_rows: &[u32],
        adapter: Option<&Adapter>,
    ) -> Result<Tensor> {
        self.pass(cache, tokens, info, out_rows, adapter, Output::Logits)
    }

    /// [`Decoder::forward_with`] stopped before the LM head: the final-normed hidden states (R, hidden)
    /// of the rows `out_rows`, in a tensor of their own. This is where a head other than the LM head
    /// sits, such as a reward model's scalar head `Linear(hidden, 1)` on each sequence's last token.
    pub fn forward_hidden(
        &self,
        cache: &KvCache,
        tokens: &[u32],
        info: &[TokenInfo],
        out_rows: &[u32],
        adapter: Option<&Adapter>,
    ) -> Result<Tensor> {
        self.pass(cache, tokens, info, out_rows, adapter, Output::Hidden)
    }

    fn pass(
        &self,
        cache: &KvCache,
        tokens: &[u32],
        info: &[TokenInfo],
        out_rows: &[u32],
        adapter: Option<&Adapter>,
        output: Output,
    ) -> Result<Tensor> {
        self.check_step(cache, tokens, info, out_rows)?;
        if self.headless && matches!(output, Output::Logits) {
            return Err(Error::Input(
                "this decoder was loaded without its LM head (a reward model's body): it gives hidden \
                 states (forward_hidden), not logits"
                    .into(),
            ));
        }
        if let Some(a) = adapter {
            a.check_fits(&self.gpu, &self.cfg)?;
        }
        let c = &self.cfg;
        let t = tokens.len();
        let span = info.iter().map(|i| i.n_keys).max().unwrap_or(1).max(1) as usize;
        let r = out_rows.len();
        let mut guard = self.workspace(t, span, r)?;
        let ws = guard.as_mut().expect("workspace allocated");
        let g = &self.gpu;
        let rank = adapter.map_or(0, |a| a.config().r);
        if ws.lora_u.as_ref().is_some_and(|u| u.len() < t * rank) {
            ws.lora_u = None;
        }
        if adapter.is_some() && ws.lora_u.is_none() {
            ws.lora_u = Some(g.zeros("lora_u", &[t * rank])?);
        }
        let ws = &*ws;
        g.write_u32(&ws.ids, tokens);
        let words = TokenInfo::words(info);
        g.write_u32(&ws.tok, &words);
        g.write_u32(&ws.rows, out_rows);
        // Each pass's output in a buffer of its own: GRPO interleaves policy, reference (adapter
        // off) and reward-model passes, and a later pass must not change an earlier pass's outputs.
        let out = match output {
            Output::Logits => self.gpu.zeros("logits", &[r, c.vocab])?,
            Output::Hidden => self.gpu.zeros("final_hidden", &[r, c.hidden])?,
        };

        let p = self.attn_params(t, cache, span);
        let (qd, kvd, inter) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.intermediate);
        let mut b = g.batch();
        // The adapter's term of `target` in layer `l`, added into columns n_off.. of y (row stride ldy).
        let lora = |b: &mut crate::gpu::Batch<'_>,
                    l: usize,
                    target: Target,
                    x: &Tensor,
                    y: &Tensor,
                    ldy: usize,
                    n_off: usize| {
            match (adapter, &ws.lora_u) {
                (Some(a), Some(u)) => a.record_forward(b, l, target, x, u, y, t, OutputSlice { ldy, n_off }),
                _ => Ok(()),
            }
        };
        b.embed_rows_blocked(&ws.ids, &self.embed, &ws.x, t)?;
        for (l, layer) in self.layers.iter().enumerate() {
            b.rms_norm(&ws.x, &layer.attn_norm, None, &ws.h, t, c.rms_eps)?;
            b.matmul(&ws.h, &layer.qkv, layer.qkv_bias.as_ref(), None, &ws.qkv, t)?;
            let qkv_w = c.qkv_width();
            lora(&mut b, l, Target::Q, &ws.h, &ws.qkv, qkv_w, 0)?;
            lora(&mut b, l, Target::K, &ws.h, &ws.qkv, qkv_w, qd)?;
            lora(&mut b, l, Target::V, &ws.h, &ws.qkv, qkv_w, qd + kvd)?;
            b.qkv_split(
                &p,
                &ws.tok,
                &ws.qkv,
                &self.rope,
                layer.qk_norm.as_ref(),
                &ws.q,
                &cache.k[l],
                &cache.v[l],
            )?;
            b.attention(&p, &ws.tok, &ws.q, &cache.k[l], &cache.v[l], &ws.scores, &ws.attn)?;
            b.matmul(&ws.attn, &layer.o, None, Some(&ws.x), &ws.x2, t)?;
            lora(&mut b, l, Target::O, &ws.attn, &ws.x2, c.hidden, 0)?;
            b.rms_norm(&ws.x2, &layer.mlp_norm, None, &ws.h, t, c.rms_eps)?;
            // SwiGLU as the gate/up matmul's epilogue, unless an adapter adds its terms to gate or up
            // first.
            let adapted = |target| adapter.is_some_and(|a| a.pair(l, target).is_some());
            if adapted(Target::Gate) || adapted(Target::Up) {
                b.matmul(&ws.h, &layer.gate_up, None, None, &ws.gu, t)?;
                lora(&mut b, l, Target::Gate, &ws.h, &ws.gu, 2 * inter, 0)?;
                lora(&mut b, l, Target::Up, &ws.h, &ws.gu, 2 * inter, inter)?;
                b.swiglu(&ws.gu, &ws.act, t, c.intermediate)?;
            } else {
                b.matmul_swiglu(&ws.h, &layer.gate_up, &ws.act, t)?;
            }
            b.matmul(&ws.act, &layer.down, None, Some(&ws.x2), &ws.x, t)?;
            lora(&mut b, l, Target::Down, &ws.act, &ws.x, c.hidden, 0)?;
        }
        match output {
            Output::Hidden => b.rms_norm(&ws.x, &self.final_norm, Some(&ws.rows), &out, r, c.rms_eps)?,
            Output::Logits => {
                b.rms_norm(&ws.x, &self.final_norm, Some(&ws.rows), &ws.normed, r, c.rms_eps)?;
                b.matmul_blocked(&ws.normed, self.lm_head.as_ref().unwrap_or(&self.embed), &out, r)?;
            }
        }
        b.submit()?;
        Ok(out)
    }

    /// The attention kernels' parameters for a pass of `t` tokens over `cache` with score rows of `span`.
    pub(crate) fn attn_params(&self, t: usize, cache: &KvCache, span: usize) -> AttnParams {
        let c = &self.cfg;
        AttnParams {
            t: t as u32,
            n_head: c.n_head as u32,
            n_kv_head: c.n_kv_head as u32,
            head_dim: c.head_dim as u32,
            ctx: cache.ctx as u32,
            span: span as u32,
            flags: ATTN_ROPE | if c.qk_norm { ATTN_QK_NORM } else { 0 },
            eps: c.rms_eps,
        }
    }

    /// Log-probabilities (R) of `targets[r]` under the logits rows, computed on the GPU; only R floats
    /// come back.
    pub fn logprobs_of(&self, logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
        let rows = targets.len();
        if logits.shape != [rows, self.cfg.vocab] {
            return Err(Error::Input(format!(
                "{rows} targets for logits of shape {:?} (expected [{rows}, {}])",
                logits.shape, self.cfg.vocab
            )));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!(
                "target id {bad} is outside the vocabulary of {}",
                self.cfg.vocab
            )));
        }
        let tg = self.gpu.upload_u32("targets", targets, &[rows])?;
        let out = self.gpu.zeros("logprobs", &[rows])?;
        let chunks = self.cfg.vocab.div_ceil(crate::gpu::kernels::LOGPROB_CHUNK);
        let partial = self.gpu.zeros("logprob_partial", &[rows, chunks, 2])?;
        let mut b = self.gpu.batch();
        b.logprob(logits, &tg, &partial, &out, rows, self.cfg.vocab)?;
        b.submit()?;
        self.gpu.read_words(&out.buffer, 0, rows)
    }

    /// Reads logits rows back to the host.
    pub fn read_logits(&self, logits: &Tensor) -> Result<Vec<f32>> {
        self.gpu.read_f32(logits)
    }
}
