//! Router plugin: EXP3 over languages, per topic. `p_i = (1 − γ)·w_i / Σw + γ / K`; a reward r (mapped
//! from `[reward_min, reward_max]` to [0, 1]) for language i updates `w_i ← w_i · exp(γ · r / (p_i · K))`,
//! with p taken before the update call (the probabilities the rollouts were drawn from). Log-weights.

use babelrl_sdk::bandit::{check_range, softmax, topic_key, unit_reward};
use babelrl_sdk::prelude::*;
use babelrl_sdk::rng::SplitMix64;
use babelrl_sdk::router::{check_state_rows, decode_state, encode_state};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[router.config]` of the run file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub seed: u64,
    /// Exploration rate γ in (0, 1].
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Rollouts per question kept in the question's own language.
    #[serde(default)]
    pub keep_original: u32,
    #[serde(default)]
    pub reward_min: f64,
    #[serde(default = "one")]
    pub reward_max: f64,
}

fn default_gamma() -> f64 {
    0.1
}
fn one() -> f64 {
    1.0
}

/// Saved state: log-weights per topic and language, and the generator.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct State {
    pub languages: Vec<String>,
    pub log_w: BTreeMap<String, Vec<f64>>,
    pub rng: SplitMix64,
}

/// The router.
#[derive(Debug)]
pub struct Exp3 {
    config: Config,
    pub state: State,
}

impl Exp3 {
    /// The selection probabilities of `topic`.
    pub fn probabilities(&self, topic: &str) -> Vec<f64> {
        let k = self.state.languages.len();
        let w = self.state.log_w.get(topic).cloned().unwrap_or_else(|| vec![0.0; k]);
        let g = self.config.gamma;
        softmax(&w, 1.0).iter().map(|p| (1.0 - g) * p + g / k as f64).collect()
    }
}

impl Router for Exp3 {
    type Config = Config;

    fn new(config: Config, languages: Vec<String>) -> Result<Self, String> {
        check_range(config.reward_min, config.reward_max)?;
        if !(config.gamma > 0.0 && config.gamma <= 1.0) {
            return Err(format!("gamma = {} must be in (0, 1]", config.gamma));
        }
        let state = State { languages, log_w: BTreeMap::new(), rng: SplitMix64::new(config.seed) };
        Ok(Exp3 { config, state })
    }

    fn choose(&mut self, request: &ChooseRequest) -> Result<Vec<String>, String> {
        let k = request.k as usize;
        let mut out = vec![request.question_language.clone(); k.min(self.config.keep_original as usize)];
        let p = self.probabilities(&topic_key(request.topic.as_deref()));
        while out.len() < k {
            let i = self.state.rng.weighted_index(&p).ok_or("selection probabilities are not finite")?;
            out.push(self.state.languages[i].clone());
        }
        Ok(out)
    }

    /// Feedback for languages that are not arms is ignored.
    fn update(&mut self, _step: u64, feedback: &[Feedback]) -> Result<(), String> {
        let k = self.state.languages.len();
        let mut probs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for fb in feedback {
            let r = unit_reward(fb.reward, self.config.reward_min, self.config.reward_max)?;
            let Some(i) = self.state.languages.iter().position(|l| *l == fb.language) else { continue };
            let topic = topic_key(Some(&fb.topic));
            let p = probs.entry(topic.clone()).or_insert_with(|| self.probabilities(&topic))[i];
            let w = self.state.log_w.entry(topic).or_insert_with(|| vec![0.0; k]);
            w[i] += self.config.gamma * r / (p * k as f64);
        }
        for w in self.state.log_w.values_mut() {
            let max = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            w.iter_mut().for_each(|x| *x -= max);
        }
        Ok(())
    }

    fn save_state(&self) -> Vec<u8> {
        encode_state("exp3", 1, &self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: State = decode_state("exp3", 1, bytes)?;
        check_state_rows(&s.languages, &self.state.languages, s.log_w.values().map(Vec::as_slice))?;
        self.state = s;
        Ok(())
    }
}

babelrl_sdk::export_router!(Exp3);

#[cfg(test)]
mod tests {
    use super::*;
    use babelrl_sdk::bandit::{arm_names, simulate_bernoulli};

    fn new(json: &str, n: usize) -> Result<Exp3, String> {
        Exp3::new(babelrl_sdk::reward::parse_config(json)?, arm_names(n))
    }

    #[test]
    fn concentrates_on_the_best_arm() {
        for seed in 0..5 {
            let mut r = new(&format!(r#"{{"seed": {seed}}}"#), 4).unwrap();
            let pulls = simulate_bernoulli(&mut r, &[0.2, 0.4, 0.6, 0.8], 2000, 100 + seed).unwrap();
            let best = pulls[3] as f64 / 2000.0;
            eprintln!("seed {seed}: pulls {pulls:?}");
            assert!(best > 0.6 && pulls.iter().all(|&p| p <= pulls[3]), "seed {seed}: {pulls:?}");
        }
    }

    #[test]
    fn update_formula_by_hand() {
        // K = 2, γ = 0.5, equal weights: p = (0.5, 0.5). Reward 1 on arm1: log w1 += 0.5·1/(0.5·2) = 0.5;
        // then p1 = 0.5·e^0.5/(1 + e^0.5) + 0.25 = 0.5612. Two feedbacks in one call use the same p.
        let mut r = new(r#"{"gamma": 0.5}"#, 2).unwrap();
        let fb = |reward| Feedback { topic: "t".into(), language: "arm1".into(), reward };
        r.update(0, &[fb(1.0)]).unwrap();
        assert!((r.state.log_w["t"][1] - r.state.log_w["t"][0] - 0.5).abs() < 1e-12);
        let e = 0.5f64.exp();
        assert!((r.probabilities("t")[1] - (0.5 * e / (1.0 + e) + 0.25)).abs() < 1e-12);
        let mut b = new(r#"{"gamma": 0.5}"#, 2).unwrap();
        b.update(0, &[fb(1.0), fb(1.0)]).unwrap();
        assert!((b.state.log_w["t"][1] - b.state.log_w["t"][0] - 1.0).abs() < 1e-12);
        assert!(r.update(1, &[fb(f32::NAN)]).is_err());
        let saved = r.save_state();
        b.load_state(&saved).unwrap();
        assert_eq!(b.state, r.state);
        assert!(b.load_state(b"{}").is_err());
        assert!(new(r#"{"gamma": 0}"#, 2).is_err());
    }

    /// Checkpoints corrupted node by node are refused, or leave a router that still works.
    #[test]
    fn corrupt_states_are_refused_or_harmless() {
        let mut r = new("{}", 3).unwrap();
        simulate_bernoulli(&mut r, &[0.2, 0.5, 0.8], 40, 1).unwrap();
        let (refused, accepted) = babelrl_sdk::state_check::check_corrupt_states(
            || new("{}", 3).unwrap(),
            &arm_names(3),
            &r.save_state(),
        );
        eprintln!("exp3: {refused} corrupt states refused, {accepted} accepted");
        assert!(refused > accepted);
    }
}
