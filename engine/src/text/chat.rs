//! Hugging Face chat templates (Jinja) rendered with minijinja, as `transformers`' `apply_chat_template`.
//!
//! The environment mirrors transformers' `_compile_jinja_template`: `trim_blocks` and
//! `lstrip_blocks` on, loop controls (`break`/`continue`), Python string and dict methods
//! (`.strip()`, `.startswith()`, `.items()`, … through minijinja-contrib's pycompat), and the globals
//! `raise_exception(message)`, `strftime_now(format)` and a `tojson` filter that writes JSON as
//! Python's `json.dumps(ensure_ascii=False)` does. The context holds `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, and `tools = documents = None`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::strftime::strftime_utc_now;
use crate::{Error, Result};

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

const NAME: &str = "chat_template";

fn template_error(e: minijinja::Error) -> Error {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let _ = write!(msg, ": {s}");
        src = s.source();
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compile `source`; `bos_token` / `eos_token` are the strings the template sees (empty if `None`).
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
            },
        );
        env.add_function("strftime_now", |format: String| strftime_utc_now(&format));
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string()).map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages`; with `add_generation_prompt` the template appends the assistant header.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// As [`ChatTemplate::render`], with extra context variables (e.g. `tools`, `enable_thinking`)
    /// that override the defaults.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("bos_token".into(), Value::from(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.clone()));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        for (k, v) in extra {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        let tmpl = self.env.get_template(NAME).map_err(template_error)?;
        tmpl.render(Value::from(ctx)).map_err(template_error)
    }
}

/// The `tojson` filter as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=…,
/// sort_keys=…)` with Python's separators (`", "` and `": "`, or `","` when indenting).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    py_json(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn py_json(
    v: &Value,
    o: &JsonOpts,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = o.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    let item_sep = if o.indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match v.as_i64() {
            Some(i) if v.is_integer() => write!(out, "{i}").expect("write to String"),
            _ => out.push_str(&py_float(f64::try_from(v.clone()).unwrap_or(f64::NAN))),
        },
        ValueKind::String => py_str(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                py_json(item, o, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                py_str(&k.to_string(), o.ensure_ascii, out);
                out.push_str(": ");
                py_json(&v.get_item(k)?, o, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialise a value of kind {}", v.kind()),
            ));
        }
    }
    Ok(())
}

/// A JSON string literal as Python's `json.dumps` writes it.
fn py_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    write!(out, "\\u{unit:04x}").expect("write to String");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it (`1.0`, `1e-05`, `1e+16`, `NaN`, `Infinity`).
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let s = format!("{f:?}");
    match s.split_once('e') {
        None => s,
        Some((mant, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mant}e{sign}{digits:0>2}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, msgs: &[ChatMessage], gen_prompt: bool) -> Result<String> {
        ChatTemplate::new(src, Some("<s>"), Some("</s>"))?.render(msgs, gen_prompt)
    }

    #[test]
    fn python_methods_and_hf_globals() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m['content'].strip().upper() }}|{{ m.role.startswith('us') }}\n{% endfor %}{% if add_generation_prompt %}GO{% endif %}{{ eos_token }}";
        let out = render(src, &[ChatMessage::new("user", "  hi  ")], true).unwrap();
        assert_eq!(out, "<s>HI|True\nGO</s>"); // Jinja2 prints Python booleans
    }

    #[test]
    fn raise_exception_becomes_template_error() {
        let src =
            "{% if messages[0].role != 'system' %}{{ raise_exception('need a system turn') }}{% endif %}";
        let err = render(src, &[ChatMessage::new("user", "x")], false).unwrap_err();
        assert!(matches!(&err, Error::Template(m) if m.contains("need a system turn")), "{err}");
    }

    #[test]
    fn syntax_error_is_reported() {
        assert!(matches!(ChatTemplate::new("{% for %}", None, None), Err(Error::Template(_))));
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"x": {"b": 1, "a": [1.5, "é\n", null, true], "c": 1e-5, "d": {}}}"#)
                .unwrap();
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x.a | tojson(indent=2) }}", None, None).unwrap();
        let out = t.render_with(&[], false, &extra).unwrap();
        // Python: json.dumps(x, ensure_ascii=False) and json.dumps(x["a"], ensure_ascii=False, indent=2)
        assert_eq!(
            out,
            "{\"b\": 1, \"a\": [1.5, \"é\\n\", null, true], \"c\": 1e-05, \"d\": {}}|[\n  1.5,\n  \"é\\n\",\n  null,\n  true\n]"
        );
    }

    #[test]
    fn loop_controls_and_trim_blocks() {
        let src = "{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n{{ m.content }}\n{% endfor %}";
        let msgs = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        assert_eq!(render(src, &msgs, false).unwrap(), "a\n");
    }

    #[test]
    fn py_float_repr() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(-2.5e-7), "-2.5e-07");
    }
}
