//! BLEU's tokenizers as sacrebleu 2.x writes them (`sacrebleu/tokenizers/`): `13a` (mteval-v13a, the
//! default), `intl` (mteval-v14 international), `zh` (CJK characters split, then 13a's regexes), `char`
//! and `none`. The regexes are sacrebleu's, run through the `regex` crate with the same leftmost,
//! non-overlapping replacement semantics as Python's `re.sub`. `intl`'s `\p{P}`, `\p{S}` and `\p{N}` follow
//! the crate's Unicode tables (16.0), sacrebleu's those of the installed `regex` module: they can disagree
//! only on characters newer than the older of the two.
//!
//! Not implemented: `ja-mecab` and `ko-mecab` (need MeCab and its dictionaries) and `spm` / `flores101` /
//! `flores200` (need a SentencePiece model); [`Tokenize::from_name`] says so.

use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use super::{is_py_space, py_normalize_spaces};
use crate::{Error, Result};

/// A BLEU tokenizer, named as sacrebleu's `--tokenize` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tokenize {
    /// `none`: the line as it is (sacrebleu warns this is not recommended).
    None,
    /// `13a`: mteval-v13a (WMT's standard), sacrebleu's default.
    #[default]
    V13a,
    /// `intl`: mteval-v14 international: splits Unicode punctuation and symbols.
    Intl,
    /// `zh`: every CJK character (sacrebleu's table, quirks included) a token, the rest as 13a's regexes.
    Zh,
    /// `char`: every non-whitespace character a token.
    Char,
}

/// sacrebleu's tokenizer names this module does not implement, and why.
const NOT_IMPLEMENTED: &str = "ja-mecab and ko-mecab (need MeCab), spm, flores101 and flores200 (need a \
                               SentencePiece model)";

impl Tokenize {
    /// Every tokenizer, in sacrebleu's order.
    pub const ALL: [Tokenize; 5] =
        [Tokenize::None, Tokenize::Zh, Tokenize::V13a, Tokenize::Intl, Tokenize::Char];

    /// sacrebleu's name for the tokenizer (its `--tokenize` value and signature `tok:` field).
    pub fn name(self) -> &'static str {
        match self {
            Tokenize::None => "none",
            Tokenize::V13a => "13a",
            Tokenize::Intl => "intl",
            Tokenize::Zh => "zh",
            Tokenize::Char => "char",
        }
    }

    /// The tokenizer sacrebleu calls `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        if let Some(t) = Tokenize::ALL.into_iter().find(|t| t.name() == name) {
            return Ok(t);
        }
        let known: Vec<&str> = Tokenize::ALL.iter().map(|t| t.name()).collect();
        Err(Error::Input(format!(
            "unknown BLEU tokenizer `{name}`: use one of {} (not implemented: {NOT_IMPLEMENTED})",
            known.join(", ")
        )))
    }

    /// Tokenizes one line as sacrebleu's tokenizer `__call__` does; tokens are separated by spaces (`char`
    /// separates every character, whitespace included, by one space, as sacrebleu does).
    pub fn apply(self, line: &str) -> String {
        match self {
            Tokenize::None => line.to_string(),
            Tokenize::V13a => tokenize_13a(line),
            Tokenize::Intl => tokenize_intl(line),
            Tokenize::Zh => tokenize_zh(line),
            Tokenize::Char => {
                let mut out = String::with_capacity(line.len() * 2);
                for (i, c) in line.chars().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push(c);
                }
                out
            }
        }
    }
}

impl FromStr for Tokenize {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Tokenize::from_name(s)
    }
}

impl std::fmt::Display for Tokenize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("the tokenizer regexes are constants")
}

/// `TokenizerRegexp` (tokenizer_re.py): the part of 13a that `zh` shares. `[0-9]` is ASCII only, as in
/// Python; `[^0-9]` matches any other character, newline included, in both engines.
static RE_13A: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    [
        // language-dependent part (assuming Western languages): `[\{-\~\[-\` -\&\(-\+\:-\@\/]`
        (regex(r"([\x7B-\x7E\x5B-\x60\x20-\x26\x28-\x2B\x3A-\x40/])"), " ${1} "),
        // tokenize period and comma unless preceded by a digit
        (regex(r"([^0-9])([.,])"), "${1} ${2} "),
        // tokenize period and comma unless followed by a digit
        (regex(r"([.,])([^0-9])"), " ${1} ${2}"),
        // tokenize dash when preceded by a digit
        (regex(r"([0-9])(-)"), "${1} ${2} "),
    ]
});

/// `TokenizerV14International` (tokenizer_intl.py): `\p{P}` punctuation, `\p{S}` symbols, `\p{N}` numbers.
static RE_INTL: LazyLock<[(Regex, &'static str); 3]> = LazyLock::new(|| {
    [
        // separate out punctuation preceded by a non-digit
        (regex(r"(\P{N})(\p{P})"), "${1} ${2} "),
        // separate out punctuation followed by a non-digit
        (regex(r"(\p{P})(\P{N})"), " ${1} ${2}"),
        // separate out symbols
        (regex(r"(\p{S})"), " ${1} "),
    ]
});

fn apply_all(rules: &[(Regex, &'static str)], line: &str) -> String {
    let mut line = line.to_string();
    for (re, rep) in rules {
        line = re.replace_all(&line, *rep).into_owned();
    }
    py_normalize_spaces(&line)
}

/// `Tokenizer13a.__call__`: drop `<skipped>`, join `-\n` line breaks, newlines to spaces, unescape four
/// HTML entities, pad with one space each side, then the 13a regexes.
fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    apply_all(&*RE_13A, &format!(" {line} "))
}

fn tokenize_intl(line: &str) -> String {
    apply_all(&*RE_INTL, line)
}

/// `TokenizerZh.__call__`: strip, surround every Chinese character (per [`is_chinese_char`]) with spaces,
/// then the 13a regexes (without 13a's entity handling and padding).
fn tokenize_zh(line: &str) -> String {
    let line = line.trim_matches(is_py_space);
    let mut spaced = String::with_capacity(line.len() * 2);
    for c in line.chars() {
        if is_chinese_char(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    apply_all(&*RE_13A, &spaced)
}

/// The ranges sacrebleu's `_is_chinese_char` accepts. sacrebleu writes two of its ranges with five hex
/// digits in `\u` escapes (`u'\u20000'`, `u'\u2a6d6'`, `u'\u2f800'`, `u'\u2fa1d'`); Python reads those as a
/// four-digit escape followed by a digit or letter, so the strings are two characters long and its string
/// comparison accepts U+2001..=U+2A6D and U+2F81..=U+2FA1 instead of CJK Extension B and the
/// Compatibility Supplement. Those effective ranges are kept here: they are what sacrebleu scores with.
const ZH_RANGES: [(char, char); 22] = [
    ('\u{3400}', '\u{4db5}'), // CJK Unified Ideographs Extension A
    ('\u{4e00}', '\u{9fa5}'), // CJK Unified Ideographs
    ('\u{9fa6}', '\u{9fbb}'), // CJK Unified Ideographs, release 4.1
    ('\u{f900}', '\u{fa2d}'), // CJK Compatibility Ideographs
    ('\u{fa30}', '\u{fa6a}'), // CJK Compatibility Ideographs, release 3.2
    ('\u{fa70}', '\u{fad9}'), // CJK Compatibility Ideographs, release 4.1
    ('\u{2001}', '\u{2a6d}'), // meant as Extension B (see above): general punctuation to arrows
    ('\u{2f81}', '\u{2fa1}'), // meant as the Compatibility Supplement (see above)
    ('\u{ff00}', '\u{ffef}'), // full-width ASCII and punctuation, half-width kana, Hangul
    ('\u{2e80}', '\u{2eff}'), // CJK Radicals Supplement
    ('\u{3000}', '\u{303f}'), // CJK punctuation
    ('\u{31c0}', '\u{31ef}'), // CJK strokes
    ('\u{2f00}', '\u{2fdf}'), // Kangxi Radicals
    ('\u{2ff0}', '\u{2fff}'), // ideographic description characters
    ('\u{3100}', '\u{312f}'), // Bopomofo
    ('\u{31a0}', '\u{31bf}'), // Bopomofo extended
    ('\u{fe10}', '\u{fe1f}'), // vertical forms
    ('\u{fe30}', '\u{fe4f}'), // CJK compatibility forms
    ('\u{2600}', '\u{26ff}'), // miscellaneous symbols
    ('\u{2700}', '\u{27bf}'), // dingbats
    ('\u{3200}', '\u{32ff}'), // enclosed CJK letters and months
    ('\u{3300}', '\u{33ff}'), // CJK compatibility
];

/// Whether sacrebleu's `zh` tokenizer makes `c` a token of its own.
pub fn is_chinese_char(c: char) -> bool {
    ZH_RANGES.iter().any(|&(lo, hi)| lo <= c && c <= hi)
}
