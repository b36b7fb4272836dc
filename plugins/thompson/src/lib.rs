//! Router plugin: Thompson sampling over languages, per topic; each rollout slot takes the language with
//! the largest posterior draw. `model = "beta"`: Beta(α₀ + Σr, β₀ + Σ(1 − r)) with rewards mapped from
//! `[reward_min, reward_max]` to [0, 1] (fractional Beta–Bernoulli update). `model = "gaussian"`: raw
//! rewards, draw N(Σr / (n + 1), σ² / (n + 1)) (unit-weight prior at 0, known noise σ).

use babelrl_sdk::bandit::{check_range, topic_key, unit_reward};
use babelrl_sdk::prelude::*;
use babelrl_sdk::rng::SplitMix64;
use babelrl_sdk::router::{check_state_rows, decode_state, encode_state};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Posterior family.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    Beta,
    Gaussian,
}

/// `[router.config]` of the run file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "beta")]
    pub model: Model,
    /// Rollouts per question kept in the question's own language.
    #[serde(default)]
    pub keep_original: u32,
    #[serde(default)]
    pub reward_min: f64,
    #[serde(default = "one")]
    pub reward_max: f64,
    /// Beta prior α₀, β₀.
    #[serde(default = "one")]
    pub prior_alpha: f64,
    #[serde(default = "one")]
    pub prior_beta: f64,
    /// Gaussian noise σ.
    #[serde(default = "one")]
    pub sigma: f64,
}

fn beta() -> Model {
    Model::Beta
}
fn one() -> f64 {
    1.0
}

/// Saved state: per topic and language (n, Σ reward) in the model's reward scale, and the generator.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct State {
    pub languages: Vec<String>,
    pub stats: BTreeMap<String, Vec<(f64, f64)>>,
    pub rng: SplitMix64,
}

/// The router.
#[derive(Debug)]
pub struct Thompson {
    c: Config,
    pub state: State,
}

impl Router for Thompson {
    type Config = Config;

    fn new(c: Config, languages: Vec<String>) -> Result<Self, String> {
        check_range(c.reward_min, c.reward_max)?;
        if !(c.prior_alpha > 0.0 && c.prior_beta > 0.0 && c.sigma > 0.0) {
            return Err("prior_alpha, prior_beta and sigma must be > 0".into());
        }
        let state = State { languages, stats: BTreeMap::new(), rng: SplitMix64::new(c.seed) };
        Ok(Thompson { c, state })
    }

    fn choose(&mut self, request: &ChooseRequest) -> Result<Vec<String>, String> {
        let k = request.k as usize;
        let mut out = vec![request.question_language.clone(); k.min(self.c.keep_original as usize)];
        let zero = vec![(0.0, 0.0); self.state.languages.len()];
        let stats = self.state.stats.get(&topic_key(request.topic.as_deref())).unwrap_or(&zero);
        let rng = &mut self.state.rng;
        while out.len() < k {
            let draw = |&(n, sum): &(f64, f64)| match self.c.model {
                Model::Beta => rng.beta(self.c.prior_alpha + sum, self.c.prior_beta + n - sum),
                Model::Gaussian => sum / (n + 1.0) + self.c.sigma / (n + 1.0).sqrt() * rng.normal(),
            };
            let draws: Vec<f64> = stats.iter().map(draw).collect();
            let best = (0..draws.len()).max_by(|&a, &b| draws[a].total_cmp(&draws[b])).unwrap_or(0);
            out.push(self.state.languages[best].clone());
        }
        Ok(out)
    }

    /// Feedback for languages that are not arms is ignored.
    fn update(&mut self, _step: u64, feedback: &[Feedback]) -> Result<(), String> {
        let n = self.state.languages.len();
        for fb in feedback {
            let r = match self.c.model {
                Model::Beta => unit_reward(fb.reward, self.c.reward_min, self.c.reward_max)?,
                Model::Gaussian if fb.reward.is_finite() => f64::from(fb.reward),
                Model::Gaussian => return Err(format!("reward {} is not finite", fb.reward)),
            };
            let Some(i) = self.state.languages.iter().position(|l| *l == fb.language) else { continue };
            let stats =
                self.state.stats.entry(topic_key(Some(&fb.topic))).or_insert_with(|| vec![(0.0, 0.0); n]);
            stats[i].0 += 1.0;
            stats[i].1 += r;
        }
        Ok(())
    }

    fn save_state(&self) -> Vec<u8> {
        encode_state("thompson", 1, &self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: State = decode_state("thompson", 1, bytes)?;
        // Counts and sums as rows of their own: lengths and finiteness checked by the SDK.
        let rows: Vec<Vec<f64>> = s
            .stats
            .values()
            .flat_map(|v| [v.iter().map(|x| x.0).collect(), v.iter().map(|x| x.1).collect()])
            .collect();
        check_state_rows(&s.languages, &self.state.languages, rows.iter().map(Vec::as_slice))?;
        if s.stats.values().flatten().any(|&(n, _)| n < 0.0) {
            return Err("state has a negative count".into());
        }
        // Beta rewards lie in [0, 1], so 0 ≤ Σr ≤ n; outside it a Beta parameter could reach ≤ 0.
        if self.c.model == Model::Beta
            && s.stats.values().flatten().any(|&(n, sum)| !(0.0..=n).contains(&sum))
        {
            return Err("state has a reward sum outside [0, count] for the beta model".into());
        }
        self.state = s;
        Ok(())
    }
}

babelrl_sdk::export_router!(Thompson);

#[cfg(test)]
mod tests {
    use super::*;
    use babelrl_sdk::bandit::{arm_names, simulate_bernoulli};

    fn new(json: &str, n: usize) -> Result<Thompson, String> {
        Thompson::new(babelrl_sdk::reward::parse_config(json)?, arm_names(n))
    }

    #[test]
    fn concentrates_on_the_best_arm_beta_and_gaussian() {
        for model in ["beta", "gaussian"] {
            for seed in 0..5 {
                let mut r =
                    new(&format!(r#"{{"seed": {seed}, "model": "{model}", "sigma": 0.5}}"#), 4).unwrap();
                let pulls = simulate_bernoulli(&mut r, &[0.2, 0.4, 0.6, 0.8], 2000, 100 + seed).unwrap();
                let best = pulls[3] as f64 / 2000.0;
                eprintln!("{model} seed {seed}: pulls {pulls:?}");
                assert!(best > 0.6 && pulls.iter().all(|&p| p <= pulls[3]), "{model} seed {seed}: {pulls:?}");
            }
        }
    }

    #[test]
    fn posterior_updates_and_state() {
        let mut r = new(r#"{"reward_min": -1, "reward_max": 1, "keep_original": 2}"#, 2).unwrap();
        let fb = |language: &str, reward| Feedback { topic: "t".into(), language: language.into(), reward };
        // −1 → 0, 0 → 0.5, 1 → 1 on the unit scale; "zz" is not an arm and is ignored.
        r.update(0, &[fb("arm0", -1.0), fb("arm0", 0.0), fb("arm1", 1.0), fb("zz", 1.0)]).unwrap();
        assert_eq!(r.state.stats["t"], [(2.0, 0.5), (1.0, 1.0)]);
        // A near-certain posterior wins the draw: arm1 with Beta(1 + 500, 1), arm0 with Beta(1, 1 + 500).
        r.state.stats.insert("t".into(), vec![(500.0, 0.0), (500.0, 500.0)]);
        let req = ChooseRequest {
            question_id: "q".into(),
            topic: Some("t".into()),
            question_language: "x".into(),
            k: 5,
            step: 0,
        };
        assert_eq!(r.choose(&req).unwrap(), ["x", "x", "arm1", "arm1", "arm1"]);
        let saved = r.save_state();
        let mut b = new("{}", 2).unwrap();
        b.load_state(&saved).unwrap();
        assert_eq!(b.state, r.state);
        assert!(b.load_state(b"not json").is_err());
        assert!(new(r#"{"sigma": 0}"#, 2).is_err());
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
        eprintln!("thompson: {refused} corrupt states refused, {accepted} accepted");
        assert!(refused > accepted);
    }
}
