//! SFT data from JSONL, in TRL's dataset formats, tokenized into (prompt, completion) token ids: the loss
//! covers the completion only. Every bad line is an error naming the file and line; nothing is truncated.
//!
//! Formats, detected per line (blank lines are skipped; other keys on a line are ignored):
//! - text prompt-completion, `{"prompt": "…", "completion": "…"}`: the prompt is encoded with the
//!   tokenizer's special tokens (BOS where the model adds one), the completion without, and EOS is
//!   appended to the completion (as TRL appends `eos_token`) unless it already ends with it;
//! - conversational, `{"messages": [{"role": …, "content": …}, …]}` ending with an `assistant` message:
//!   the prompt is the model's chat template on the earlier messages with the generation prompt, the
//!   completion is the rest of the template's rendering of the whole conversation (the template decides
//!   the end-of-turn tokens; nothing is added);
//! - conversational prompt-completion, `{"prompt": [messages], "completion": [messages]}`: the same,
//!   with the prompt's messages and the prompt and completion's together.
//!
//! Prompt and completion are tokenized separately, so the prompt's ids are exactly those the model sees
//! at generation time.

use std::path::Path;

use serde_json::Value;

use crate::plugin::read_jsonl;
use crate::text::{ChatMessage, ChatTemplate, Tokenizer};
use crate::{Error, Result};

/// One training sequence: `prompt ++ completion`, with the loss on the completion's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    /// 1-based line of the data file (for errors and metrics).
    pub line: usize,
}

impl SftExample {
    /// Tokens of the whole sequence.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.completion.len()
    }

    /// Whether the sequence has no tokens (never true of a loaded example).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One data line, before tokenization.
#[derive(Debug, Clone, PartialEq)]
enum Line {
    /// Text prompt-completion.
    Text { prompt: String, completion: String },
    /// Chat: the prompt's messages and the completion's (the last from the assistant).
    Chat { prompt: Vec<ChatMessage>, completion: Vec<ChatMessage> },
}

const NO_COMPLETION: &str = "no completion: the line has a prompt but no completion, nothing to learn; give it a non-empty \
     `completion` (or end `messages` with the assistant's answer)";

/// The three formats, for errors.
const FORMATS: &str = "{\"prompt\": \"…\", \"completion\": \"…\"}, {\"messages\": [{\"role\": …, \
                       \"content\": …}, …]} or {\"prompt\": [messages], \"completion\": [messages]}";

/// The JSON kind of `v`, for errors (the value itself may be long).
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The chat messages of field `key`.
pub(crate) fn messages(v: &Value, key: &str) -> std::result::Result<Vec<ChatMessage>, String> {
    let Value::Array(items) = v else {
        return Err(format!("`{key}` must be a list of messages, found {})", kind(v)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            serde_json::from_value::<ChatMessage>(m.clone()).map_err(|e| {
                format!(
                    "`{key}[{i}]`: expected {{\"role\": \"…\", \"content\": \"…\"}} with string values ({e})"
                )
            })
        })
        .collect()
}

/// The format of one row and its texts or messages; the error says what is wrong with the line.
fn parse_line(row: &Value) -> std::result::Result<Line, String> {
    let Value::Object(obj) = row else { return Err("a line must be a JSON object".into()) };
    let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let chat = |prompt: Vec<ChatMessage>, completion: Vec<ChatMessage>| {
        match completion.last() {
            None => return Err(NO_COMPLETION.to_string()),
            Some(last) if last.role != "assistant" => {
                return Err(format!(
                    "the last message is from `{}`, not `assistant`: the model learns the assistant's last \
                     answer, so end the conversation with it",
                    last.role
                ));
            }
            Some(_) => {}
        }
        if completion.iter().all(|m| m.content.is_empty()) {
            return Err(NO_COMPLETION.to_string());
        }
        Ok(Line::Chat { prompt, completion })
    };
    match (get("messages"), get("prompt")) {
        (Some(_), _) if get("prompt").is_some() || get("completion").is_some() => {
            Err("the line mixes `messages` with `prompt`/`completion`: use one format per line".into())
        }
        (Some(m), _) => {
            let mut all = messages(m, "messages")?;
            let Some(last) = all.pop() else { return Err("`messages` is empty".into()) };
            chat(all, vec![last])
        }
        (None, Some(Value::String(prompt))) => match get("completion") {
            None => Err(NO_COMPLETION.into()),
            Some(Value::String(c)) if c.is_empty() => Err(NO_COMPLETION.into()),
            Some(Value::String(c)) => Ok(Line::Text { prompt: prompt.clone(), completion: c.clone() }),
            Some(c) => Err(format!("`completion` must be a string as the prompt is, found {}", kind(c))),
        },
        (None, Some(p @ Value::Array(_))) => {
            let prompt = messages(p, "prompt")?;
            let completion = match get("completion") {
                None => return Err(NO_COMPLETION.into()),
                Some(c @ Value::Array(_)) => messages(c, "completion")?,
                Some(c) => {
                    return Err(format!(
                        "`completion` must be a list of messages as the prompt is, found {}",
                        kind(c)
                    ));
                }
            };
            chat(prompt, completion)
        }
        (None, Some(p)) => Err(format!("`prompt` must be a string or a list of messages, found {}", kind(p))),
        (None, None) if get("completion").is_some() => {
            Err(format!("a completion without a prompt: expected {FORMATS}"))
        }
        (None, None) => Err(format!("neither data format: expected {FORMATS}")),
    }
}

/// Renders a chat line with the model's template into (prompt text, completion text): the prompt with
/// the generation prompt, the completion the rest of the whole conversation's rendering.
pub(crate) fn render_chat(
    template: &ChatTemplate,
    prompt: &[ChatMessage],
    completion: &[ChatMessage],
) -> std::result::Result<(String, String), String> {
    let prompt_text = template.render(prompt, true).map_err(|e| e.to_string())?;
    let all: Vec<ChatMessage> = prompt.iter().chain(completion).cloned().collect();
    let full = template.render(&all, false).map_err(|e| e.to_string())?;
    match full.strip_prefix(&prompt_text) {
        Some(rest) if !rest.is_empty() => Ok((prompt_text, rest.to_string())),
        Some(_) => Err(NO_COMPLETION.into()),
        None => {
            // Show where the two renderings part (a few characters each side).
            let at = prompt_text.char_indices().zip(full.chars()).find(|((_, a), b)| a != b);
            let at = at.map_or(prompt_text.len().min(full.len()), |((i, _), _)| i);
            let window = |s: &str| -> String {
                let start = s.floor_char_boundary(at.saturating_sub(20));
                s[start..].chars().take(40).collect()
            };
            Err(format!(
                "the chat template renders the prompt differently from the start of the whole \
                 conversation (prompt alone: {:?}, in the conversation: {:?}), so the completion cannot \
                 be told apart; give this line as {{\"prompt\": \"…\", \"completion\": \"…\"}} text instead",
                window(&prompt_text),
                window(&full)
            ))
        }
    }
}

/// Reads SFT examples from the JSONL file at `path`, tokenized with `tok` (chat lines with its chat
/// template). A line that is not JSON, fits no format, has no completion, needs a chat template the
/// model lacks, or is longer than `max_length` tokens is an error naming the file and line; so is a file
/// without examples.
pub fn load_sft_jsonl(path: &Path, tok: &Tokenizer, max_length: usize) -> Result<Vec<SftExample>> {
    let rows = read_jsonl(path)?;
    let eos = *tok.eos_ids().first().ok_or_else(|| {
        Error::Tokenizer(format!(
            "{}: the model's tokenizer has no EOS token, which SFT appends to completions",
            path.display()
        ))
    })?;
    // Whether encoding with special tokens also appends EOS (a prompt must not end with one).
    let adds_eos = {
        let probe = "a";
        tok.encode(probe, true)?.last() == Some(&eos) && tok.encode(probe, false)?.last() != Some(&eos)
    };
    let mut template: Option<ChatTemplate> = None;
    let mut examples = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let bad = |m: String| Error::format(path, format!("line {line}: {m}"));
        let (prompt, completion) = match parse_line(&row).map_err(bad)? {
            Line::Text { prompt, completion } => {
                let mut p = tok.encode(&prompt, true)?;
                if adds_eos && p.last() == Some(&eos) {
                    p.pop();
                }
                let mut c = tok.encode(&completion, false)?;
                if c.last() != Some(&eos) {
                    c.push(eos);
                }
                (p, c)
            }
            Line::Chat { prompt, completion } => {
                if template.is_none() {
                    template = Some(tok.chat_template_renderer()?.ok_or_else(|| {
                        bad("chat messages need the model's chat template and this model has none: give \
                             the line as {\"prompt\": \"…\", \"completion\": \"…\"} text, or train a model \
                             with a chat template (an instruct model)"
                            .into())
                    })?);
                }
                let t = template.as_ref().expect("set above");
                let (p, c) = render_chat(t, &prompt, &completion).map_err(bad)?;
                (tok.encode(&p, false)?, tok.encode(&c, false)?)
            }
        };
        if prompt.is_empty() {
            return Err(bad("the prompt is empty: the first completion token is predicted from the \
                            tokens before it, so give a prompt"
                .into()));
        }
        let n = prompt.len() + completion.len();
        if n > max_length {
            return Err(bad(format!(
                "{n} tokens; max_length is {max_length}: shorten it or raise [sft] max_length"
            )));
        }
        examples.push(SftExample { prompt, completion, line });
    }
    if examples.is_empty() {
        return Err(Error::format(
            path,
            format!("empty data set: the file holds no examples; add lines of the form {FORMATS}"),
        ));
    }
    Ok(examples)
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
            parse_line(&json!({"prompt": "2+2=", "completion": "4", "id": 7})),
            Ok(Line::Text { prompt: "2+2=".into(), completion: "4".into() })
        );
        let conv = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]});
        assert_eq!(
            parse_line(&conv),
            Ok(Line::Chat {
                prompt: vec![msg("system", "Be brief."), msg("user", "Hi")],
                completion: vec![msg("assistant", "Hello")]
            })
        );
        let pc = json!({"prompt": [{"role": "user", "content": "Hi"}],
                        "completion": [{"role": "assistant", "content": "Hello"}]});
        assert_eq!(
            parse_line(&pc),
            Ok(Line::Chat { prompt: vec![msg("user", "Hi")], completion: vec![msg("assistant", "Hello")] })
        );
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            (json!({"prompt": "x"}), "no completion"),
            (json!({"prompt": "x", "completion": ""}), "no completion"),
            (json!({"prompt": "x", "completion": null}), "no completion"),
            (json!({"prompt": [{"role": "user", "content": "x"}]}), "no completion"),
            (json!({"prompt": [{"role": "user", "content": "x"}], "completion": []}), "no completion"),
            (
                json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}),
                "no completion",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}),
                "from `user`, not `assistant`",
            ),
            (
                json!({"prompt": [{"role": "user", "content": "x"}],
                    "completion": [{"role": "user", "content": "y"}]}),
                "not `assistant`",
            ),
            (json!({"messages": []}), "`messages` is empty"),
            (json!({"messages": [{"role": "user"}]}), "`messages[0]`"),
            (json!({"messages": "hi"}), "`messages` must be a list"),
            (json!({"messages": [], "completion": "x"}), "mixes `messages`"),
            (json!({"prompt": "x", "completion": 4}), "`completion` must be a string"),
            (json!({"prompt": [], "completion": "x"}), "must be a list of messages"),
            (json!({"prompt": 3, "completion": "x"}), "`prompt` must be a string or a list"),
            (json!({"completion": "x"}), "a completion without a prompt"),
            (json!({"text": "x"}), "neither data format"),
            (json!([1, 2]), "JSON object"),
        ];
        for (row, says) in cases {
            let e = parse_line(&row).unwrap_err();
            assert!(e.contains(says), "{row}: {e}");
        }
    }

    #[test]
    fn a_chat_completion_is_the_rendering_past_the_prompt() {
        let src = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}\
                   {% if add_generation_prompt %}<assistant>{% endif %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let (p, c) = render_chat(&t, &[msg("user", "Hi")], &[msg("assistant", "Yo")]).unwrap();
        assert_eq!((p.as_str(), c.as_str()), ("<user>Hi</s><assistant>", "Yo</s>"));
        // A template whose generation prompt is not how it starts the assistant's turn.
        let t = ChatTemplate::new(src.replace("<assistant>{% endif", "<bot>{% endif").as_str(), None, None)
            .unwrap();
        let e = render_chat(&t, &[msg("user", "Hi")], &[msg("assistant", "Yo")]).unwrap_err();
        assert!(e.contains("renders the prompt") && e.contains("<bot>"), "{e}");
    }
}
