//! Reward plugin: completion length against the reference length, against the verbosity that semantic
//! rewards invite. With `ratio = len(completion) / len(reference)`:
//! `r = 1` for `lo ≤ ratio ≤ hi`, `r = ratio / lo` below `lo`, `r = max(0, 1 − (ratio − hi) / hi)` above
//! `hi` (0 at twice `hi`). `mode = "penalty"` returns `r − 1` (0 inside the band, down to −1).

use babelrl_sdk::prelude::*;
use serde::Deserialize;

/// How length is measured.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Characters (Unicode scalar values) other than whitespace: right for Tibetan, Chinese, Thai.
    Chars,
    /// Whitespace-separated words.
    Words,
}

/// `reward`: r in [0, 1]. `penalty`: r − 1 in [−1, 0].
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Reward,
    Penalty,
}

/// `[rewards.config]` of the run file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_lo")]
    pub lo: f32,
    #[serde(default = "default_hi")]
    pub hi: f32,
    #[serde(default = "default_unit")]
    pub unit: Unit,
    #[serde(default = "default_mode")]
    pub mode: Mode,
}

fn default_lo() -> f32 {
    0.5
}
fn default_hi() -> f32 {
    1.5
}
fn default_unit() -> Unit {
    Unit::Chars
}
fn default_mode() -> Mode {
    Mode::Reward
}

/// Length of `text` in `unit`.
pub fn length(text: &str, unit: Unit) -> usize {
    match unit {
        Unit::Chars => text.chars().filter(|c| !c.is_whitespace()).count(),
        Unit::Words => text.split_whitespace().count(),
    }
}

/// The band reward of a length ratio (see the module docs).
pub fn band_reward(ratio: f32, lo: f32, hi: f32) -> f32 {
    if ratio < lo {
        ratio / lo
    } else if ratio <= hi {
        1.0
    } else {
        (1.0 - (ratio - hi) / hi).max(0.0)
    }
}

/// The reward.
#[derive(Debug)]
pub struct LengthGuard(Config);

impl Reward for LengthGuard {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if !(c.lo > 0.0 && c.lo <= c.hi && c.hi.is_finite()) {
            return Err(format!("need 0 < lo <= hi, got lo = {}, hi = {}", c.lo, c.hi));
        }
        Ok(LengthGuard(c))
    }

    /// `None` for samples without a reference or with an empty one.
    fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>, String> {
        let c = &self.0;
        let score = |s: &Sample| {
            let reference = length(s.reference.as_deref()?, c.unit);
            let ratio = length(&s.completion, c.unit) as f32 / (reference > 0).then_some(reference)? as f32;
            let r = band_reward(ratio, c.lo, c.hi);
            Some(if c.mode == Mode::Penalty { r - 1.0 } else { r })
        };
        Ok(group.iter().map(score).collect())
    }
}

babelrl_sdk::export_reward!(LengthGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn new(json: &str) -> Result<LengthGuard, String> {
        LengthGuard::new(babelrl_sdk::reward::parse_config(json)?)
    }

    #[test]
    fn band_formula() {
        // lo = 0.5, hi = 1.5: ratio 0.25 → 0.5; 0.5..1.5 → 1; 2.25 → 1 − 0.75/1.5 = 0.5; ≥ 3 → 0.
        let cases = [
            (0.0, 0.0),
            (0.25, 0.5),
            (0.5, 1.0),
            (1.0, 1.0),
            (1.5, 1.0),
            (2.25, 0.5),
            (3.0, 0.0),
            (9.0, 0.0),
        ];
        for (ratio, want) in cases {
            assert!((band_reward(ratio, 0.5, 1.5) - want).abs() < 1e-6, "ratio {ratio}");
        }
    }

    #[test]
    fn group_in_chars_words_and_penalty() {
        let s = |c: &str, r: &str| Sample::new("p", c).with_reference(r);
        // Reference "ab cd" = 4 chars; completions of 4, 1 and 9 chars → ratios 1, 0.25, 2.25.
        let group = [
            s("abcd", "ab cd"),
            s("a", "ab cd"),
            s("abc def ghi", "ab cd"),
            Sample::new("p", "x"),
            s("x", " "),
        ];
        let mut chars = new("{}").unwrap();
        assert_eq!(chars.score(&group).unwrap(), [Some(1.0), Some(0.5), Some(0.5), None, None]);
        let mut pen = new(r#"{"mode": "penalty"}"#).unwrap();
        assert_eq!(pen.score(&group).unwrap(), [Some(0.0), Some(-0.5), Some(-0.5), None, None]);
        // Words: reference 2 words; "abc def ghi" = 3 words → ratio 1.5 → 1.
        let mut words = new(r#"{"unit": "words"}"#).unwrap();
        assert_eq!(words.score(&group[2..3]).unwrap(), [Some(1.0)]);
        // Tibetan/Chinese count characters: 6 vs 3 → ratio 2 → 1 − 0.5/1.5.
        let got = chars.score(&[s("你好你好你好", "你好吗")]).unwrap()[0].unwrap();
        assert!((got - (1.0 - 0.5 / 1.5)).abs() < 1e-6);
        assert!(new(r#"{"lo": 2, "hi": 1}"#).unwrap_err().contains("lo = 2"));
        assert!(new(r#"{"lo": 0}"#).is_err());
    }
}
