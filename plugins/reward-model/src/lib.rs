//! Reward plugin: scores each (prompt, completion) with the run's reward model (host
//! `reward-model-score`), optionally squashed: `raw` = the score, `sigmoid` = σ((score − shift) / scale).

use babelrl_sdk::host;
use babelrl_sdk::prelude::*;
use serde::Deserialize;

/// How a reward-model score becomes the reward.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Raw,
    Sigmoid,
}

/// `[rewards.config]` of the run file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "raw")]
    pub transform: Transform,
    #[serde(default)]
    pub shift: f32,
    #[serde(default = "one")]
    pub scale: f32,
}

fn raw() -> Transform {
    Transform::Raw
}
fn one() -> f32 {
    1.0
}

/// The reward.
#[derive(Debug)]
pub struct RewardModel(Config);

impl RewardModel {
    /// Scores a group through `rm` (the host's reward model in the engine, a fake in tests).
    pub fn score_with<F>(&self, group: &[Sample], rm: F) -> Result<Vec<Option<f32>>, String>
    where
        F: FnOnce(&[String], &[String]) -> Result<Vec<f32>, String>,
    {
        let prompts: Vec<String> = group.iter().map(|s| s.prompt.clone()).collect();
        let completions: Vec<String> = group.iter().map(|s| s.completion.clone()).collect();
        let scores = rm(&prompts, &completions)?;
        if scores.len() != group.len() {
            return Err(format!("reward model returned {} scores for {} samples", scores.len(), group.len()));
        }
        let c = &self.0;
        let f = |x: f32| match c.transform {
            Transform::Raw => x,
            Transform::Sigmoid => 1.0 / (1.0 + (-(x - c.shift) / c.scale).exp()),
        };
        Ok(scores.into_iter().map(|x| Some(f(x))).collect())
    }
}

impl Reward for RewardModel {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if !(config.scale > 0.0 && config.scale.is_finite() && config.shift.is_finite()) {
            return Err(format!(
                "need scale > 0 and a finite shift, got {} / {}",
                config.scale, config.shift
            ));
        }
        Ok(RewardModel(config))
    }

    fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>, String> {
        self.score_with(group, host::reward_model_score)
    }
}

babelrl_sdk::export_reward!(RewardModel);

#[cfg(test)]
mod tests {
    use super::*;

    fn new(json: &str) -> Result<RewardModel, String> {
        RewardModel::new(babelrl_sdk::reward::parse_config(json)?)
    }

    #[test]
    fn raw_and_sigmoid() {
        let group = [Sample::new("p1", "a"), Sample::new("p2", "bb")];
        let fake = |p: &[String], c: &[String]| {
            assert_eq!((p, c), (&["p1".to_string(), "p2".into()][..], &["a".to_string(), "bb".into()][..]));
            Ok(vec![0.0, 2.0])
        };
        assert_eq!(new("{}").unwrap().score_with(&group, fake).unwrap(), [Some(0.0), Some(2.0)]);
        let sig = new(r#"{"transform": "sigmoid", "shift": 1.0, "scale": 0.5}"#).unwrap();
        let got = sig.score_with(&group, fake).unwrap();
        // σ((0 − 1)/0.5) = σ(−2) = 0.11920292; σ(2) = 0.88079708
        assert!(
            (got[0].unwrap() - 0.119_202_92).abs() < 1e-6 && (got[1].unwrap() - 0.880_797_1).abs() < 1e-6
        );
        let short = new("{}").unwrap().score_with(&group, |_, _| Ok(vec![1.0])).unwrap_err();
        assert!(short.contains("1 scores for 2 samples"), "{short}");
        assert!(new(r#"{"scale": 0}"#).is_err());
        // Natively there is no engine: the host call is an error, not a panic.
        assert!(new("{}").unwrap().score(&group).unwrap_err().contains("native"));
    }
}
