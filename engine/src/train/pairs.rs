//! Preference pairs (prompt, chosen, rejected, optional language) from a JSONL file or a JSON array,
//! for the reward model and DPO. Every bad line is an error naming the file and line (item, for a JSON
//! array); nothing is dropped silently.
//!
//! Formats, detected per row (other keys are ignored):
//! - text, TRL's standard preference format: `{"prompt": "…", "chosen": "…", "rejected": "…"}`; the
//!   prompt may be left out (implicit prompt: each side is the whole text);
//! - conversational, TRL's: `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`;
//!   without `prompt`, the messages `chosen` and `rejected` share from the start are the prompt;
//! - LLaMA-Factory's (sharegpt) pairwise format: `{"conversations": [{"from": "human", "value": "…"}, …],
//!   "chosen": {"from": "gpt", "value": "…"}, "rejected": {"from": "gpt", "value": "…"}}`, with an optional
//!   `system` string (roles: `human` → user, `gpt` → assistant, `system`).
//!
//! `language` (a string) tags the pair for per-language metrics. A side missing or empty, or both sides
//! the same, is an error: there is nothing to prefer.
//!
//! [`render_pairs`] turns chat rows into text with the model's chat template, as TRL's
//! `maybe_apply_chat_template` does: the prompt rendered with the generation prompt, each side the rest of
//! the whole conversation's rendering.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::plugin::read_jsonl;
use crate::text::{ChatMessage, ChatTemplate, Tokenizer};
use crate::train::data::{kind as json_kind, messages as parse_messages, render_chat};
use crate::{Error, Result};

/// Where a pair came from in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairOrigin {
    /// 1-based line of a JSONL file.
    Line(usize),
    /// 1-based item of a JSON array file.
    Item(usize),
}

impl std::fmt::Display for PairOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairOrigin::Line(n) => write!(f, "line {n}"),
            PairOrigin::Item(n) => write!(f, "item {n}"),
        }
    }
}

/// The content of one pair, before any chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairContent {
    /// Plain text; `prompt` is empty for an implicit prompt.
    Text { prompt: String, chosen: String, rejected: String },
    /// Messages: the prompt's, and each side's (ending with the assistant's answer).
    Chat { prompt: Vec<ChatMessage>, chosen: Vec<ChatMessage>, rejected: Vec<ChatMessage> },
}

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    pub content: PairContent,
    /// The `language` field, if the row has one.
    pub language: Option<String>,
    pub origin: PairOrigin,
}

/// A pair as text: `prompt + chosen` and `prompt + rejected` are the two inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairTexts {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Rendered with a chat template (the text carries the template's special tokens: tokenize it
    /// without adding more).
    pub chat: bool,
}

/// The formats, for errors.
pub const PAIR_FORMATS: &str = "{\"prompt\": \"…\", \"chosen\": \"…\", \"rejected\": \"…\"}, {\"prompt\": \
     [messages], \"chosen\": [messages], \"rejected\": [messages]} or LLaMA-Factory's {\"conversations\": \
     [{\"from\": \"human\", \"value\": \"…\"}], \"chosen\": {\"from\": \"gpt\", \"value\": \"…\"}, \"rejected\": {…}}";

/// A LLaMA-Factory message `{"from": …, "value": …}` as a chat message.
fn sharegpt_message(v: &Value, key: &str) -> std::result::Result<ChatMessage, String> {
    let (Some(from), Some(value)) =
        (v.get("from").and_then(Value::as_str), v.get("value").and_then(Value::as_str))
    else {
        return Err(format!("`{key}`: expected {{\"from\": \"…\", \"value\": \"…\"}} with string values"));
    };
    let role = match from {
        "human" | "user" => "user",
        "gpt" | "assistant" => "assistant",
        "system" => "system",
        other => {
            return Err(format!(
                "`{key}`: role `from` = {other:?}; babelrl reads `human`, `gpt` and `system` turns (tool calls \
                 and observations are not supported in preference pairs)"
            ));
        }
    };
    Ok(ChatMessage::new(role, value))
}

/// Checks a chat side: non-empty, ending with the assistant.
fn check_side(side: &[ChatMessage], key: &str) -> std::result::Result<(), String> {
    match side.last() {
        None => Err(format!("`{key}` is empty: a preference pair needs both answers")),
        Some(m) if m.role != "assistant" => Err(format!(
            "`{key}` ends with a `{}` message, not `assistant`: each side is the assistant's answer",
            m.role
        )),
        Some(_) if side.iter().all(|m| m.content.is_empty()) => {
            Err(format!("`{key}` is empty: a preference pair needs both answers"))
        }
        Some(_) => Ok(()),
    }
}

/// The content of one row; the error says what is wrong with it.
pub fn parse_pair(row: &Value) -> std::result::Result<PairContent, String> {
    let Value::Object(obj) = row else { return Err("a row must be a JSON object".into()) };
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let (chosen, rejected) = match (get("chosen"), get("rejected")) {
        (Some(c), Some(r)) => (c, r),
        (None, None) => return Err(format!("no `chosen` nor `rejected`: expected {PAIR_FORMATS}")),
        (None, Some(_)) => return Err("no `chosen`: a preference pair needs `chosen` and `rejected`".into()),
        (Some(_), None) => {
            return Err("no `rejected`: a preference pair needs `chosen` and `rejected`".into());
        }
    };
    let content = if let Some(conv) = get("conversations") {
        let Value::Array(items) = conv else {
            return Err(format!("`conversations` must be a list of turns, found {}", json_kind(conv)));
        };
        let mut prompt = Vec::with_capacity(items.len() + 1);
        if let Some(system) = get("system") {
            let Value::String(s) = system else {
                return Err(format!("`system` must be a string, found {}", json_kind(system)));
            };
            prompt.push(ChatMessage::new("system", s.as_str()));
        }
        for (i, m) in items.iter().enumerate() {
            prompt.push(sharegpt_message(m, &format!("conversations[{i}]"))?);
        }
        if prompt.last().is_none_or(|m| m.role == "assistant") {
            return Err("`conversations` must end with the user's turn the two answers reply to".into());
        }
        let side = |v: &Value, key: &str| match v {
            Value::Object(_) => Ok(vec![sharegpt_message(v, key)?]),
            other => Err(format!(
                "`{key}` must be a {{\"from\": \"gpt\", \"value\": \"…\"}} object in LLaMA-Factory's format, found {}",
                json_kind(other)
            )),
        };
        PairContent::Chat { prompt, chosen: side(chosen, "chosen")?, rejected: side(rejected, "rejected")? }
    } else {
        match (get("prompt"), chosen, rejected) {
            (None | Some(Value::String(_)), Value::String(c), Value::String(r)) => {
                let prompt = get("prompt").and_then(Value::as_str).unwrap_or("").to_string();
                PairContent::Text { prompt, chosen: c.clone(), rejected: r.clone() }
            }
            (None | Some(Value::Array(_)), Value::Array(_), Value::Array(_)) => {
                let mut c = parse_messages(chosen, "chosen")?;
                let mut r = parse_messages(rejected, "rejected")?;
                let prompt = match get("prompt") {
                    Some(p) => parse_messages(p, "prompt")?,
                    None => {
                        // Implicit prompt: the messages both sides share from the start.
                        let n = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
                        let n = n.min(c.len().saturating_sub(1)).min(r.len().saturating_sub(1));
                        let p = c[..n].to_vec();
                        c.drain(..n);
                        r.drain(..n);
                        p
                    }
                };
                PairContent::Chat { prompt, chosen: c, rejected: r }
            }
            (p, c, r) => {
                return Err(format!(
                    "`prompt`, `chosen` and `rejected` must all be strings or all lists of messages; found \
                     {}, {} and {}",
                    p.map_or("nothing", json_kind),
                    json_kind(c),
                    json_kind(r)
                ));
            }
        }
    };
    match &content {
        PairContent::Text { chosen, rejected, .. } => {
            for (key, side) in [("chosen", chosen), ("rejected", rejected)] {
                if side.is_empty() {
                    return Err(format!("`{key}` is empty: a preference pair needs both answers"));
                }
            }
            if chosen == rejected {
                return Err(
                    "`chosen` and `rejected` are the same text: there is nothing to prefer; drop the \
                            pair or fix one side"
                        .into(),
                );
            }
        }
        PairContent::Chat { chosen, rejected, .. } => {
            check_side(chosen, "chosen")?;
            check_side(rejected, "rejected")?;
            if chosen == rejected {
                return Err(
                    "`chosen` and `rejected` are the same messages: there is nothing to prefer; drop \
                            the pair or fix one side"
                        .into(),
                );
            }
        }
    }
    Ok(content)
}

/// The `language` of a row, if any.
fn language_of(row: &Value) -> std::result::Result<Option<String>, String> {
    match row.get("language") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::String(_)) => {
            Err("`language` is empty: give a language code or leave the field out".into())
        }
        Some(v) => Err(format!("`language` must be a string, found {}", json_kind(v))),
    }
}

/// The rows of `path`: a JSON array (a file whose first non-blank character is `[`, as LLaMA-Factory
/// ships its data) or JSONL.
fn read_rows(path: &Path) -> Result<Vec<(PairOrigin, Value)>> {
    let mut head = [0u8; 4096];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).map_err(|e| Error::io(path, e))?;
    if head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a valid JSON array: {e}")))?;
        let Value::Array(items) = v else { unreachable!("starts with `[`") };
        return Ok(items.into_iter().enumerate().map(|(i, v)| (PairOrigin::Item(i + 1), v)).collect());
    }
    Ok(read_jsonl(path)?.into_iter().map(|(line, v)| (PairOrigin::Line(line), v)).collect())
}

/// Reads the preference pairs of `path` (JSONL, or a JSON array). A row that fits no format, lacks a
/// side, or has two equal sides is an error naming the file and line; so is a file without pairs.
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>> {
    let rows = read_rows(path)?;
    let mut pairs = Vec::with_capacity(rows.len());
    for (origin, row) in rows {
        let bad = |m: String| Error::format(path, format!("{origin}: {m}"));
        let content = parse_pair(&row).map_err(bad)?;
        let language = language_of(&row).map_err(bad)?;
        pairs.push(PreferencePair { content, language, origin });
    }
    if pairs.is_empty() {
        return Err(Error::format(
            path,
            format!("no preference pairs in the file; expected rows of {PAIR_FORMATS}"),
        ));
    }
    Ok(pairs)
}

impl PreferencePair {
    /// The pair as text: a text pair as it is, a chat pair rendered with `template` (an error when the
    /// pair has messages and there is no template).
    pub fn render(&self, template: Option<&ChatTemplate>) -> std::result::Result<PairTexts, String> {
        match &self.content {
            PairContent::Text { prompt, chosen, rejected } => Ok(PairTexts {
                prompt: prompt.clone(),
                chosen: chosen.clone(),
                rejected: rejected.clone(),
                chat: false,
            }),
            PairContent::Chat { prompt, chosen, rejected } => {
                let template = template.ok_or(
                    "chat messages need the model's chat template and this model has none: give the pair \
                     as {\"prompt\": \"…\", \"chosen\": \"…\", \"rejected\": \"…\"} text",
                )?;
                let (p, c) = render_chat(template, prompt, chosen)?;
                let (p2, r) = render_chat(template, prompt, rejected)?;
                debug_assert_eq!(p, p2);
                Ok(PairTexts { prompt: p, chosen: c, rejected: r, chat: true })
            }
        }
    }
}

/// Every pair of `pairs` (read from `path`) as text, chat pairs rendered with `tok`'s chat template;
/// errors name the file and line.
pub fn render_pairs(path: &Path, pairs: &[PreferencePair], tok: &Tokenizer) -> Result<Vec<PairTexts>> {
    let mut template: Option<ChatTemplate> = None;
    if pairs.iter().any(|p| matches!(p.content, PairContent::Chat { .. })) {
        template = tok.chat_template_renderer()?;
    }
    pairs
        .iter()
        .map(|p| p.render(template.as_ref()).map_err(|m| Error::format(path, format!("{}: {m}", p.origin))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    #[test]
    fn each_format_is_recognised() {
        assert_eq!(
            parse_pair(&json!({"prompt": "Q", "chosen": "a", "rejected": "b", "language": "bo"})),
            Ok(PairContent::Text { prompt: "Q".into(), chosen: "a".into(), rejected: "b".into() })
        );
        assert_eq!(
            parse_pair(&json!({"chosen": "Q a", "rejected": "Q b"})),
            Ok(PairContent::Text { prompt: "".into(), chosen: "Q a".into(), rejected: "Q b".into() })
        );
        let u = json!({"role": "user", "content": "Hi"});
        let a = |t: &str| json!({"role": "assistant", "content": t});
        let want = PairContent::Chat {
            prompt: vec![msg("user", "Hi")],
            chosen: vec![msg("assistant", "Hello")],
            rejected: vec![msg("assistant", "Go away")],
        };
        assert_eq!(
            parse_pair(&json!({"prompt": [u], "chosen": [a("Hello")], "rejected": [a("Go away")]})),
            Ok(want.clone())
        );
        // Implicit prompt: the shared start.
        assert_eq!(
            parse_pair(&json!({"chosen": [u, a("Hello")], "rejected": [u, a("Go away")]})),
            Ok(want.clone())
        );
        let lf = json!({
            "conversations": [{"from": "human", "value": "Hi"}],
            "chosen": {"from": "gpt", "value": "Hello"},
            "rejected": {"from": "gpt", "value": "Go away"},
        });
        assert_eq!(parse_pair(&lf), Ok(want));
        let mut with_system = lf.clone();
        with_system["system"] = json!("Be kind.");
        let Ok(PairContent::Chat { prompt, .. }) = parse_pair(&with_system) else { panic!() };
        assert_eq!(prompt, vec![msg("system", "Be kind."), msg("user", "Hi")]);
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        let u = json!({"role": "user", "content": "Hi"});
        let cases = [
            (json!({"prompt": "x", "chosen": "a"}), "no `rejected`"),
            (json!({"prompt": "x", "rejected": "a"}), "no `chosen`"),
            (json!({"prompt": "x", "chosen": "a", "rejected": null}), "no `rejected`"),
            (json!({"prompt": "x"}), "no `chosen` nor `rejected`"),
            (json!({"prompt": "x", "chosen": "a", "rejected": "a"}), "the same text"),
            (json!({"prompt": "x", "chosen": "", "rejected": "a"}), "`chosen` is empty"),
            (json!({"prompt": "x", "chosen": "a", "rejected": 3}), "all be strings or all lists"),
            (
                json!({"prompt": [u], "chosen": [], "rejected": [{"role": "assistant", "content": "b"}]}),
                "`chosen` is empty",
            ),
            (json!({"prompt": [], "chosen": [u], "rejected": [u]}), "ends with a `user` message"),
            (
                json!({"prompt": "x", "chosen": "a", "rejected": "b", "language": 3}),
                "`language` must be a string",
            ),
            (
                json!({"conversations": [{"from": "human", "value": "x"}], "chosen": "a", "rejected": "b"}),
                "LLaMA-Factory",
            ),
            (
                json!({"conversations": [{"from": "observation", "value": "x"}],
                       "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}),
                "\"observation\"",
            ),
            (json!([1]), "JSON object"),
        ];
        for (row, says) in cases {
            let e = parse_pair(&row).and_then(|_| language_of(&row).map(|_| ())).unwrap_err();
            assert!(e.contains(says), "{row}: {e}");
        }
    }

    #[test]
    fn a_file_names_the_bad_line_and_reads_json_arrays() {
        let tmp = tempfile::Builder::new().prefix("babelrl-pairs-").tempdir().unwrap();
        let dir = tmp.path();
        let jsonl = dir.join("p.jsonl");
        std::fs::write(&jsonl, "{\"prompt\": \"x\", \"chosen\": \"a\", \"rejected\": \"b\"}\n\n{\"prompt\": \"x\", \"chosen\": \"a\"}\n").unwrap();
        let e = read_pairs(&jsonl).unwrap_err().to_string();
        assert!(e.contains("p.jsonl") && e.contains("line 3") && e.contains("no `rejected`"), "{e}");
        let array = dir.join("p.json");
        std::fs::write(
            &array,
            " [{\"prompt\": \"x\", \"chosen\": \"a\", \"rejected\": \"b\", \"language\": \"en\"}]",
        )
        .unwrap();
        let pairs = read_pairs(&array).unwrap();
        assert_eq!((pairs[0].origin, pairs[0].language.as_deref()), (PairOrigin::Item(1), Some("en")));
        std::fs::write(&array, "[]").unwrap();
        assert!(read_pairs(&array).unwrap_err().to_string().contains("no preference pairs"));
    }

    #[test]
    fn chat_pairs_render_with_the_template_and_need_one() {
        let src = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}\
                   {% if add_generation_prompt %}<assistant>{% endif %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let pair = PreferencePair {
            content: parse_pair(&json!({
                "conversations": [{"from": "human", "value": "Hi"}],
                "chosen": {"from": "gpt", "value": "Hello"},
                "rejected": {"from": "gpt", "value": "Go"},
            }))
            .unwrap(),
            language: None,
            origin: PairOrigin::Item(1),
        };
        let texts = pair.render(Some(&t)).unwrap();
        assert_eq!(
            (texts.prompt.as_str(), texts.chosen.as_str(), texts.rejected.as_str(), texts.chat),
            ("<user>Hi</s><assistant>", "Hello</s>", "Go</s>", true)
        );
        assert!(pair.render(None).unwrap_err().contains("chat template"));
    }

    #[test]
    fn llamafactory_demo_file_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/preference/llamafactory_dpo_en_demo.json");
        if !path.is_file() {
            return; // only where the shared data is checked out
        }
        let pairs = read_pairs(&path).unwrap();
        assert!(pairs.len() > 100);
        assert!(pairs.iter().all(|p| matches!(p.content, PairContent::Chat { .. })));
    }
}
