//! Building plugin [`Sample`]s from data set rows (JSON objects, as in a JSONL file).

use super::Sample;
use crate::{Error, Result};

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
