//! GRPO prompts from JSONL, in TRL's prompt-only formats, tokenized as the rollouts see them, with the
//! row's other columns kept for the reward plugins; and the run's data order (a seeded permutation per
//! epoch, a pure function of seed and position, so a resume continues exactly).
//!
//! Formats, per line (blank lines skipped):
//! - `{"prompt": "…"}`: the text, encoded with the tokenizer's special tokens (BOS where the model adds
//!   one); plugins see it as the sample's prompt;
//! - `{"prompt": [{"role": …, "content": …}, …]}`: the model's chat template with the generation prompt;
//!   plugins see the last message's content as the prompt.
//!
//! Other columns go to the plugins' [`crate::plugin::Sample`]: `reference` and `language` (strings) to
//! its fields of those names, every other column to `fields` as JSON text.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::Value;

use crate::plugin::{Sample, read_jsonl};
use crate::text::{ChatMessage, ChatTemplate, Tokenizer};
use crate::{Error, Result};

/// One prompt of a GRPO data set.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoPrompt {
    /// The token ids the rollouts continue.
    pub tokens: Vec<u32>,
    /// The prompt as reward plugins see it (the text, or the last chat message's content).
    pub text: String,
    pub reference: Option<String>,
    pub language: Option<String>,
    /// The row's other columns, as JSON text.
    pub fields: Vec<(String, String)>,
    /// 1-based line of the data file.
    pub line: usize,
    /// The chat messages of a chat prompt (`None` for a text prompt), kept so the prompt can be
    /// rephrased and rendered again ([`PromptEncoder::rephrase`]).
    pub messages: Option<Vec<ChatMessage>>,
}

impl GrpoPrompt {
    /// The reward plugins' sample of `completion` to this prompt.
    pub fn sample(&self, completion: &str) -> Sample {
        Sample {
            prompt: self.text.clone(),
            completion: completion.to_string(),
            reference: self.reference.clone(),
            language: self.language.clone(),
            fields: self.fields.clone(),
        }
    }

    /// The column `key` as text: a JSON string's contents, any other value as JSON (`None` when the row
    /// has no such column or it is `null`).
    pub fn field_text(&self, key: &str) -> Option<String> {
        let (_, json) = self.fields.iter().find(|(k, _)| k == key)?;
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Null) => None,
            Ok(Value::String(s)) => Some(s),
            _ => Some(json.clone()),
        }
    }
}

/// Turns prompts into the token ids the rollouts continue: text with the tokenizer's special tokens (no
/// trailing EOS), chat messages through the model's chat template with the generation prompt.
pub struct PromptEncoder<'t> {
    tok: &'t Tokenizer,
    eos: Option<u32>,
    /// Whether encoding with special tokens also appends EOS (a prompt must not end with one).
    adds_eos: bool,
    template: Option<ChatTemplate>,
}

impl<'t> PromptEncoder<'t> {
    pub fn new(tok: &'t Tokenizer) -> Result<PromptEncoder<'t>> {
        let eos = tok.eos_ids().first().copied();
        let adds_eos = match eos {
            Some(eos) => {
                tok.encode("a", true)?.last() == Some(&eos) && tok.encode("a", false)?.last() != Some(&eos)
            }
            None => false,
        };
        Ok(PromptEncoder { tok, eos, adds_eos, template: None })
    }

    /// The ids of a text prompt.
    pub fn text(&self, text: &str) -> Result<Vec<u32>> {
        let mut t = self.tok.encode(text, true)?;
        if self.adds_eos && t.last() == self.eos.as_ref() {
            t.pop();
        }
        Ok(t)
    }

    /// The ids of a chat prompt; `Ok(None)` when the model has no chat template.
    pub fn chat(&mut self, messages: &[ChatMessage]) -> Result<Option<Vec<u32>>> {
        if self.template.is_none() {
            match self.tok.chat_template_renderer()? {
                Some(t) => self.template = Some(t),
                None => return Ok(None),
            }
        }
        let rendered = self.template.as_ref().expect("set above").render(messages, true)?;
        Ok(Some(self.tok.encode(&rendered, false)?))
    }

    /// `p` with its prompt rewritten by `rewrite` (a text prompt's text; a chat prompt's last `user`
    /// message, or its last message when none is a user's) and encoded again, its `language` set to
    /// `language`. The result's `text` is what reward plugins see as its prompt: the rewritten text, or
    /// the last chat message's content.
    pub fn rephrase(
        &mut self,
        p: &GrpoPrompt,
        language: &str,
        rewrite: impl FnOnce(&str) -> String,
    ) -> Result<GrpoPrompt> {
        let (tokens, text, messages) = match &p.messages {
            None => {
                let text = rewrite(&p.text);
                (self.text(&text)?, text, None)
            }
            Some(messages) => {
                let mut messages = messages.clone();
                let at = messages.iter().rposition(|m| m.role == "user").unwrap_or(messages.len() - 1);
                messages[at].content = rewrite(&messages[at].content);
                let tokens = self.chat(&messages)?.ok_or_else(|| {
                    Error::Input(
                        "a chat prompt needs the model's chat template and this model has none".into(),
                    )
                })?;
                // Plugins see the last message's content as the prompt, as for the original.
                let shown = messages.last().map(|m| m.content.clone()).unwrap_or_default();
                (tokens, shown, Some(messages))
            }
        };
        Ok(GrpoPrompt { tokens, text, language: Some(language.to_string()), messages, ..p.clone() })
    }
}

/// An optional string column.
fn text_column(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{key}` must be a string (plugins receive it as text), found {other}")),
    }
}

/// Reads the prompts of the JSONL file at `path`, tokenized with `tok`. A line that is not a JSON object,
/// has no `prompt`, needs a chat template the model lacks, or renders to more than `max_prompt_length`
/// tokens is an error naming the file and line; so is a file without prompts.
pub fn load_grpo_prompts(path: &Path, tok: &Tokenizer, max_prompt_length: usize) -> Result<Vec<GrpoPrompt>> {
    let rows = read_jsonl(path)?;
    let mut encoder = PromptEncoder::new(tok)?;
    let mut prompts = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let bad = |m: String| Error::format(path, format!("line {line}: {m}"));
        let obj = row.as_object().ok_or_else(|| bad("a line must be a JSON object".into()))?;
        let (tokens, text, messages) = match obj.get("prompt") {
            Some(Value::String(p)) if p.is_empty() => return Err(bad("`prompt` is empty".into())),
            Some(Value::String(p)) => (encoder.text(p)?, p.clone(), None),
            Some(Value::Array(items)) => {
                let messages: Vec<ChatMessage> = items
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        serde_json::from_value::<ChatMessage>(m.clone()).map_err(|e| {
                            bad(format!(
                                "`prompt[{i}]`: expected {{\"role\": \"…\", \"content\": \"…\"}} ({e})"
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                let Some(last) = messages.last() else { return Err(bad("`prompt` is an empty list".into())) };
                let text = last.content.clone();
                let tokens = encoder.chat(&messages)?.ok_or_else(|| {
                    bad("chat messages need the model's chat template and this model has none: give the \
                         prompt as text, {\"prompt\": \"…\"}"
                        .into())
                })?;
                (tokens, text, Some(messages))
            }
            Some(other) => {
                return Err(bad(format!("`prompt` must be a string or a list of messages, found {other}")));
            }
            None => {
                return Err(bad(
                    "no `prompt`: a GRPO data line is {\"prompt\": \"…\"} or {\"prompt\": [messages]} (other \
                     columns go to the reward plugins)"
                        .into(),
                ));
            }
        };
        if tokens.is_empty() {
            return Err(bad("the prompt encodes to no tokens".into()));
        }
        if tokens.len() > max_prompt_length {
            return Err(bad(format!(
                "the prompt has {} tokens; max_prompt_length is {max_prompt_length}: shorten it or raise \
                 [grpo] max_prompt_length",
                tokens.len()
            )));
        }
        let reference = text_column(obj, "reference").map_err(bad)?;
        let language = text_column(obj, "language").map_err(bad)?;
        let fields = obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "prompt" | "reference" | "language"))
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        prompts.push(GrpoPrompt { tokens, text, reference, language, fields, line, messages });
    }
    if prompts.is_empty() {
        return Err(Error::format(
            path,
            "empty data set: the file holds no prompts; add lines {\"prompt\": \"…\"}",
        ));
    }
    Ok(prompts)
}

/// The order a trainer draws its data in (GRPO prompts, SFT examples, reward-model and DPO pairs): epoch
/// `e` is a permutation of the data seeded by `seed` and `e` (the identity without shuffling), so the
/// item at a position is a function of the position alone and a resumed run draws the same items.
#[derive(Debug, Clone)]
pub struct PromptOrder {
    len: usize,
    seed: u64,
    shuffle: bool,
    epoch: Option<(u64, Vec<usize>)>,
}

impl PromptOrder {
    /// The shuffled order over `len` items (at least 1).
    pub fn new(len: usize, seed: u64) -> PromptOrder {
        PromptOrder::with_shuffle(len, seed, true)
    }

    /// The order over `len` items (at least 1), shuffled each epoch or not.
    pub fn with_shuffle(len: usize, seed: u64, shuffle: bool) -> PromptOrder {
        PromptOrder { len: len.max(1), seed, shuffle, epoch: None }
    }

    /// The index of the prompt at position `k` (0-based, over all epochs).
    pub fn at(&mut self, k: u64) -> usize {
        let n = self.len as u64;
        let epoch = k / n;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.len).collect();
            if self.shuffle {
                let seed = self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            }
            self.epoch = Some((epoch, order));
        }
        self.epoch.as_ref().expect("set above").1[(k % n) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_is_a_permutation_per_epoch_and_a_function_of_position() {
        let mut a = PromptOrder::new(5, 7);
        let first: Vec<usize> = (0..10).map(|k| a.at(k)).collect();
        let mut e0 = first[..5].to_vec();
        e0.sort();
        assert_eq!(e0, vec![0, 1, 2, 3, 4]);
        assert_ne!(first[..5], first[5..], "each epoch is shuffled afresh");
        // A fresh order asked from the middle agrees.
        let mut b = PromptOrder::new(5, 7);
        assert_eq!((6..10).map(|k| b.at(k)).collect::<Vec<_>>(), first[6..]);
        assert_ne!((0..10).map(|k| PromptOrder::new(5, 8).at(k)).collect::<Vec<_>>(), first);
        let mut plain = PromptOrder::with_shuffle(5, 7, false);
        assert_eq!((0..7).map(|k| plain.at(k)).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 0, 1]);
    }
}
