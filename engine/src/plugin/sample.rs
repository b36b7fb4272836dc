//! Building plugin [`Sample`]s from data set rows (JSON objects, as in a JSONL file), and reading the
//! rows of a JSONL file.

use std::io::BufRead;
use std::path::Path;

use super::Sample;
use crate::{Error, Result};

/// The rows of a JSONL data set: `(line number, row)` for every non-blank line, in file order. Every
/// error names the file and the line (`data.jsonl: line 12: ...`): a line that is not UTF-8, not JSON or
/// not a JSON object.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(|e| Error::io(path, e))? == 0 {
            break;
        }
        let bad = |m: String| Error::format(path, format!("line {line_no}: {m}"));
        let line = std::str::from_utf8(&buf).map_err(|e| bad(format!("not UTF-8 ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if !row.is_object() {
            return Err(bad("a row must be a JSON object".into()));
        }
        rows.push((line_no, row));
    }
    Ok(rows)
}

/// A sample from a JSON row: `prompt` and `completion` (strings, required), `reference` and `language`
/// (strings, optional); every other field goes into `fields` as its JSON text. `what` names the row in
/// errors (e.g. `data.jsonl:12`).
pub fn sample_from_json(row: &serde_json::Value, what: &str) -> Result<Sample> {
    let obj = row.as_object().ok_or_else(|| Error::Input(format!("{what}: a row must be a JSON object")))?;
    let text = |key: &str, required: bool| -> Result<Option<String>> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) if !required => Ok(None),
            None | Some(serde_json::Value::Null) => Err(Error::Input(format!("{what}: missing `{key}`"))),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::Input(format!("{what}: `{key}` must be a string, found {other}"))),
        }
    };
    let fields = obj
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "prompt" | "completion" | "reference" | "language"))
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    Ok(Sample {
        prompt: text("prompt", true)?.unwrap_or_default(),
        completion: text("completion", true)?.unwrap_or_default(),
        reference: text("reference", false)?,
        language: text("language", false)?,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_fields_are_split_out() {
        let row =
            serde_json::json!({"prompt": "p", "completion": "c", "language": "fr", "group": 3, "tag": "x"});
        let s = sample_from_json(&row, "row 1").unwrap();
        assert_eq!((s.prompt.as_str(), s.completion.as_str()), ("p", "c"));
        assert_eq!((s.reference, s.language.as_deref()), (None, Some("fr")));
        assert_eq!(
            s.fields,
            vec![("group".to_string(), "3".to_string()), ("tag".to_string(), "\"x\"".to_string())]
        );
        let e = sample_from_json(&serde_json::json!({"prompt": "p"}), "row 2").unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("completion"), "{e}");
        let e = sample_from_json(&serde_json::json!({"prompt": 1, "completion": ""}), "row 3").unwrap_err();
        assert!(e.to_string().contains("`prompt` must be a string"), "{e}");
    }
}
