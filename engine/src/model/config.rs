//! Decoder hyper-parameters from a Hugging Face `config.json` or GGUF metadata, with every setting the
//! engine does not implement refused by name.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// The decoder families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama and SmolLM2: no biases; GGUF stores Q and K permuted.
    Llama,
    /// Qwen2 / Qwen2.5: biases on the q, k and v projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k, explicit `head_dim`.
    Qwen3,
}

impl Arch {
    fn parse(name: &str, path: &Path) -> Result<Arch> {
        match name {
            "llama" | "LlamaForCausalLM" | "smollm2" => Ok(Arch::Llama),
            "qwen2" | "Qwen2ForCausalLM" => Ok(Arch::Qwen2),
            "qwen3" | "Qwen3ForCausalLM" => Ok(Arch::Qwen3),
            other => Err(Error::unsupported(
                path,
                "architecture",
                format!("`{other}`; babelrl runs llama (incl. SmolLM2), qwen2 and qwen3 decoders"),
            )),
        }
    }
}

/// Largest size accepted for any one dimension of a decoder config (hidden, intermediate, layers, heads,
/// vocabulary): far above any real model, small enough that products of two or three never overflow.
pub const MAX_DIM: usize = 1 << 24;
/// Most layers accepted (real models have up to ~130); the loader sizes per-layer tables by it before
/// it reads the layers' weights.
pub const MAX_LAYERS: usize = 4096;
/// Largest head size accepted (real models use 64–256); it bounds the rotary table, `positions × head_dim`.
pub const MAX_HEAD_DIM: usize = 1024;

/// Everything the decoder needs to know about its shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    /// Biases on q, k, v (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k (Qwen3).
    pub qk_norm: bool,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    use_sliding_window: Option<bool>,
}

fn refuse(path: &Path, setting: &str, detail: impl Into<String>) -> Error {
    Error::unsupported(path, format!("config setting `{setting}`"), detail)
}

impl DecoderConfig {
    /// Reads and checks a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<DecoderConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.into(),
            message: format!("not a decoder config.json: {e}"),
        })?;
        let arch_name = raw
            .model_type
            .clone()
            .or_else(|| raw.architectures.as_ref().and_then(|a| a.first().cloned()))
            .ok_or_else(|| Error::Config {
                path: path.into(),
                message: "no `model_type` or `architectures`".into(),
            })?;
        let arch = Arch::parse(&arch_name, path)?;

        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(refuse(path, "hidden_act", format!("`{act}`; only `silu` (SwiGLU) is implemented")));
        }
        if raw.mlp_bias == Some(true) {
            return Err(refuse(path, "mlp_bias", "MLP biases are not implemented"));
        }
        if raw.use_sliding_window == Some(true) {
            return Err(refuse(path, "use_sliding_window", "sliding-window attention is not implemented"));
        }
        let mut rope_theta = raw.rope_theta;
        for (key, v) in [("rope_scaling", &raw.rope_scaling), ("rope_parameters", &raw.rope_parameters)] {
            let Some(Value::Object(m)) = v else { continue };
            let kind =
                m.get("rope_type").or_else(|| m.get("type")).and_then(Value::as_str).unwrap_or("default");
            if kind != "default" {
                return Err(refuse(
                    path,
                    key,
                    format!("rope type `{kind}`; only default RoPE is implemented"),
                ));
            }
            if let Some(t) = m.get("rope_theta").and_then(Value::as_f64) {
                rope_theta = Some(t);
            }
        }
        if raw.num_attention_heads == 0 {
            return Err(refuse(path, "num_attention_heads", "0; a decoder needs at least one head"));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads);
        let cfg = DecoderConfig {
            arch,
            hidden: raw.hidden_size,
            intermediate: raw.intermediate_size,
            layers: raw.num_hidden_layers,
            n_head: raw.num_attention_heads,
            n_kv_head: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim,
            vocab: raw.vocab_size,
            rms_eps: raw.rms_norm_eps as f32,
            rope_theta: rope_theta.unwrap_or(10000.0) as f32,
            max_positions: raw.max_position_embeddings.unwrap_or(2048),
            tie_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || raw.attention_bias == Some(true),
            qk_norm: arch == Arch::Qwen3,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the shapes the kernels rely on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: &str, detail: String| Err(refuse(path, what, detail));
        if self.n_head == 0 || self.n_kv_head == 0 || !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(
                "num_key_value_heads",
                format!("{} query heads are not a multiple of {} kv heads", self.n_head, self.n_kv_head),
            );
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return bad("head_dim", format!("{} is odd; RoPE needs an even head size", self.head_dim));
        }
        if !self.hidden.is_multiple_of(2) || !self.intermediate.is_multiple_of(2) {
            return bad(
                "hidden_size",
                "hidden and intermediate sizes must be even (16-bit weight packing)".into(),
            );
        }
        if self.layers == 0 || self.vocab == 0 {
            return bad("num_hidden_layers", "a decoder needs at least one layer and a vocabulary".into());
        }
        // Every size must be positive and small enough that the products the loader and the kernels
        // form (rows × columns of each matrix, the rotary table) cannot overflow or ask for absurd
        // allocations before the weights are checked against them.
        for (what, v) in [
            ("hidden_size", self.hidden),
            ("intermediate_size", self.intermediate),
            ("num_hidden_layers", self.layers),
            ("num_attention_heads", self.n_head),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab),
        ] {
            if v == 0 || v > MAX_DIM {
                return bad(what, format!("{v} is outside 1..={MAX_DIM}"));
            }
        }
        if self.layers > MAX_LAYERS {
            return bad("num_hidden_layers", format!("{} is above {MAX_LAYERS}", self.layers));
        }
        if self.head_dim > MAX_HEAD_DIM {
            return bad("head_dim", format!("{} is above {MAX_HEAD_DIM}", self.head_dim));
        }
        Ok(())
    }

    /// Width of the fused q/k/v projection.
    pub fn qkv_width(&self) -> usize {
        (self.n_head + 2 * self.n_kv_head) * self.head_dim
    }
}

/// `BABELRL_CACHE`, or `~/.cache/babelrl`: where fetched models and compiled plugins live.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BABELRL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("babelrl")
}

impl DecoderConfig {
    /// Reads the hyper-parameters from GGUF metadata (`general.architecture` and `<arch>.*` keys).
    pub fn from_gguf(file: &crate::model::gguf::Gguf) -> Result<DecoderConfig> {
        let path = file.path();
        let name = file.arch()?.to_string();
        let arch = Arch::parse(&name, path)?;
        let key = |k: &str| format!("{name}.{k}");
        if let Some(kind) = file.opt_str(&key("rope.scaling.type"))?
            && kind != "none"
        {
            return Err(refuse(
                path,
                "rope.scaling.type",
                format!("`{kind}`; only default RoPE is implemented"),
            ));
        }
        let hidden = file.get_u32(&key("embedding_length"))? as usize;
        let n_head = file.get_u32(&key("attention.head_count"))? as usize;
        let embed = file.tensor_info("token_embd.weight")?.shape();
        let vocab = match file.opt_u32(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => embed.first().copied().unwrap_or(0),
        };
        let head_dim = match file.opt_u32(&key("attention.key_length"))? {
            Some(h) => h as usize,
            None => hidden / n_head.max(1),
        };
        let cfg = DecoderConfig {
            arch,
            hidden,
            intermediate: file.get_u32(&key("feed_forward_length"))? as usize,
            layers: file.get_u32(&key("block_count"))? as usize,
            n_head,
            n_kv_head: file.opt_u32(&key("attention.head_count_kv"))?.map_or(n_head, |v| v as usize),
            head_dim,
            vocab,
            rms_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
            max_positions: file.opt_u32(&key("context_length"))?.map_or(2048, |v| v as usize),
            tie_embeddings: file.tensor_info("output.weight").is_err(),
            qkv_bias: file.tensor_info("blk.0.attn_q.bias").is_ok(),
            qk_norm: arch == Arch::Qwen3,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}
