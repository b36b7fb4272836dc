//! Router plugin: UCB1 over languages, per topic. Each rollout slot takes the language maximising
//! `mean_i + sqrt(c · ln N / n_i)` (untried languages first; ties broken at random), where rewards are
//! mapped from `[reward_min, reward_max]` to [0, 1]. Within one request a chosen language counts as
//! pulled (without reward) so the k slots spread out instead of repeating one arm.

use babelrl_sdk::bandit::{check_range, topic_key, unit_reward};
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
    /// Exploration constant (2 is Auer et al.'s UCB1).
    #[serde(default = "two")]
    pub c: f64,
    /// Rollouts per question kept in the question's own language.
    #[serde(default)]
    pub keep_original: u32,
    #[serde(default)]
    pub reward_min: f64,
    #[serde(default = "one")]
    pub reward_max: f64,
}

fn two() -> f64 {
    2.0
}
fn one() -> f64 {
    1.0
}

/// Saved state: pulls and reward sums per topic and language, and the tie-breaking generator.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct State {
    pub languages: Vec<String>,
    pub stats: BTreeMap<String, Vec<(u64, f64)>>,
    pub rng: SplitMix64,
}

/// Most pulls a saved state may count in one topic (2^53: exact in f64, far from overflowing u64).
const MAX_PULLS: u64 = 1 << 53;

/// The router.
#[derive(Debug)]
pub struct Ucb1 {
    config: Config,
    pub state: State,
}

impl Router for Ucb1 {
    type Config = Config;

    fn new(config: Config, languages: Vec<String>) -> Result<Self, String> {
        check_range(config.reward_min, config.reward_max)?;
        if !(config.c >= 0.0 && config.c.is_finite()) {
            return Err(format!("c = {} must be a finite number >= 0", config.c));
        }
        let state = State { languages, stats: BTreeMap::new(), rng: SplitMix64::new(config.seed) };
        Ok(Ucb1 { config, state })
    }

    fn choose(&mut self, request: &ChooseRequest) -> Result<Vec<String>, String> {
        let k = request.k as usize;
        let n = self.state.languages.len();
        let mut out = vec![request.question_language.clone(); k.min(self.config.keep_original as usize)];
        let zero = vec![(0, 0.0); n];
        let stats = self.state.stats.get(&topic_key(request.topic.as_deref())).unwrap_or(&zero);
        let mut pulls: Vec<u64> = stats.iter().map(|s| s.0).collect();
        while out.len() < k {
            let total = pulls.iter().fold(0u64, |t, &p| t.saturating_add(p));
            let index = |i: usize| match pulls[i] {
                0 => f64::INFINITY,
                p => {
                    stats[i].1 / stats[i].0.max(1) as f64
                        + (self.config.c * (total as f64).ln() / p as f64).sqrt()
                }
            };
            let scores: Vec<f64> = (0..n).map(index).collect();
            let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let ties: Vec<usize> = (0..n).filter(|&i| scores[i] == best).collect();
            let i = ties[self.state.rng.below(ties.len())];
            pulls[i] = pulls[i].saturating_add(1);
            out.push(self.state.languages[i].clone());
        }
        Ok(out)
    }

    /// Feedback for languages that are not arms is ignored.
    fn update(&mut self, _step: u64, feedback: &[Feedback]) -> Result<(), String> {
        let n = self.state.languages.len();
        for fb in feedback {
            let r = unit_reward(fb.reward, self.config.reward_min, self.config.reward_max)?;
            let Some(i) = self.state.languages.iter().position(|l| *l == fb.language) else { continue };
            let stats =
                self.state.stats.entry(topic_key(Some(&fb.topic))).or_insert_with(|| vec![(0, 0.0); n]);
            stats[i].0 = stats[i].0.saturating_add(1);
            stats[i].1 += r;
        }
        Ok(())
    }

    fn save_state(&self) -> Vec<u8> {
        encode_state("ucb1", 1, &self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: State = decode_state("ucb1", 1, bytes)?;
        let sums: Vec<Vec<f64>> = s.stats.values().map(|v| v.iter().map(|x| x.1).collect()).collect();
        check_state_rows(&s.languages, &self.state.languages, sums.iter().map(Vec::as_slice))?;
        // Pull counts stay far below where their sum (ln N of the bonus) could overflow.
        if s.stats
            .values()
            .any(|v| v.iter().try_fold(0u64, |t, x| t.checked_add(x.0)).is_none_or(|t| t > MAX_PULLS))
        {
            return Err(format!("state has more than {MAX_PULLS} pulls in one topic"));
        }
        self.state = s;
        Ok(())
    }
}

babelrl_sdk::export_router!(Ucb1);

#[cfg(test)]
mod tests {
    use super::*;
    use babelrl_sdk::bandit::{arm_names, simulate_bernoulli};

    fn new(json: &str, n: usize) -> Result<Ucb1, String> {
        Ucb1::new(babelrl_sdk::reward::parse_config(json)?, arm_names(n))
    }

    #[test]
    fn concentrates_on_the_best_arm() {
        for seed in 0..5 {
            let mut r = new(&format!(r#"{{"seed": {seed}}}"#), 4).unwrap();
            let pulls = simulate_bernoulli(&mut r, &[0.2, 0.4, 0.6, 0.8], 2000, 100 + seed).unwrap();
            let best = pulls[3] as f64 / 2000.0;
            eprintln!("seed {seed}: pulls {pulls:?}");
            assert!(best > 0.6 && pulls.iter().all(|&p| p <= pulls[3]), "seed {seed}: {pulls:?}");
            assert!(pulls.iter().all(|&p| p > 0), "every arm explored: {pulls:?}");
        }
    }

    #[test]
    fn index_formula_and_spread_within_a_request() {
        let mut r = new(r#"{"keep_original": 1}"#, 3).unwrap();
        // Untried arms first: one request of k = 4 keeps 1 and tries each of the 3 arms once.
        let req = ChooseRequest {
            question_id: "q".into(),
            topic: None,
            question_language: "x".into(),
            k: 4,
            step: 0,
        };
        let mut out = r.choose(&req).unwrap();
        assert_eq!(out.remove(0), "x");
        out.sort();
        assert_eq!(out, arm_names(3));
        // arm0: 2 pulls mean 0.5 → 0.5 + sqrt(2 ln 10 / 2) = 2.0174; arm1: 4 pulls mean 1 → 1 + sqrt(2 ln 10 / 4)
        // = 2.0730; arm2: 4 pulls mean 0 → 1.0730. So arm1 is chosen.
        r.state.stats.insert("_".into(), vec![(2, 1.0), (4, 4.0), (4, 0.0)]);
        let req = ChooseRequest { k: 2, ..req };
        assert_eq!(r.choose(&req).unwrap(), ["x", "arm1"]);
        r.update(0, &[Feedback { topic: "_".into(), language: "arm0".into(), reward: 7.0 }]).unwrap();
        assert_eq!(r.state.stats["_"][0], (3, 2.0), "rewards above reward_max clip to 1");
        let saved = r.save_state();
        let mut b = new("{}", 3).unwrap();
        b.load_state(&saved).unwrap();
        assert_eq!(b.state, r.state);
        assert!(b.load_state(b"[1,2]").is_err());
        assert!(new(r#"{"reward_min": 1, "reward_max": 0}"#, 2).is_err());
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
        eprintln!("ucb1: {refused} corrupt states refused, {accepted} accepted");
        assert!(refused > accepted);
    }
}
