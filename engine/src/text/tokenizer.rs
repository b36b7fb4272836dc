//! The engine's tokenizer: Hugging Face `tokenizers` built from `tokenizer.json` or from GGUF metadata,
//! plus the special ids (BOS, stop ids, pad) and the chat template that go with the model.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use super::chat::ChatTemplate;
use super::gguf_vocab;
use crate::model::gguf::Gguf;
use crate::{Error, Result};

/// Token texts llama.cpp also treats as end of generation when they are in the vocabulary
/// (`llama-vocab.cpp`, `special_eog_ids`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// A tokenizer with its model's special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    /// The file the chat template was read from (named in template errors).
    chat_template_source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {e}", path.display()))
}

/// Runs a call into the `tokenizers` crate, turning a panic into an error naming the file: a
/// tokenizer.json that deserializes can still be inconsistent (e.g. a post-processor template naming a
/// special token it does not define), and the crate then panics while encoding.
fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> tokenizers::Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| tok_err(path, format!("{what}: {e}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(tok_err(
                path,
                format!("{what}: the tokenizer is inconsistent (`tokenizers` panicked: {msg})"),
            ))
        }
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": "..."}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| Error::Config { path: path.to_path_buf(), message: format!("invalid JSON: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl Tokenizer {
    /// Load `tokenizer.json`, plus `tokenizer_config.json`, `generation_config.json` and
    /// `chat_template.jinja` from the same folder when present (BOS/EOS/pad, stop ids, chat template).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut inner =
            guarded(path, "not a valid tokenizer.json", || tokenizers::Tokenizer::from_str(&text))?;
        // Some tokenizer.json files pad or truncate to a fixed length (all-MiniLM-L6-v2: 128); callers
        // batch and truncate themselves, so ids are always exactly the text's tokens.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| tok_err(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let gen_config = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);

        let id_of = |text: Option<String>| text.and_then(|t| inner.token_to_id(&t));
        let bos_id = gen_config["bos_token_id"]
            .as_u64()
            .map(|v| v as u32)
            .or_else(|| id_of(token_text(config.get("bos_token"))));
        let pad_id = gen_config["pad_token_id"]
            .as_u64()
            .map(|v| v as u32)
            .or_else(|| id_of(token_text(config.get("pad_token"))));
        let mut eos_ids: Vec<u32> = id_of(token_text(config.get("eos_token"))).into_iter().collect();
        match &gen_config["eos_token_id"] {
            Value::Number(n) => eos_ids.extend(n.as_u64().map(|v| v as u32)),
            Value::Array(a) => eos_ids.extend(a.iter().filter_map(|v| v.as_u64().map(|v| v as u32))),
            _ => {}
        }
        let jinja_path = dir.join("chat_template.jinja");
        let jinja = std::fs::read_to_string(&jinja_path).ok();
        let chat_template_source =
            if jinja.is_some() { jinja_path } else { dir.join("tokenizer_config.json") };
        let chat_template = match jinja {
            Some(t) => Some(t),
            None => match config.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str().map(str::to_string)),
                _ => None,
            },
        };
        let mut t = Tokenizer {
            inner,
            source: path.to_path_buf(),
            bos_id,
            eos_ids,
            pad_id,
            // tokenizer.json's own post-processor adds BOS/EOS where the model wants them.
            add_bos: false,
            add_eos: false,
            chat_template,
            chat_template_source,
        };
        t.finish_eos_ids();
        t.probe()?;
        Ok(t)
    }

    /// Rebuild the tokenizer from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let built = gguf_vocab::build(g)?;
        let text = serde_json::to_string(&built.json).map_err(|e| tok_err(g.path(), e))?;
        let inner = guarded(g.path(), "cannot build the tokenizer from GGUF metadata", || {
            tokenizers::Tokenizer::from_str(&text)
        })?;
        let n = g.get_str_array("tokenizer.ggml.tokens")?.len() as u32;
        let id = |key: &str| -> Result<Option<u32>> {
            match g.opt_u32(key)? {
                Some(v) if v >= n => {
                    Err(Error::format(g.path(), format!("{key} = {v} is outside the {n}-token vocabulary")))
                }
                v => Ok(v),
            }
        };
        let mut eos_ids: Vec<u32> = Vec::new();
        for key in
            ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
        {
            eos_ids.extend(id(key)?);
        }
        let mut t = Tokenizer {
            inner,
            source: g.path().to_path_buf(),
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_ids,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: built.add_bos,
            add_eos: built.add_eos,
            chat_template: g.opt_str("tokenizer.chat_template")?.map(str::to_string),
            chat_template_source: g.path().to_path_buf(),
        };
        if t.add_bos && t.bos_id.is_none() {
            return Err(Error::format(
                g.path(),
                "tokenizer.ggml.add_bos_token is true but there is no bos_token_id",
            ));
        }
        let mut eog: Vec<u32> = t
            .inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, tok)| tok.special && EOG_TEXTS.contains(&tok.content.as_str()))
            .map(|(&i, _)| i)
            .collect();
        eog.sort_unstable();
        t.eos_ids.extend(eog);
        t.finish_eos_ids();
        t.probe()?;
        Ok(t)
    }

    /// Encodes and decodes a short text once, so a tokenizer that cannot work fails when it is loaded.
    fn probe(&self) -> Result<()> {
        let ids = self.encode("Probe: a 1 é\n", true)?;
        self.decode(&ids, false).map(drop)
    }

    fn finish_eos_ids(&mut self) {
        let mut seen = std::collections::HashSet::new();
        self.eos_ids.retain(|i| seen.insert(*i));
    }

    /// Token ids of `text`. With `add_special`, the model's BOS/EOS are added as its tokenizer
    /// would (`tokenizer.json` post-processor, or `tokenizer.ggml.add_bos_token`). Special-token
    /// texts inside `text` (e.g. `<|im_start|>`) always map to their ids.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = guarded(&self.source, "encoding", || self.inner.encode(text, add_special))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special {
            if let Some(b) = self.bos_id.filter(|_| self.add_bos)
                && ids.first() != Some(&b)
            {
                ids.insert(0, b);
            }
            if let Some(e) = self.eos_ids.first().copied().filter(|_| self.add_eos) {
                ids.push(e);
            }
        }
        Ok(ids)
    }

    /// Text of `ids`; with `skip_special`, special (control) tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let size = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= size) {
            return Err(tok_err(
                &self.source,
                format!("token id {bad} is outside the {size}-token vocabulary"),
            ));
        }
        guarded(&self.source, "decoding", || self.inner.decode(ids, skip_special))
    }

    /// One past the largest token id (base vocabulary and added tokens): the embedding rows a model
    /// needs at least.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1)
    }

    /// Id of token text `token` (in the vocabulary's own alphabet, e.g. `Ġthe` for byte-level BPE).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Text of token `id` in the vocabulary's alphabet.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Every id that ends generation: EOS first, then EOT/EOM, `generation_config.json`'s
    /// `eos_token_id` list and (GGUF) llama.cpp's end-of-generation texts, without duplicates.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Padding id, if the model has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The Jinja chat template shipped with the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The chat template compiled, with this tokenizer's BOS and EOS texts; `None` without a template.
    pub fn chat_template_renderer(&self) -> Result<Option<ChatTemplate>> {
        let Some(src) = self.chat_template() else { return Ok(None) };
        let bos = self.bos_id.and_then(|i| self.id_to_token(i));
        let eos = self.eos_ids.first().and_then(|&i| self.id_to_token(i));
        ChatTemplate::new(src, bos.as_deref(), eos.as_deref()).map(Some).map_err(|e| match e {
            Error::Template(m) => Error::Template(format!("{}: {m}", self.chat_template_source.display())),
            other => other,
        })
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
