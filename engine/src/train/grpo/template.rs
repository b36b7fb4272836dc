//! The prompt template of LRPO's routed rollouts (`[router] template`): the question with an instruction
//! naming the target language, e.g. `"{prompt}\n\nAnswer in {language_name}."`, and the built-in English
//! names of common language codes (ISO 639-1, ISO 639-3 and FLORES-200's `xxx_Scrp`).

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Prompt,
    Language,
    LanguageName,
}

/// A parsed `[router] template`: text with the placeholders `{prompt}` (the question), `{language}` (the
/// target language's code) and `{language_name}` (its name); `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTemplate {
    source: String,
    parts: Vec<Part>,
}

/// The template of a run file without `template`.
pub const DEFAULT_TEMPLATE: &str = "{prompt}\n\nAnswer in {language_name}.";

impl PromptTemplate {
    /// Parses `source`. An unknown placeholder, an unmatched brace, a template without `{prompt}` or
    /// without `{language}` / `{language_name}` is an error (the message names the problem).
    pub fn parse(source: &str) -> Result<PromptTemplate, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|(_, n)| *n == '{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().is_some_and(|(_, n)| *n == '}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(format!("unmatched `}}` at byte {at} (write `}}}}` for a literal brace)")),
                '{' => {
                    let rest = &source[at + 1..];
                    let end = rest.find('}').ok_or_else(|| {
                        format!("unmatched `{{` at byte {at} (write `{{{{` for a literal brace)")
                    })?;
                    let part = match &rest[..end] {
                        "prompt" => Part::Prompt,
                        "language" => Part::Language,
                        "language_name" => Part::LanguageName,
                        other => {
                            return Err(format!(
                                "unknown placeholder `{{{other}}}`: the template knows {{prompt}}, {{language}} \
                                 and {{language_name}}"
                            ));
                        }
                    };
                    for _ in 0..end + 1 {
                        chars.next();
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(part);
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if !parts.contains(&Part::Prompt) {
            return Err("has no {prompt}: the question would be lost".into());
        }
        if !parts.iter().any(|p| matches!(p, Part::Language | Part::LanguageName)) {
            return Err(
                "names no language: add {language_name} (or {language}) so the prompt tells the target language"
                    .into(),
            );
        }
        Ok(PromptTemplate { source: source.to_string(), parts })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether it uses `{language_name}` (then every routed language needs a name).
    pub fn uses_language_name(&self) -> bool {
        self.parts.contains(&Part::LanguageName)
    }

    /// The template with `prompt`, `language` and `name` put in (the inserted text is not scanned for
    /// placeholders).
    pub fn render(&self, prompt: &str, language: &str, name: &str) -> String {
        let mut out = String::with_capacity(self.source.len() + prompt.len() + name.len());
        for part in &self.parts {
            out.push_str(match part {
                Part::Text(t) => t,
                Part::Prompt => prompt,
                Part::Language => language,
                Part::LanguageName => name,
            });
        }
        out
    }
}

/// `(ISO 639-1, ISO 639-3, English name)` of the languages with a built-in name.
const NAMES: &[(&str, &str, &str)] = &[
    ("am", "amh", "Amharic"),
    ("ar", "arb", "Arabic"),
    ("bn", "ben", "Bengali"),
    ("bo", "bod", "Tibetan"),
    ("de", "deu", "German"),
    ("dz", "dzo", "Dzongkha"),
    ("el", "ell", "Greek"),
    ("en", "eng", "English"),
    ("es", "spa", "Spanish"),
    ("fa", "pes", "Persian"),
    ("fr", "fra", "French"),
    ("he", "heb", "Hebrew"),
    ("hi", "hin", "Hindi"),
    ("id", "ind", "Indonesian"),
    ("it", "ita", "Italian"),
    ("ja", "jpn", "Japanese"),
    ("ka", "kat", "Georgian"),
    ("kk", "kaz", "Kazakh"),
    ("km", "khm", "Khmer"),
    ("ko", "kor", "Korean"),
    ("lo", "lao", "Lao"),
    ("mn", "khk", "Mongolian"),
    ("my", "mya", "Burmese"),
    ("ne", "npi", "Nepali"),
    ("nl", "nld", "Dutch"),
    ("pl", "pol", "Polish"),
    ("ps", "pbt", "Pashto"),
    ("pt", "por", "Portuguese"),
    ("ru", "rus", "Russian"),
    ("si", "sin", "Sinhala"),
    ("sw", "swh", "Swahili"),
    ("ta", "tam", "Tamil"),
    ("te", "tel", "Telugu"),
    ("th", "tha", "Thai"),
    ("ti", "tir", "Tigrinya"),
    ("tr", "tur", "Turkish"),
    ("ug", "uig", "Uyghur"),
    ("uk", "ukr", "Ukrainian"),
    ("ur", "urd", "Urdu"),
    ("vi", "vie", "Vietnamese"),
    ("yo", "yor", "Yoruba"),
    ("zh", "zho", "Chinese"),
    ("", "yue", "Cantonese"),
];

/// The built-in English name of a language code: `en`, `eng`, `eng_Latn` and `en-US` are all "English";
/// Chinese in the simplified or traditional script is named so (`zho_Hans`, `zh-Hant`). `None` for a
/// code it does not know.
pub fn language_name(code: &str) -> Option<&'static str> {
    let mut parts = code.trim().split(['_', '-']);
    let lang = parts.next()?.to_ascii_lowercase();
    if lang == "zh" || lang == "zho" {
        match parts.next() {
            Some("Hans") => return Some("Simplified Chinese"),
            Some("Hant") => return Some("Traditional Chinese"),
            _ => {}
        }
    }
    if lang.is_empty() {
        return None;
    }
    NAMES.iter().find(|(two, three, _)| *two == lang || *three == lang).map(|(_, _, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_renders_its_placeholders_and_literal_braces() {
        let t = PromptTemplate::parse("{prompt}\n\n{{Answer}} in {language_name} ({language}).").unwrap();
        assert!(t.uses_language_name());
        // The question's own braces are not placeholders.
        assert_eq!(t.render("x = {prompt}?", "fr", "French"), "x = {prompt}?\n\n{Answer} in French (fr).");
        let d = PromptTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        assert_eq!(d.render("2+2?", "de", "German"), "2+2?\n\nAnswer in German.");
        assert!(!PromptTemplate::parse("{prompt} [{language}]").unwrap().uses_language_name());
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (source, want) in [
            ("Answer in {language_name}.", "no {prompt}"),
            ("{prompt}", "names no language"),
            ("{prompt} {lang}", "unknown placeholder `{lang}`"),
            ("{prompt} {language", "unmatched `{` at byte 9"),
            ("{prompt} } {language}", "unmatched `}` at byte 9"),
        ] {
            let e = PromptTemplate::parse(source).unwrap_err();
            assert!(e.contains(want), "{source:?}: {e}");
        }
    }

    #[test]
    fn codes_of_every_form_have_names() {
        for (code, name) in [
            ("en", "English"),
            ("eng_Latn", "English"),
            ("en-US", "English"),
            ("bod_Tibt", "Tibetan"),
            ("bo", "Tibetan"),
            ("zh", "Chinese"),
            ("zho_Hans", "Simplified Chinese"),
            ("zh-Hant", "Traditional Chinese"),
            ("yue_Hant", "Cantonese"),
            ("SW", "Swahili"),
            ("te", "Telugu"),
        ] {
            assert_eq!(language_name(code), Some(name), "{code}");
        }
        for code in ["", "xx", "tlh_Piqd", "_Latn"] {
            assert_eq!(language_name(code), None, "{code}");
        }
    }
}
