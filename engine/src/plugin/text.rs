//! Making plugin-supplied text safe to print: control characters and Unicode bidi overrides are escaped,
//! so a plugin cannot rewrite the user's terminal (ESC sequences, carriage returns, bells, window titles)
//! or forge lines that look like the engine's own output (newlines, line separators).

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every character that could act on a terminal escaped: C0 controls, DEL and C1 controls
/// (`\n`, `\r`, `\t` by name, others as `\x1b` / `\u{9b}`), the Unicode line and paragraph separators
/// and the bidi embedding, override and isolate marks (as `\u{202e}`). Everything else, backslashes
/// included, is kept as is, so the result is still readable and `sanitize(sanitize(t)) == sanitize(t)`.
/// Borrows when there is nothing to escape.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether [`sanitize`] escapes `c`.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Arabic letter mark, left-to-right and right-to-left marks.
            '\u{061c}' | '\u{200e}' | '\u{200f}'
            // Line and paragraph separators.
            | '\u{2028}' | '\u{2029}'
            // Bidi embeddings and overrides (LRE, RLE, PDF, LRO, RLO) and isolates (LRI, RLI, FSI, PDI).
            | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped() {
        let hostile = "\x1b]0;pwned\x07\r[babelrl] fake line\nnext\t\x7f\u{9b}31m\u{202e}txt.exe\u{2028}";
        let safe = sanitize(hostile);
        assert_eq!(
            safe,
            "\\x1b]0;pwned\\x07\\r[babelrl] fake line\\nnext\\t\\x7f\\u{9b}31m\\u{202e}txt.exe\\u{2028}"
        );
        assert!(!safe.chars().any(needs_escape), "{safe}");
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for text in
            ["", "plain", "ünïcödé 中文 😀", r"C:\path\x1b is already escaped", "emoji 👍🏽 and \u{200d}"]
        {
            assert!(matches!(sanitize(text), Cow::Borrowed(t) if t == text), "{text}");
        }
    }

    #[test]
    fn every_control_character_is_escaped_and_sanitizing_is_idempotent() {
        for code in (0u32..0x20).chain(0x7f..0xa0).chain([0x61c, 0x200e, 0x200f, 0x2028, 0x2029]) {
            let c = char::from_u32(code).unwrap();
            let text = format!("a{c}b");
            let once = sanitize(&text).into_owned();
            assert!(!once.contains(c) && once.starts_with("a\\") && once.ends_with('b'), "{code:#x}: {once}");
            assert_eq!(sanitize(&once), once.as_str(), "{code:#x}");
        }
        for code in (0x202a..=0x202e).chain(0x2066..=0x2069) {
            let c = char::from_u32(code).unwrap();
            assert_eq!(sanitize(&c.to_string()), format!("\\u{{{code:x}}}"));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_comes_out_printable_and_stable(text in "\\PC*|[\\x00-\\x{a0}\\x{2000}-\\x{206f}]*") {
            let once = sanitize(&text).into_owned();
            proptest::prop_assert!(!once.chars().any(needs_escape), "{:?}", once);
            proptest::prop_assert_eq!(sanitize(&once), once.as_str());
        }
    }
}
