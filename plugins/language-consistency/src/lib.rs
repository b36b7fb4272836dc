//! Reward plugin: the share of a completion's letters in its target language's script, as a 0/1 gate
//! (`mode = "gate"`) or as the share itself (`mode = "reward"`).

use babelrl_sdk::prelude::*;
use babelrl_sdk::{lang, script};
use serde::Deserialize;

/// `gate`: 1 if share ≥ threshold else 0. `reward`: the share in [0, 1].
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Gate,
    Reward,
}

/// `[rewards.config]` of the run file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    /// Share of letters that must be in the target script (gate mode).
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Target language for every sample, instead of each sample's `language`.
    pub language: Option<String>,
    /// Score of a completion with no letters at all (only digits or punctuation).
    #[serde(default)]
    pub no_letters: f32,
}

fn default_threshold() -> f32 {
    0.8
}

/// The reward.
#[derive(Debug)]
pub struct LanguageConsistency(Config);

impl LanguageConsistency {
    /// The score of one completion in `language`.
    pub fn score_one(&self, completion: &str, language: &str) -> Result<f32, String> {
        let scripts = lang::expected_scripts(language)
            .ok_or_else(|| format!("unknown language code `{language}` (use e.g. bod_Tibt, zh, en)"))?;
        let Some(share) = script::script_share(completion, scripts) else {
            return Ok(self.0.no_letters);
        };
        Ok(match self.0.mode {
            Mode::Gate => f32::from(u8::from(share >= self.0.threshold)),
            Mode::Reward => share,
        })
    }
}

impl Reward for LanguageConsistency {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&config.threshold) {
            return Err(format!("threshold = {} must be in [0, 1]", config.threshold));
        }
        if let Some(l) = &config.language {
            lang::expected_scripts(l).ok_or_else(|| format!("unknown language code `{l}`"))?;
        }
        Ok(LanguageConsistency(config))
    }

    fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>, String> {
        let score = |(i, s): (usize, &Sample)| {
            let lang = self.0.language.as_deref().or(s.language.as_deref());
            let lang = lang.ok_or_else(|| format!("sample {i} has no language; set `language`"))?;
            self.score_one(&s.completion, lang).map(Some)
        };
        group.iter().enumerate().map(score).collect()
    }
}

babelrl_sdk::export_reward!(LanguageConsistency);

#[cfg(test)]
mod tests {
    use super::*;

    fn new(json: &str) -> Result<LanguageConsistency, String> {
        LanguageConsistency::new(babelrl_sdk::reward::parse_config(json)?)
    }

    #[test]
    fn gate_and_reward_modes() {
        // "བཀྲ་ཤིས abc": 6 Tibetan letters (བ ཀ ྲ ཤ ི ས; the tsheg is punctuation) + 3 Latin.
        let mixed = "བཀྲ་ཤིས abc";
        let tib = 6.0 / 9.0;
        let reward = new(r#"{"mode": "reward"}"#).unwrap();
        assert!((reward.score_one(mixed, "bod_Tibt").unwrap() - tib).abs() < 1e-6);
        assert!((reward.score_one(mixed, "en").unwrap() - 3.0 / 9.0).abs() < 1e-6);
        let gate = new(r#"{"mode": "gate", "threshold": 0.6}"#).unwrap();
        assert_eq!(gate.score_one(mixed, "bo").unwrap(), 1.0);
        assert_eq!(gate.score_one(mixed, "zh").unwrap(), 0.0);
        assert_eq!(gate.score_one("你好世界", "zho_Hans").unwrap(), 1.0);
        assert_eq!(gate.score_one("42.", "zh").unwrap(), 0.0);
        let lenient = new(r#"{"mode": "gate", "no_letters": 1.0}"#).unwrap();
        assert_eq!(lenient.score_one("42.", "zh").unwrap(), 1.0);
    }

    #[test]
    fn group_scoring_and_errors() {
        let mut gate = new(r#"{"mode": "gate"}"#).unwrap();
        let group =
            [Sample::new("p", "hello").with_language("en"), Sample::new("p", "hello").with_language("ru")];
        assert_eq!(gate.score(&group).unwrap(), [Some(1.0), Some(0.0)]);
        let err = gate.score(&[Sample::new("p", "x")]).unwrap_err();
        assert!(err.contains("sample 0 has no language"), "{err}");
        let err = gate.score(&[Sample::new("p", "x").with_language("xx")]).unwrap_err();
        assert!(err.contains("`xx`"), "{err}");
        assert!(new(r#"{"mode": "gate", "threshold": 2}"#).is_err());
        assert!(new(r#"{"mode": "gate", "language": "klingon"}"#).is_err());
        let mut fixed = new(r#"{"mode": "reward", "language": "ru"}"#).unwrap();
        assert_eq!(fixed.score(&[Sample::new("p", "привет")]).unwrap(), [Some(1.0)]);
    }
}
