//! Unicode script classification of letters and per-script shares of a text.
//!
//! Only letters count (`char::is_alphabetic`: letters, ideographs and the vowel signs that are part of
//! a syllable); digits, punctuation (e.g. the Tibetan tsheg U+0F0B), whitespace and symbols are skipped.
//! Letters of scripts not listed in [`Script`] count as [`Script::Other`].

/// A writing system, by Unicode block ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Script {
    Latin,
    Greek,
    Cyrillic,
    Armenian,
    Hebrew,
    Arabic,
    Devanagari,
    Bengali,
    Gurmukhi,
    Gujarati,
    Oriya,
    Tamil,
    Telugu,
    Kannada,
    Malayalam,
    Sinhala,
    Thai,
    Lao,
    Tibetan,
    Myanmar,
    Georgian,
    Hangul,
    Ethiopic,
    Khmer,
    Hiragana,
    Katakana,
    /// Han ideographs (CJK unified, extensions A–G, compatibility ideographs, 々 and 〇).
    Han,
    /// A letter in a script not listed above.
    Other,
}

/// Number of [`Script`] variants.
pub const SCRIPT_COUNT: usize = Script::Other as usize + 1;

// (first, last, script), sorted by `first`, non-overlapping.
const RANGES: &[(u32, u32, Script)] = &[
    (0x0041, 0x005A, Script::Latin),
    (0x0061, 0x007A, Script::Latin),
    (0x00AA, 0x00AA, Script::Latin),
    (0x00BA, 0x00BA, Script::Latin),
    (0x00C0, 0x024F, Script::Latin),
    (0x0250, 0x02AF, Script::Latin),
    (0x0370, 0x03FF, Script::Greek),
    (0x0400, 0x052F, Script::Cyrillic),
    (0x0530, 0x058F, Script::Armenian),
    (0x0590, 0x05FF, Script::Hebrew),
    (0x0600, 0x06FF, Script::Arabic),
    (0x0750, 0x077F, Script::Arabic),
    (0x08A0, 0x08FF, Script::Arabic),
    (0x0900, 0x097F, Script::Devanagari),
    (0x0980, 0x09FF, Script::Bengali),
    (0x0A00, 0x0A7F, Script::Gurmukhi),
    (0x0A80, 0x0AFF, Script::Gujarati),
    (0x0B00, 0x0B7F, Script::Oriya),
    (0x0B80, 0x0BFF, Script::Tamil),
    (0x0C00, 0x0C7F, Script::Telugu),
    (0x0C80, 0x0CFF, Script::Kannada),
    (0x0D00, 0x0D7F, Script::Malayalam),
    (0x0D80, 0x0DFF, Script::Sinhala),
    (0x0E00, 0x0E7F, Script::Thai),
    (0x0E80, 0x0EFF, Script::Lao),
    (0x0F00, 0x0FFF, Script::Tibetan),
    (0x1000, 0x109F, Script::Myanmar),
    (0x10A0, 0x10FF, Script::Georgian),
    (0x1100, 0x11FF, Script::Hangul),
    (0x1200, 0x139F, Script::Ethiopic),
    (0x1780, 0x17FF, Script::Khmer),
    (0x19E0, 0x19FF, Script::Khmer),
    (0x1C80, 0x1C8F, Script::Cyrillic),
    (0x1C90, 0x1CBF, Script::Georgian),
    (0x1E00, 0x1EFF, Script::Latin),
    (0x1F00, 0x1FFF, Script::Greek),
    (0x2C60, 0x2C7F, Script::Latin),
    (0x2D00, 0x2D2F, Script::Georgian),
    (0x2D80, 0x2DDF, Script::Ethiopic),
    (0x2DE0, 0x2DFF, Script::Cyrillic),
    (0x3005, 0x3005, Script::Han),
    (0x3007, 0x3007, Script::Han),
    (0x3021, 0x3029, Script::Han),
    (0x3038, 0x303B, Script::Han),
    (0x3040, 0x309F, Script::Hiragana),
    (0x30A0, 0x30FF, Script::Katakana),
    (0x3130, 0x318F, Script::Hangul),
    (0x31F0, 0x31FF, Script::Katakana),
    (0x3400, 0x4DBF, Script::Han),
    (0x4E00, 0x9FFF, Script::Han),
    (0xA640, 0xA69F, Script::Cyrillic),
    (0xA720, 0xA7FF, Script::Latin),
    (0xA8E0, 0xA8FF, Script::Devanagari),
    (0xA960, 0xA97F, Script::Hangul),
    (0xA9E0, 0xA9FF, Script::Myanmar),
    (0xAA60, 0xAA7F, Script::Myanmar),
    (0xAB00, 0xAB2F, Script::Ethiopic),
    (0xAB30, 0xAB6F, Script::Latin),
    (0xAC00, 0xD7AF, Script::Hangul),
    (0xD7B0, 0xD7FF, Script::Hangul),
    (0xF900, 0xFAFF, Script::Han),
    (0xFB00, 0xFB06, Script::Latin),
    (0xFB1D, 0xFB4F, Script::Hebrew),
    (0xFB50, 0xFDFF, Script::Arabic),
    (0xFE70, 0xFEFF, Script::Arabic),
    (0xFF21, 0xFF3A, Script::Latin),
    (0xFF41, 0xFF5A, Script::Latin),
    (0xFF66, 0xFF9F, Script::Katakana),
    (0xFFA0, 0xFFDC, Script::Hangul),
    (0x1E7E0, 0x1E7FF, Script::Ethiopic),
    (0x20000, 0x2A6DF, Script::Han),
    (0x2A700, 0x2EBEF, Script::Han),
    (0x2F800, 0x2FA1F, Script::Han),
    (0x30000, 0x323AF, Script::Han),
];

impl Script {
    /// Every script, in declaration order (index = `script as usize`).
    pub const ALL: [Script; SCRIPT_COUNT] = [
        Script::Latin,
        Script::Greek,
        Script::Cyrillic,
        Script::Armenian,
        Script::Hebrew,
        Script::Arabic,
        Script::Devanagari,
        Script::Bengali,
        Script::Gurmukhi,
        Script::Gujarati,
        Script::Oriya,
        Script::Tamil,
        Script::Telugu,
        Script::Kannada,
        Script::Malayalam,
        Script::Sinhala,
        Script::Thai,
        Script::Lao,
        Script::Tibetan,
        Script::Myanmar,
        Script::Georgian,
        Script::Hangul,
        Script::Ethiopic,
        Script::Khmer,
        Script::Hiragana,
        Script::Katakana,
        Script::Han,
        Script::Other,
    ];

    /// The script of `c` if it is a letter (see the module docs), `None` for anything else.
    pub fn of_letter(c: char) -> Option<Script> {
        if !c.is_alphabetic() {
            return None;
        }
        let cp = c as u32;
        let i = RANGES.partition_point(|&(first, _, _)| first <= cp);
        match i.checked_sub(1).map(|i| RANGES[i]) {
            Some((_, last, script)) if cp <= last => Some(script),
            _ => Some(Script::Other),
        }
    }
}

/// Letter counts per script of one text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptCounts {
    counts: [usize; SCRIPT_COUNT],
    letters: usize,
}

impl ScriptCounts {
    /// Counts the letters of `text` by script.
    pub fn of(text: &str) -> Self {
        let mut out = ScriptCounts::default();
        for script in text.chars().filter_map(Script::of_letter) {
            out.counts[script as usize] += 1;
            out.letters += 1;
        }
        out
    }

    /// Total number of letters.
    pub fn letters(&self) -> usize {
        self.letters
    }

    /// Letters in `script`.
    pub fn count(&self, script: Script) -> usize {
        self.counts[script as usize]
    }

    /// Share of letters in any of `scripts`, in [0, 1]; `None` when the text has no letters.
    pub fn share_of(&self, scripts: &[Script]) -> Option<f32> {
        if self.letters == 0 {
            return None;
        }
        let mut seen = [false; SCRIPT_COUNT];
        let mut hit = 0;
        for &s in scripts {
            if !std::mem::replace(&mut seen[s as usize], true) {
                hit += self.counts[s as usize];
            }
        }
        Some(hit as f32 / self.letters as f32)
    }

    /// The script with the most letters (ties: the earlier in [`Script::ALL`]); `None` without letters.
    pub fn dominant(&self) -> Option<Script> {
        let best =
            Script::ALL.iter().copied().max_by_key(|&s| (self.count(s), std::cmp::Reverse(s as u8)))?;
        (self.letters > 0).then_some(best)
    }
}

/// Share of the letters of `text` that are in any of `scripts`; `None` when `text` has no letters.
pub fn script_share(text: &str, scripts: &[Script]) -> Option<f32> {
    ScriptCounts::of(text).share_of(scripts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_sorted_and_disjoint() {
        for w in RANGES.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{:x?} / {:x?}", w[0], w[1]);
        }
        for (i, s) in Script::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[test]
    fn classifies_letters() {
        let cases = [
            ('a', Script::Latin),
            ('É', Script::Latin),
            ('ß', Script::Latin),
            ('Ａ', Script::Latin),
            ('λ', Script::Greek),
            ('ж', Script::Cyrillic),
            ('ש', Script::Hebrew),
            ('ب', Script::Arabic),
            ('क', Script::Devanagari),
            ('ক', Script::Bengali),
            ('த', Script::Tamil),
            ('త', Script::Telugu),
            ('ස', Script::Sinhala),
            ('ก', Script::Thai),
            ('ກ', Script::Lao),
            ('ཀ', Script::Tibetan),
            ('ི', Script::Tibetan),
            ('က', Script::Myanmar),
            ('ქ', Script::Georgian),
            ('한', Script::Hangul),
            ('ሀ', Script::Ethiopic),
            ('ក', Script::Khmer),
            ('あ', Script::Hiragana),
            ('カ', Script::Katakana),
            ('ｶ', Script::Katakana),
            ('中', Script::Han),
            ('㐀', Script::Han),
            ('豈', Script::Han),
            ('𠀀', Script::Han),
            ('々', Script::Han),
            ('ᚠ', Script::Other),
        ];
        for (c, want) in cases {
            assert_eq!(Script::of_letter(c), Some(want), "{c:?} U+{:04X}", c as u32);
        }
        for c in ['1', '༡', '०', '་', '།', ' ', '\n', '.', '，', '。', '€', '+', '😀', '\u{0F0B}']
        {
            assert_eq!(Script::of_letter(c), None, "{c:?} U+{:04X} is not a letter", c as u32);
        }
    }

    #[test]
    fn shares_on_tibetan_han_latin_and_mixed() {
        // Tibetan: 9 letters (བཀྲ་ཤིས་བདེ་ལེགས། minus tshegs and shad), all Tibetan.
        let bo = "བཀྲ་ཤིས་བདེ་ལེགས།";
        let c = ScriptCounts::of(bo);
        assert_eq!(c.letters(), bo.chars().filter(|&ch| ch != '་' && ch != '།').count());
        assert_eq!(c.share_of(&[Script::Tibetan]), Some(1.0));
        assert_eq!(script_share("你好，世界。", &[Script::Han]), Some(1.0));
        assert_eq!(script_share("Hello, world! 42", &[Script::Latin]), Some(1.0));
        // Mixed: "abcd" (4 Latin) + "中文" (2 Han) + "ཀཁ" (2 Tibetan) = 8 letters.
        let mixed = "abcd 中文 ཀཁ 123 !";
        let c = ScriptCounts::of(mixed);
        assert_eq!(c.letters(), 8);
        assert_eq!(c.share_of(&[Script::Latin]), Some(0.5));
        assert_eq!(c.share_of(&[Script::Han]), Some(0.25));
        assert_eq!(c.share_of(&[Script::Tibetan]), Some(0.25));
        assert_eq!(c.share_of(&[Script::Han, Script::Tibetan, Script::Han]), Some(0.5));
        assert_eq!(c.dominant(), Some(Script::Latin));
        assert_eq!(script_share("123 ... ༡༢", &[Script::Tibetan]), None);
        assert_eq!(ScriptCounts::of("").dominant(), None);
    }

    proptest! {
        #[test]
        fn shares_are_fractions(text in "\\PC{0,40}") {
            let c = ScriptCounts::of(&text);
            let total: usize = Script::ALL.iter().map(|&s| c.count(s)).sum();
            prop_assert_eq!(total, c.letters());
            if let Some(all) = c.share_of(&Script::ALL) {
                prop_assert_eq!(all, 1.0);
            }
            for s in Script::ALL {
                if let Some(v) = c.share_of(&[s]) {
                    prop_assert!((0.0..=1.0).contains(&v));
                }
            }
        }

        #[test]
        fn pure_script_text_has_share_one(n in 1usize..30, base in prop::sample::select(vec![
            (0x0F40u32, Script::Tibetan), (0x4E00, Script::Han), (0x0061, Script::Latin),
            (0x0430, Script::Cyrillic), (0x0E01, Script::Thai), (0xAC00, Script::Hangul),
        ])) {
            let text: String = (0..n).map(|i| char::from_u32(base.0 + (i as u32 % 20)).unwrap()).collect();
            let text = format!("{text} 12, ");
            prop_assert_eq!(script_share(&text, &[base.1]), Some(1.0));
        }
    }
}
