//! Numbers in free text (for exact-match math rewards such as MGSM): the last number of an answer.
//!
//! Handles a leading minus (`-`, `−` U+2212, `－`) when it is not glued to a word (`3-5` is 3 and 5),
//! thousands separators (`1,234,567`, `１，２３４`, Arabic `٬`) when every group after the first has
//! exactly three digits and the first at most three, a decimal point (`.`, `．`, Arabic `٫`) followed by
//! a digit, and the decimal digits of many scripts (ASCII, full-width, Arabic-Indic, Devanagari, Bengali,
//! Thai, Lao, Tibetan, Myanmar, Khmer and more). Not handled: `1.234,5` (European), exponents,
//! fractions, number words (一百, hundred).

/// Code points of the digit zero of each decimal-digit block handled.
const ZEROS: &[u32] = &[
    0x0030, 0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66,
    0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0xFF10,
];

/// The value 0–9 of a decimal digit in any handled script.
pub fn digit_value(c: char) -> Option<u8> {
    let cp = c as u32;
    ZEROS.iter().find(|&&z| (z..z + 10).contains(&cp)).map(|&z| (cp - z) as u8)
}

fn is_group_sep(c: char) -> bool {
    matches!(c, ',' | '，' | '\u{066C}')
}

fn is_decimal_point(c: char) -> bool {
    matches!(c, '.' | '．' | '\u{066B}')
}

fn is_minus(c: char) -> bool {
    matches!(c, '-' | '\u{2212}' | '－')
}

/// Every number in `text`, in order of appearance.
pub fn numbers(text: &str) -> Vec<f64> {
    let chars: Vec<char> = text.chars().collect();
    let digit = |i: usize| chars.get(i).and_then(|&c| digit_value(c));
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if digit(i).is_none() {
            i += 1;
            continue;
        }
        let start = i;
        let mut ascii = String::new();
        while let Some(d) = digit(i) {
            ascii.push(char::from(b'0' + d));
            i += 1;
        }
        // Thousands groups: only after a first group of 1–3 digits, each exactly 3 digits.
        if ascii.len() <= 3 {
            while i < chars.len()
                && is_group_sep(chars[i])
                && (1..=3).all(|k| digit(i + k).is_some())
                && digit(i + 4).is_none()
            {
                for k in 1..=3 {
                    ascii.push(char::from(b'0' + digit(i + k).unwrap_or(0)));
                }
                i += 4;
            }
        }
        if i < chars.len() && is_decimal_point(chars[i]) && digit(i + 1).is_some() {
            ascii.push('.');
            i += 1;
            while let Some(d) = digit(i) {
                ascii.push(char::from(b'0' + d));
                i += 1;
            }
        }
        let negative =
            start >= 1 && is_minus(chars[start - 1]) && (start == 1 || !chars[start - 2].is_alphanumeric());
        if let Ok(v) = ascii.parse::<f64>() {
            out.push(if negative { -v } else { v });
        }
    }
    out
}

/// The last number in `text`, if any.
pub fn last_number(text: &str) -> Option<f64> {
    numbers(text).pop()
}

/// Whether `a` and `b` agree within `rel_tol` relative to `max(1, |b|)`.
pub fn numbers_match(a: f64, b: f64, rel_tol: f64) -> bool {
    (a - b).abs() <= rel_tol * b.abs().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn last_number_cases() {
        let cases: &[(&str, Option<f64>)] = &[
            ("The answer is 42.", Some(42.0)),
            ("He has 3 apples and buys 1,234 more: 1,237", Some(1237.0)),
            ("total = 1,234,567.89 dollars", Some(1234567.89)),
            ("-5", Some(-5.0)),
            ("it drops to −12 degrees", Some(-12.0)),
            ("pages 3-5", Some(5.0)),
            ("x = -0.5", Some(-0.5)),
            ("answer: ١٢٣", Some(123.0)),
            ("উত্তর ৪২", Some(42.0)),
            ("उत्तर: १,२३४", Some(1234.0)),
            ("คำตอบคือ ๕๐", Some(50.0)),
            ("ལན་ ༢༠ ཡིན།", Some(20.0)),
            ("答案是１２３４。", Some(1234.0)),
            ("答案：１，２３４", Some(1234.0)),
            ("12,34", Some(34.0)),
            ("1234,567", Some(567.0)),
            ("3.14.15", Some(15.0)),
            ("no digits here", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(last_number(text), *want, "{text:?}");
        }
        assert_eq!(numbers("a 1, 2 and 3.5"), [1.0, 2.0, 3.5]);
    }

    #[test]
    fn digit_values() {
        assert_eq!(digit_value('7'), Some(7));
        assert_eq!(digit_value('༩'), Some(9));
        assert_eq!(digit_value('０'), Some(0));
        assert_eq!(digit_value('a'), None);
        assert_eq!(digit_value('½'), None);
    }

    #[test]
    fn matching() {
        assert!(numbers_match(42.0, 42.0, 1e-9));
        assert!(!numbers_match(42.0, 43.0, 1e-9));
        assert!(numbers_match(0.1 + 0.2, 0.3, 1e-9));
    }

    fn with_commas(n: u64) -> String {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    proptest! {
        #[test]
        fn integers_with_separators_round_trip(n in 0u64..1_000_000_000_000, neg: bool, words in "[a-z ]{0,12}") {
            let text = format!("{words} {}{} ", if neg { "-" } else { "" }, with_commas(n));
            let want = if neg { -(n as f64) } else { n as f64 };
            prop_assert_eq!(last_number(&text), Some(want));
        }

        #[test]
        fn decimals_round_trip(int in 0u32..100_000, frac in 0u32..1000, words in "[a-z ]{0,12}") {
            let text = format!("{words} x {int}.{frac:03}.");
            let want: f64 = format!("{int}.{frac:03}").parse().unwrap();
            prop_assert_eq!(last_number(&text), Some(want));
        }

        #[test]
        fn other_script_digits_match_ascii(n in 0u64..10_000_000, zero in prop::sample::select(ZEROS.to_vec())) {
            let text: String = n.to_string().chars()
                .map(|c| char::from_u32(zero + c.to_digit(10).unwrap()).unwrap())
                .collect();
            prop_assert_eq!(last_number(&format!("= {text}")), Some(n as f64));
        }
    }
}
