//! Configuration of BERT-family sentence encoders: `config.json` (BERT, XLM-R) checked against what the
//! GPU encoder implements, and the embedding conventions of `babelrl.json` / sentence-transformers files
//! (query prefix, token limit, pooling).

use std::path::Path;

use serde_json::Value;

use crate::model::config::{MAX_DIM, MAX_LAYERS};
use crate::{Error, Result};

/// Which family the weights belong to; it decides where position ids start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderArch {
    /// `model_type: "bert"` (all-MiniLM-L6-v2, multilingual-e5-small, LaBSE): positions from 0.
    Bert,
    /// `model_type: "xlm-roberta"` (BGE-M3, XLM-R based e5): positions from `pad_token_id + 1`.
    XlmRoberta,
}

/// Hyper-parameters of a BERT-family encoder, from `config.json`.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub arch: EncoderArch,
    pub hidden: usize,
    pub layers: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    /// Rows of the position-embedding table (`max_position_embeddings`).
    pub max_positions: usize,
    /// Rows of the token-type table (`type_vocab_size`); every token uses type 0.
    pub type_vocab: usize,
    pub layer_norm_eps: f32,
    /// Position id of a sequence's first token: 0 for BERT, `pad_token_id + 1` for XLM-R.
    pub position_offset: usize,
}

/// A size field: a positive integer up to [`MAX_DIM`] ([`MAX_LAYERS`] for `num_hidden_layers`), so that
/// no table sized by it before the weights are read can be absurd.
fn field_usize(v: &Value, path: &Path, key: &str) -> Result<usize> {
    let max = if key == "num_hidden_layers" { MAX_LAYERS } else { MAX_DIM };
    v.get(key).and_then(Value::as_u64).map(|n| n as usize).filter(|&n| n > 0 && n <= max).ok_or_else(|| {
        Error::Config {
            path: path.to_path_buf(),
            message: format!(
                "`{key}` must be an integer in 1..={max} (found {})",
                v.get(key).unwrap_or(&Value::Null)
            ),
        }
    })
}

impl EncoderConfig {
    /// Parses and checks `config.json` text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<EncoderConfig> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config { path: path.to_path_buf(), message: format!("invalid JSON: {e}") })?;
        let unsupported = |what: &str, detail: String| Err(Error::unsupported(path, what, detail));
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match model_type {
            "bert" => EncoderArch::Bert,
            "xlm-roberta" => EncoderArch::XlmRoberta,
            other => {
                return unsupported(
                    "model_type",
                    format!(
                        "`{other}`: the sentence encoder runs BERT (\"bert\") and XLM-R (\"xlm-roberta\") models"
                    ),
                );
            }
        };
        // Settings BertModel / XLMRobertaModel read that change the forward pass.
        let act = v.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
        if act != "gelu" {
            return unsupported("hidden_act", format!("`{act}`: only exact (erf) \"gelu\" is implemented"));
        }
        let pos = v.get("position_embedding_type").and_then(Value::as_str).unwrap_or("absolute");
        if pos != "absolute" {
            return unsupported(
                "position_embedding_type",
                format!("`{pos}`: only \"absolute\" is implemented"),
            );
        }
        for flag in ["is_decoder", "add_cross_attention"] {
            if v.get(flag).and_then(Value::as_bool) == Some(true) {
                return unsupported(
                    flag,
                    "true: the sentence encoder is bidirectional and has no cross-attention".into(),
                );
            }
        }
        let hidden = field_usize(&v, path, "hidden_size")?;
        let n_head = field_usize(&v, path, "num_attention_heads")?;
        let intermediate = field_usize(&v, path, "intermediate_size")?;
        if hidden % n_head != 0 || (hidden / n_head) % 2 != 0 || intermediate % 2 != 0 {
            return unsupported(
                "shape",
                format!(
                    "hidden_size {hidden} / num_attention_heads {n_head} / intermediate_size {intermediate}: \
                     the kernels need an even head size and an even intermediate size"
                ),
            );
        }
        let max_positions = field_usize(&v, path, "max_position_embeddings")?;
        let position_offset = match arch {
            EncoderArch::Bert => 0,
            EncoderArch::XlmRoberta => {
                let pad = v.get("pad_token_id").and_then(Value::as_u64).unwrap_or(1);
                usize::try_from(pad).unwrap_or(usize::MAX).saturating_add(1)
            }
        };
        if max_positions < position_offset.saturating_add(2) {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!(
                    "max_position_embeddings {max_positions} leaves no room for a sequence after the position \
                     offset {position_offset}"
                ),
            });
        }
        let layer_norm_eps = v.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12) as f32;
        Ok(EncoderConfig {
            arch,
            hidden,
            layers: field_usize(&v, path, "num_hidden_layers")?,
            n_head,
            head_dim: hidden / n_head,
            intermediate,
            vocab: field_usize(&v, path, "vocab_size")?,
            max_positions,
            type_vocab: v.get("type_vocab_size").and_then(Value::as_u64).unwrap_or(2).clamp(1, MAX_DIM as u64)
                as usize,
            layer_norm_eps,
            position_offset,
        })
    }

    /// Reads and checks `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<EncoderConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_json(&text, &path)
    }

    /// Longest sequence (special tokens included) the position table allows.
    pub fn max_sequence(&self) -> usize {
        self.max_positions - self.position_offset
    }
}

/// How texts are turned into embeddings. [`EncoderOptions::from_dir`] reads the model folder's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncoderOptions {
    /// Text put before every input (e5 models expect `"query: "`); `None` for none.
    pub prefix: Option<String>,
    /// Tokens per text, special tokens included; longer texts are truncated with a warning. `None`, or
    /// a value above the model's position limit, means the position limit.
    pub max_tokens: Option<usize>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Config { path: path.to_path_buf(), message: format!("invalid JSON: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl EncoderOptions {
    /// Defaults from the model folder: `babelrl.json` (`query_prefix`, `max_tokens`, `pooling`,
    /// `normalize`), else sentence-transformers' `sentence_bert_config.json` (`max_seq_length`). A folder
    /// whose files ask for pooling other than the mean, or for unnormalised output, is refused.
    pub fn from_dir(dir: &Path) -> Result<EncoderOptions> {
        let mut options = EncoderOptions::default();
        let st_path = dir.join("sentence_bert_config.json");
        if let Some(st) = read_json(&st_path)? {
            options.max_tokens = st.get("max_seq_length").and_then(Value::as_u64).map(|n| n as usize);
        }
        let pool_path = dir.join("1_Pooling").join("config.json");
        if let Some(pool) = read_json(&pool_path)?
            && pool.get("pooling_mode_mean_tokens").and_then(Value::as_bool) == Some(false)
        {
            return Err(Error::unsupported(
                &pool_path,
                "pooling",
                "pooling_mode_mean_tokens is false: the sentence encoder implements mean pooling only",
            ));
        }
        let path = dir.join("babelrl.json");
        let Some(b) = read_json(&path)? else { return Ok(options) };
        if let Some(prefix) = b.get("query_prefix").and_then(Value::as_str) {
            options.prefix = Some(prefix.to_string()).filter(|p| !p.is_empty());
        }
        if let Some(n) = b.get("max_tokens") {
            let n = n.as_u64().filter(|&n| n >= 2).ok_or_else(|| Error::Config {
                path: path.clone(),
                message: format!("`max_tokens` must be an integer ≥ 2 (found {n})"),
            })?;
            options.max_tokens = Some(n as usize);
        }
        if let Some(p) = b.get("pooling").and_then(Value::as_str)
            && p != "mean"
        {
            return Err(Error::unsupported(&path, "pooling", format!("`{p}`: only \"mean\" is implemented")));
        }
        if b.get("normalize").and_then(Value::as_bool) == Some(false) {
            return Err(Error::unsupported(&path, "normalize", "false: embeddings are always L2-normalised"));
        }
        Ok(options)
    }
}
