//! Opens a language model from a Hugging Face folder or a GGUF file: config, weights and tokenizer,
//! checked against each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::gpu::Gpu;
use crate::model::config::{Arch, DecoderConfig};
use crate::model::decoder::Decoder;
use crate::model::gguf::Gguf;
use crate::model::weights::{SafetensorsFolder, WeightSource};
use crate::text::Tokenizer;
use crate::{Error, Result};

/// A decoder with its tokenizer (absent only for bare test models without tokenizer files).
pub struct LanguageModel {
    pub decoder: Decoder,
    pub tokenizer: Option<Tokenizer>,
    pub path: PathBuf,
}

impl LanguageModel {
    /// The tokenizer, or an error naming the model path.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::Tokenizer(format!(
                "{} has no tokenizer (tokenizer.json or GGUF tokenizer metadata)",
                self.path.display()
            ))
        })
    }
}

fn check_vocab(path: &Path, tokenizer: &Tokenizer, cfg: &DecoderConfig) -> Result<()> {
    let n = tokenizer.vocab_size();
    if n > cfg.vocab {
        return Err(Error::Tokenizer(format!(
            "{}: the tokenizer has {n} tokens but the model's embedding has only {} rows; \
             the tokenizer does not belong to this model",
            path.display(),
            cfg.vocab
        )));
    }
    Ok(())
}

/// How a decoder's weights go to the GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keep the layers' linear weights as packed blocks where the file has them (GGUF Q4_0, Q4_1, Q8_0;
    /// a fused q|k|v or gate|up weight only when all its parts pack to one format), instead of
    /// dequantizing them to f16 (`BABELRL_PACKED_WEIGHTS=1`). Decoding (T ≤ 4 rows on the CPU family
    /// with subgroups of eight) reads the blocks; every other launch (prefill of more rows, training's
    /// backward dX, other adapters) runs on a per-launch f16 expansion into one shared scratch buffer,
    /// so resident memory stays that of the blocks. The embedding (and a tied LM head) stays f16.
    pub packed_weights: bool,
}

impl LoadOptions {
    /// Options from the environment: `BABELRL_PACKED_WEIGHTS=1` sets `packed_weights`.
    pub fn from_env() -> Self {
        LoadOptions { packed_weights: std::env::var("BABELRL_PACKED_WEIGHTS").is_ok_and(|v| v == "1") }
    }
}

/// Loads a decoder from `path`: a folder with config.json + safetensors (+ tokenizer.json), or a .gguf file,
/// with [`LoadOptions::from_env`].
pub fn load_language_model(gpu: Arc<Gpu>, path: &Path) -> Result<LanguageModel> {
    load_language_model_with(gpu, path, &LoadOptions::from_env())
}

/// [`load_language_model`] with explicit options.
pub fn load_language_model_with(gpu: Arc<Gpu>, path: &Path, options: &LoadOptions) -> Result<LanguageModel> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "model not found")));
    }
    if path.is_dir() {
        let cfg = DecoderConfig::from_hf_file(&path.join("config.json"))?;
        let tokenizer_path = path.join("tokenizer.json");
        let tokenizer =
            if tokenizer_path.exists() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };
        if let Some(t) = &tokenizer {
            check_vocab(path, t, &cfg)?;
        }
        let source = WeightSource::Safetensors(SafetensorsFolder::open(path)?);
        let decoder = Decoder::load_with(gpu, &source, cfg, options)?;
        return Ok(LanguageModel { decoder, tokenizer, path: path.to_path_buf() });
    }
    let file = Gguf::open(path)?;
    let cfg = DecoderConfig::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    check_vocab(path, &tokenizer, &cfg)?;
    let source = WeightSource::Gguf {
        file,
        n_head: cfg.n_head,
        n_kv_head: cfg.n_kv_head,
        permuted_qk: cfg.arch == Arch::Llama,
    };
    let decoder = Decoder::load_with(gpu, &source, cfg, options)?;
    Ok(LanguageModel { decoder, tokenizer: Some(tokenizer), path: path.to_path_buf() })
}
