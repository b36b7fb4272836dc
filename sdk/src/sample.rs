//! Conveniences on [`Sample`]: constructors for tests and typed access to the JSON-encoded `fields`.

use crate::Sample;
use serde::Serialize;
use serde::de::DeserializeOwned;

impl Sample {
    /// A sample with just a prompt and a completion (no reference, language or fields).
    pub fn new(prompt: impl Into<String>, completion: impl Into<String>) -> Self {
        Sample {
            prompt: prompt.into(),
            completion: completion.into(),
            reference: None,
            language: None,
            fields: Vec::new(),
        }
    }

    /// Sets the reference answer.
    pub fn with_reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }

    /// Sets the target language.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// Adds a data set field, JSON-encoding `value`.
    pub fn with_field(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        let json = serde_json::to_string(&value).unwrap_or_else(|_| "null".to_string());
        self.fields.push((name.into(), json));
        self
    }

    /// The raw JSON text of field `name`, if the data set gave one.
    pub fn field_json(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Field `name` decoded as `T`: `Ok(None)` when absent, `Err` (naming the field) when it does not
    /// decode as `T`.
    pub fn field<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, String> {
        match self.field_json(name) {
            None => Ok(None),
            Some(json) => serde_json::from_str(json)
                .map(Some)
                .map_err(|e| format!("data set field `{name}` = {json} has the wrong type: {e}")),
        }
    }

    /// Field `name` as text: a JSON string's contents, or any other JSON value's text (`42`, `true`).
    pub fn field_text(&self, name: &str) -> Option<String> {
        let json = self.field_json(name)?;
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::String(s)) => Some(s),
            Ok(other) => Some(other.to_string()),
            Err(_) => Some(json.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_decode_by_type() {
        let s = Sample::new("p", "c")
            .with_reference("r")
            .with_language("bod_Tibt")
            .with_field("answer", 42)
            .with_field("topic", "math")
            .with_field("tags", ["a", "b"]);
        assert_eq!(s.reference.as_deref(), Some("r"));
        assert_eq!(s.field::<i64>("answer").unwrap(), Some(42));
        assert_eq!(s.field::<String>("topic").unwrap().as_deref(), Some("math"));
        assert_eq!(s.field::<Vec<String>>("tags").unwrap().unwrap(), ["a", "b"]);
        assert_eq!(s.field::<i64>("missing").unwrap(), None);
        let err = s.field::<i64>("topic").unwrap_err();
        assert!(err.contains("`topic`"), "{err}");
        assert_eq!(s.field_text("answer").as_deref(), Some("42"));
        assert_eq!(s.field_text("topic").as_deref(), Some("math"));
        assert_eq!(s.field_json("answer"), Some("42"));
    }
}
