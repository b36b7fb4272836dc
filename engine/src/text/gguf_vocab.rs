//! Rebuild a Hugging Face `tokenizer.json` from GGUF tokenizer metadata (`tokenizer.ggml.*`).
//!
//! `tokenizer.ggml.model = "gpt2"` is byte-level BPE: `tokens` are already in the byte-to-unicode
//! alphabet of GPT-2 and `merges` are `"left right"` strings. The pre-tokenizer depends on
//! `tokenizer.ggml.pre` and follows both llama.cpp (`llama-vocab.cpp`) and the original
//! `tokenizer.json` of each family:
//! - `smollm`, `starcoder`, `refact`, `codeshell`: digits split one by one (`\p{N}`), then the
//!   GPT-2 regex (HF: `Digits(individual_digits=true)` + `ByteLevel(use_regex=true)`);
//! - `gpt-2`, `default`: the GPT-2 regex (HF: `ByteLevel(use_regex=true)`);
//! - `qwen2`: NFC, then the Qwen2 regex with single digits;
//! - `llama-bpe`, `llama3`: the Llama 3 regex with digit runs of 1–3.
//!
//! `tokenizer.ggml.model = "llama"` is SentencePiece BPE with scores: merges are derived from the
//! scores (the merge producing a higher-scoring token ranks first, as llama.cpp's SPM tokenizer and
//! transformers' `SentencePieceExtractor` do), with byte fallback on `<0xXX>` tokens.
//!
//! Token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. Control tokens
//! become special added tokens, user-defined ones non-special added tokens.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::model::gguf::Gguf;
use crate::{Error, Result};

const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token type ids of `tokenizer.ggml.token_type`.
pub(crate) mod token_type {
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const BYTE: i32 = 6;
}

/// What [`build`] produces: the `tokenizer.json` value plus facts the wrapper needs.
pub(crate) struct GgufVocab {
    pub json: Value,
    /// Whether encoding with special tokens prepends BOS (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Whether encoding with special tokens appends EOS (`tokenizer.ggml.add_eos_token`).
    pub add_eos: bool,
}

fn err(g: &Gguf, msg: String) -> Error {
    Error::format(g.path(), msg)
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// `(normalizer, pre_tokenizer)` for a `gpt2` vocabulary with pre-tokenizer `pre`.
fn gpt2_pre(g: &Gguf, pre: &str) -> Result<(Value, Value)> {
    Ok(match pre {
        "smollm" | "starcoder" | "refact" | "codeshell" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "gpt-2" | "gpt2" | "default" => (Value::Null, byte_level(true)),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
        ),
        "llama-bpe" | "llama3" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
        ),
        other => {
            return Err(Error::unsupported(
                g.path(),
                "tokenizer pre-tokenizer",
                format!(
                    "tokenizer.ggml.pre = {other:?} (supported: smollm, starcoder, refact, codeshell, gpt-2, \
                     default, qwen2, llama-bpe, llama3); use the model's tokenizer.json instead"
                ),
            ));
        }
    })
}

/// Build a `tokenizer.json` value from the GGUF metadata of `g`.
pub(crate) fn build(g: &Gguf) -> Result<GgufVocab> {
    let model = g.get_str("tokenizer.ggml.model")?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let types = match g.get("tokenizer.ggml.token_type") {
        Some(_) => g.get_i32_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(err(
            g,
            format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                types.len(),
                tokens.len()
            ),
        ));
    }

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut duplicates = 0usize;
    for (id, tok) in tokens.iter().enumerate() {
        if vocab.contains_key(*tok) {
            duplicates += 1;
        } else {
            vocab.insert(tok.to_string(), json!(id));
        }
    }
    if duplicates > 0 {
        log::warn!("{}: {duplicates} duplicate token strings; later ids only decode", g.path().display());
    }

    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, t))| **t == token_type::CONTROL || **t == token_type::USER_DEFINED)
        .map(|(id, (tok, t))| {
            json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *t == token_type::CONTROL})
        })
        .collect();

    let unk = g.opt_u32("tokenizer.ggml.unknown_token_id")?;
    let (json, default_bos) = match model {
        "gpt2" => {
            let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
            let (normalizer, pre_tokenizer) = gpt2_pre(g, pre)?;
            let merges: Vec<Value> = g
                .get_str_array("tokenizer.ggml.merges")?
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    // llama.cpp splits at the first space after the first character.
                    let cut = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(p, _)| p);
                    match cut {
                        Some(p) => Ok(json!([&m[..p], &m[p + 1..]])),
                        None => {
                            Err(err(g, format!("tokenizer.ggml.merges[{i}] = {m:?} has no space separator")))
                        }
                    }
                })
                .collect::<Result<_>>()?;
            let model = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": matches!(pre, "llama-bpe" | "llama3"), "vocab": vocab, "merges": merges});
            let tj = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
                "decoder": byte_level(true), "model": model});
            (tj, matches!(pre, "llama-bpe" | "llama3"))
        }
        "llama" => (spm_json(g, &tokens, &types, vocab, added, unk)?, true),
        other => {
            return Err(Error::unsupported(
                g.path(),
                "tokenizer model",
                format!(
                    "tokenizer.ggml.model = {other:?} (supported: gpt2, llama); use the model's tokenizer.json"
                ),
            ));
        }
    };
    let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos);
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    Ok(GgufVocab { json, add_bos, add_eos })
}

/// SentencePiece-BPE (`llama`) vocabulary as a `tokenizer.json` like transformers' `LlamaTokenizerFast`.
fn spm_json(
    g: &Gguf,
    tokens: &[&str],
    types: &[i32],
    vocab: serde_json::Map<String, Value>,
    added: Vec<Value>,
    unk: Option<u32>,
) -> Result<Value> {
    let scores = match g.get("tokenizer.ggml.scores") {
        Some(_) => g.get_f32_array("tokenizer.ggml.scores")?,
        None => vec![0.0; tokens.len()],
    };
    if scores.len() != tokens.len() {
        return Err(err(
            g,
            format!("tokenizer.ggml.scores has {} entries for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let index: HashMap<&str, usize> = tokens.iter().enumerate().rev().map(|(i, t)| (*t, i)).collect();
    // Every split of a normal token into two tokens is a merge; rank by the merged token's score
    // (higher first), then by the ids of the pieces.
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if types[id] == token_type::CONTROL || types[id] == token_type::BYTE || tok.chars().count() < 2 {
            continue;
        }
        for (p, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(p);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((scores[id], li, ri, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<Value> = merges.iter().map(|m| json!([m.3, m.4])).collect();
    let add_space_prefix = g.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let mut normalizers = vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})];
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        normalizers.insert(0, json!({"type": "Prepend", "prepend": "▁"}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk_token = unk.and_then(|u| tokens.get(u as usize)).map(|s| s.to_string());
    Ok(json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers}, "pre_tokenizer": null,
        "post_processor": null, "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk_token, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges}}))
}
