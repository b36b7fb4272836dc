//! BERT-family sentence embedders on the GPU (BERT: all-MiniLM-L6-v2, multilingual-e5-small, LaBSE;
//! XLM-R: BGE-M3): post-norm transformer over a flat batch of texts, mean pooling over each text's
//! tokens, L2 normalisation. Loaded from a Hugging Face folder (config.json, model.safetensors,
//! tokenizer.json, optional babelrl.json).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::gpu::kernels::AttnParams;
use crate::gpu::{BlockedWeight16, Gpu, Tensor, Weight16};
use crate::model::weights::{HostTensor, SafetensorsFolder, concat_rows};
use crate::text::Tokenizer;
use crate::{Error, Result};

pub use crate::model::encoder_config::{EncoderArch, EncoderConfig, EncoderOptions};

/// Most tokens one forward pass takes; longer batches are split (grid and buffer sizes stay bounded).
const TOKENS_PER_PASS: usize = 8192;
/// Largest attention-score buffer (T · H · longest sequence · 4 bytes) of one pass.
const SCORE_BYTES_PER_PASS: usize = 256 << 20;

/// Frozen weights of one post-norm block: `x = LN(x + Attn(x)); x = LN(x + FFN(x))`.
struct Layer {
    qkv: Weight16,    // (3D, D): query | key | value rows
    qkv_bias: Tensor, // (3D)
    o: Weight16,      // (D, D)
    o_bias: Tensor,   // (D)
    attn_norm: (Tensor, Tensor),
    up: Weight16,    // (I, D)
    up_bias: Tensor, // (I)
    down: Weight16,  // (D, I)
    down_bias: Tensor,
    out_norm: (Tensor, Tensor),
}

/// A sentence embedder resident on the GPU.
pub struct Encoder {
    gpu: Arc<Gpu>,
    cfg: EncoderConfig,
    dir: PathBuf,
    prefix: String,
    max_tokens: usize,
    /// `tokenizer.json` with its own padding and truncation switched off (the encoder truncates).
    tokenizer: Tokenizer,
    /// Word embeddings (V, D) in row blocks that each fit one storage binding: (first row, block).
    word: BlockedWeight16,
    position: Weight16,   // (P, D)
    token_type: Weight16, // (types, D)
    embed_norm: (Tensor, Tensor),
    layers: Vec<Layer>,
    /// Bound where the attention kernel's rotary table would be; never read (no `ATTN_ROPE`).
    no_rope: Tensor,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("dir", &self.dir)
            .field("arch", &self.cfg.arch)
            .field("dim", &self.cfg.hidden)
            .field("layers", &self.cfg.layers)
            .field("max_tokens", &self.max_tokens)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Tensor names with the prefix the checkpoint uses ("", "bert." or "roberta.").
struct Names<'a> {
    st: &'a SafetensorsFolder,
    prefix: &'static str,
}

impl Names<'_> {
    fn require(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let full = format!("{}{name}", self.prefix);
        let t = self.st.get(&full)?.ok_or_else(|| Error::MissingTensor {
            path: self.st.dir().join("model.safetensors"),
            name: full.clone(),
        })?;
        if t.shape != shape {
            return Err(Error::TensorShape {
                path: self.st.file_of(&full).unwrap_or(self.st.dir()).to_path_buf(),
                name: full,
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }
}

impl Encoder {
    /// Loads the encoder in `dir` with the folder's own defaults ([`EncoderOptions::from_dir`]).
    pub fn load(gpu: Arc<Gpu>, dir: &Path) -> Result<Encoder> {
        let options = EncoderOptions::from_dir(dir)?;
        Self::load_with(gpu, dir, options)
    }

    /// Loads the encoder in `dir` with explicit options.
    pub fn load_with(gpu: Arc<Gpu>, dir: &Path, options: EncoderOptions) -> Result<Encoder> {
        let cfg = EncoderConfig::from_dir(dir)?;
        // Attention and pooling loops run over the sequence: keep them under lavapipe's loop limit.
        let max_tokens = options
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(cfg.max_sequence())
            .min(crate::model::decoder::MAX_CONTEXT);
        if max_tokens < 2 {
            return Err(Error::Input(format!(
                "encoder max_tokens {max_tokens}: needs room for two special tokens"
            )));
        }
        let tok_path = dir.join("tokenizer.json");
        // `Tokenizer::from_file` switches the file's own padding and truncation off.
        let tokenizer = Tokenizer::from_file(&tok_path)?;

        let st = SafetensorsFolder::open(dir)?;
        let prefix = ["", "bert.", "roberta."]
            .into_iter()
            .find(|p| st.contains(&format!("{p}embeddings.word_embeddings.weight")))
            .unwrap_or("");
        let w = Names { st: &st, prefix };
        let (d, inter) = (cfg.hidden, cfg.intermediate);
        let f32_tensor = |name: &str, len: usize| -> Result<Tensor> {
            let t = w.require(name, &[len])?;
            gpu.upload_f32(name, &t.data, &[len])
        };
        let norm = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((f32_tensor(&format!("{name}.weight"), d)?, f32_tensor(&format!("{name}.bias"), d)?))
        };
        let table = |name: &str, rows: usize| -> Result<Weight16> {
            let t = w.require(name, &[rows, d])?;
            gpu.upload_weight(name, &t.data, rows, d)
        };
        let word = {
            let name = "embeddings.word_embeddings.weight";
            let t = w.require(name, &[cfg.vocab, d])?;
            gpu.upload_weight_blocked(name, &t.data, cfg.vocab, d)?
        };
        let position = table("embeddings.position_embeddings.weight", cfg.max_positions)?;
        let token_type = table("embeddings.token_type_embeddings.weight", cfg.type_vocab)?;
        let embed_norm = norm("embeddings.LayerNorm")?;

        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = |s: &str| format!("encoder.layer.{l}.{s}");
            let (q, k, v) = (
                w.require(&p("attention.self.query.weight"), &[d, d])?,
                w.require(&p("attention.self.key.weight"), &[d, d])?,
                w.require(&p("attention.self.value.weight"), &[d, d])?,
            );
            let (qb, kb, vb) = (
                w.require(&p("attention.self.query.bias"), &[d])?,
                w.require(&p("attention.self.key.bias"), &[d])?,
                w.require(&p("attention.self.value.bias"), &[d])?,
            );
            let o = w.require(&p("attention.output.dense.weight"), &[d, d])?;
            let up = w.require(&p("intermediate.dense.weight"), &[inter, d])?;
            let down = w.require(&p("output.dense.weight"), &[d, inter])?;
            layers.push(Layer {
                qkv: gpu.upload_weight(&p("qkv"), &concat_rows(&[&q, &k, &v]), 3 * d, d)?,
                qkv_bias: gpu.upload_f32(&p("qkv_bias"), &concat_rows(&[&qb, &kb, &vb]), &[3 * d])?,
                o: gpu.upload_weight(&p("attention.output.dense"), &o.data, d, d)?,
                o_bias: f32_tensor(&p("attention.output.dense.bias"), d)?,
                attn_norm: norm(&p("attention.output.LayerNorm"))?,
                up: gpu.upload_weight(&p("intermediate.dense"), &up.data, inter, d)?,
                up_bias: f32_tensor(&p("intermediate.dense.bias"), inter)?,
                down: gpu.upload_weight(&p("output.dense"), &down.data, d, inter)?,
                down_bias: f32_tensor(&p("output.dense.bias"), d)?,
                out_norm: norm(&p("output.LayerNorm"))?,
            });
        }
        let no_rope = gpu.zeros("no_rope", &[4])?;
        gpu.wait()?;
        log::info!(
            "encoder {}: {:?}, {} layers, dim {}, max {} tokens, prefix {:?}",
            dir.display(),
            cfg.arch,
            cfg.layers,
            d,
            max_tokens,
            options.prefix.as_deref().unwrap_or("")
        );
        Ok(Encoder {
            gpu,
            cfg,
            dir: dir.to_path_buf(),
            prefix: options.prefix.unwrap_or_default(),
            max_tokens,
            tokenizer,
            word,
            position,
            token_type,
            embed_norm,
            layers,
            no_rope,
        })
    }

    /// Embedding size.
    pub fn dim(&self) -> usize {
        self.cfg.hidden
    }

    /// Tokens per text (special tokens included) before truncation.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Text put before every input (empty for none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The device the encoder lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Token ids the encoder runs for `text`: prefix, special tokens, truncated to [`Self::max_tokens`].
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let input = format!("{}{text}", self.prefix);
        // Guarded: a panic inside `tokenizers` comes back as an error naming tokenizer.json.
        let mut ids = self.tokenizer.encode(&input, true)?;
        if ids.is_empty() {
            return Err(Error::Input(format!(
                "{}: the tokenizer produced no tokens for {text:?} (it adds no special tokens?)",
                self.dir.join("tokenizer.json").display()
            )));
        }
        if ids.len() > self.max_tokens {
            log::warn!(
                "encoder: a text of {} tokens is truncated to {} (\"{}…\")",
                ids.len(),
                self.max_tokens,
                text.chars().take(40).collect::<String>()
            );
            // Keep the leading tokens and the closing special token ([SEP] / </s>), as HF truncation does.
            let last = *ids.last().expect("non-empty");
            ids.truncate(self.max_tokens - 1);
            ids.push(last);
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab) {
            return Err(Error::Input(format!(
                "{}: token id {bad} is outside the model's vocabulary of {} (tokenizer.json does not match config.json)",
                self.dir.display(),
                self.cfg.vocab
            )));
        }
        Ok(ids)
    }

    /// L2-normalised mean-pooled embeddings, one per text, in order. All texts run as one flat token
    /// batch on the GPU (split into passes of at most 8192 tokens).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let seqs = texts.iter().map(|t| self.token_ids(t)).collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(seqs.len());
        let heads = self.cfg.n_head;
        let mut start = 0;
        while start < seqs.len() {
            let (mut tokens, mut longest, mut end) = (0, 0, start);
            while end < seqs.len() {
                let (t, l) = (tokens + seqs[end].len(), longest.max(seqs[end].len()));
                if end > start && (t > TOKENS_PER_PASS || t * heads * l * 4 > SCORE_BYTES_PER_PASS) {
                    break;
                }
                (tokens, longest, end) = (t, l, end + 1);
            }
            out.extend(self.forward(&seqs[start..end])?);
            start = end;
        }
        Ok(out)
    }

    /// One forward pass over `seqs` (token ids with special tokens) → embeddings (B, D).
    fn forward(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.cfg;
        let g = &self.gpu;
        let (d, hd) = (c.hidden, c.head_dim);
        let t: usize = seqs.iter().map(Vec::len).sum();
        let n = seqs.len();
        let ctx = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let (mut ids, mut pos_ids, mut tok, mut spans) = (
            Vec::with_capacity(t),
            Vec::with_capacity(t),
            Vec::with_capacity(4 * t),
            Vec::with_capacity(2 * n),
        );
        for (s, seq) in seqs.iter().enumerate() {
            spans.extend([ids.len() as u32, seq.len() as u32]);
            for (i, &id) in seq.iter().enumerate() {
                ids.push(id);
                pos_ids.push((c.position_offset + i) as u32);
                // Bidirectional: every token of sequence s attends to all its keys (cache slot s).
                tok.extend([i as u32, s as u32, seq.len() as u32, 0]);
            }
        }
        let ids = g.upload_u32("ids", &ids, &[t])?;
        let pos_ids = g.upload_u32("position_ids", &pos_ids, &[t])?;
        let type_ids = g.zeros("token_type_ids", &[t])?;
        let tok = g.upload_u32("tok", &tok, &[t, 4])?;
        let spans = g.upload_u32("spans", &spans, &[n, 2])?;
        let x = g.zeros("x", &[t, d])?; // (T, D) hidden state
        let x2 = g.zeros("x2", &[t, d])?; // (T, D) pre-norm sum
        let qkv = g.zeros("qkv", &[t, 3 * d])?; // (T, 3D)
        let q = g.zeros("q", &[t, c.n_head, hd])?;
        let k_cache = g.zeros("k", &[n, c.n_head, ctx, hd])?; // (S, H, C, hd)
        let v_cache = g.zeros("v", &[n, c.n_head, ctx, hd])?;
        let scores = g.zeros("scores", &[t, c.n_head, ctx])?; // (T, H, C)
        let attn = g.zeros("attn", &[t, d])?;
        let inter = g.zeros("inter", &[t, c.intermediate])?; // (T, I)
        let pooled = g.zeros("pooled", &[n, d])?; // (B, D)
        let p = AttnParams {
            t: t as u32,
            n_head: c.n_head as u32,
            n_kv_head: c.n_head as u32,
            head_dim: hd as u32,
            ctx: ctx as u32,
            span: ctx as u32,
            flags: 0,
            eps: 0.0,
        };
        let eps = c.layer_norm_eps;
        let mut b = g.batch();
        b.embed_rows(&pos_ids, &self.position, &x2, t)?;
        for (first, block) in &self.word.blocks {
            b.embed_rows_add_from(&ids, block, *first, &x2, t)?;
        }
        b.embed_rows_add(&type_ids, &self.token_type, &x2, t)?;
        b.layer_norm(&x2, &self.embed_norm.0, &self.embed_norm.1, &x, t, eps)?;
        for l in &self.layers {
            b.matmul(&x, &l.qkv, Some(&l.qkv_bias), None, &qkv, t)?;
            b.qkv_split(&p, &tok, &qkv, &self.no_rope, None, &q, &k_cache, &v_cache)?;
            b.attention(&p, &tok, &q, &k_cache, &v_cache, &scores, &attn)?;
            b.matmul(&attn, &l.o, Some(&l.o_bias), Some(&x), &x2, t)?;
            b.layer_norm(&x2, &l.attn_norm.0, &l.attn_norm.1, &x, t, eps)?;
            b.matmul(&x, &l.up, Some(&l.up_bias), None, &inter, t)?;
            b.gelu(&inter, t, c.intermediate)?;
            b.matmul(&inter, &l.down, Some(&l.down_bias), Some(&x), &x2, t)?;
            b.layer_norm(&x2, &l.out_norm.0, &l.out_norm.1, &x, t, eps)?;
        }
        b.mean_pool_l2(&x, &spans, &pooled, n, d)?;
        b.submit()?;
        let flat = g.read_f32(&pooled)?;
        Ok(flat.chunks_exact(d).map(<[f32]>::to_vec).collect())
    }
}
