//! Reward plugin for math answers (MGSM): 1 if the last number in the completion equals the reference
//! number (the last number of the reference text, or of a data set field), else 0.

use babelrl_sdk::number::{last_number, numbers_match};
use babelrl_sdk::prelude::*;
use serde::Deserialize;

/// `[rewards.config]` of the run file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Take the answer from this data set field instead of the sample's `reference`.
    pub reference_field: Option<String>,
    /// Relative tolerance, against `max(1, |reference|)`.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Score of a correct answer.
    #[serde(default = "one")]
    pub correct: f32,
    /// Score of a wrong answer or of a completion without a number.
    #[serde(default)]
    pub wrong: f32,
}

fn default_tolerance() -> f64 {
    1e-6
}
fn one() -> f32 {
    1.0
}

/// The reward.
#[derive(Debug)]
pub struct ExactMatch(Config);

impl ExactMatch {
    /// The score of `completion` against the reference text `reference`.
    pub fn score_one(&self, completion: &str, reference: &str) -> Result<f32, String> {
        let want = last_number(reference).ok_or_else(|| format!("reference {reference:?} has no number"))?;
        let ok = last_number(completion).is_some_and(|got| numbers_match(got, want, self.0.tolerance));
        Ok(if ok { self.0.correct } else { self.0.wrong })
    }
}

impl Reward for ExactMatch {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if !(config.tolerance >= 0.0 && config.tolerance.is_finite()) {
            return Err(format!("tolerance = {} must be a finite number >= 0", config.tolerance));
        }
        Ok(ExactMatch(config))
    }

    /// `None` for samples without a reference; `Err` (naming the sample) for a reference without a number.
    fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>, String> {
        let score = |(i, s): (usize, &Sample)| {
            let reference = match &self.0.reference_field {
                Some(f) => s.field_text(f),
                None => s.reference.clone(),
            };
            let Some(reference) = reference else { return Ok(None) };
            self.score_one(&s.completion, &reference).map(Some).map_err(|e| format!("sample {i}: {e}"))
        };
        group.iter().enumerate().map(score).collect()
    }
}

babelrl_sdk::export_reward!(ExactMatch);

#[cfg(test)]
mod tests {
    use super::*;

    fn new(json: &str) -> ExactMatch {
        ExactMatch::new(babelrl_sdk::reward::parse_config(json).unwrap()).unwrap()
    }

    #[test]
    fn last_number_against_reference() {
        let r = new("{}");
        let cases = [
            ("Janet sells 16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", "18", 1.0),
            ("So she pays 1,250 dollars.", "1250", 1.0),
            ("答案是１２５０。", "1250", 1.0),
            ("উত্তর: ১৮", "18", 1.0),
            ("18 first, then the answer is 20", "18", 0.0),
            ("The answer is -3.5", "-3.5", 1.0),
            ("I don't know.", "18", 0.0),
        ];
        for (completion, reference, want) in cases {
            assert_eq!(r.score_one(completion, reference).unwrap(), want, "{completion}");
        }
        assert!(r.score_one("18", "eighteen").unwrap_err().contains("no number"));
    }

    #[test]
    fn group_with_fields_and_custom_scores() {
        let mut r = new(r#"{"reference_field": "answer_number", "correct": 2.0, "wrong": -1.0}"#);
        let group = [
            Sample::new("q", "so 42").with_field("answer_number", 42),
            Sample::new("q", "so 41").with_field("answer_number", "42"),
            Sample::new("q", "so 42"),
        ];
        assert_eq!(r.score(&group).unwrap(), [Some(2.0), Some(-1.0), None]);
        let bad = [Sample::new("q", "1").with_field("answer_number", "n/a")];
        assert!(r.score(&bad).unwrap_err().starts_with("sample 0:"));
    }
}
