//! Router plugin: LRPO's language router. Per topic a Q table over languages; for a question at step t,
//! with probability ε_t = max(0, 0.2·0.995^t) a uniform language, else one drawn from
//! softmax((Q + bias) / T_t) with T_t = max(0.3, 0.999^t). The first two rollouts of each question stay
//! in its own language. Every 5 steps: the mean reward per (topic, language) since the last update is
//! z-scored across the languages of the topic, and Q ← 0.9·Q + 0.1·z.

use babelrl_sdk::bandit::{softmax, topic_key, zscores};
use babelrl_sdk::prelude::*;
use babelrl_sdk::rng::SplitMix64;
use babelrl_sdk::router::{check_state_rows, decode_state, encode_state};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Rollouts per question kept in the question's own language.
pub const KEEP_ORIGINAL: usize = 2;
/// Steps between Q updates.
pub const UPDATE_EVERY: u32 = 5;
/// EMA weight of the old Q.
pub const Q_DECAY: f64 = 0.9;

/// `T_t = max(0.3, 0.999^t)`.
pub fn temperature(step: u64) -> f64 {
    0.999f64.powf(step as f64).max(0.3)
}

/// `ε_t = max(0, 0.2 · 0.995^t)`.
pub fn epsilon(step: u64) -> f64 {
    (0.2 * 0.995f64.powf(step as f64)).max(0.0)
}

/// `[router.config]` of the run file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Seed of the router's own generator (plugins get no system randomness).
    #[serde(default)]
    pub seed: u64,
    /// The regional term: a fixed logit added to Q per language (default 0).
    #[serde(default)]
    pub bias: BTreeMap<String, f64>,
}

/// Everything `save-state` writes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct State {
    pub languages: Vec<String>,
    /// Q per topic, one entry per language (in `languages` order).
    pub q: BTreeMap<String, Vec<f64>>,
    /// Reward sums and counts per topic and language since the last Q update.
    pub acc: BTreeMap<String, Vec<(f64, u64)>>,
    /// Distinct steps seen since the last Q update, and the last one.
    pub steps: u32,
    pub last_step: Option<u64>,
    pub rng: SplitMix64,
}

/// The router.
#[derive(Debug)]
pub struct Lrpo {
    bias: Vec<f64>,
    pub state: State,
}

impl Lrpo {
    /// Selection probabilities over languages for `topic` at `step`: ε/n + (1 − ε)·softmax((Q+bias)/T).
    pub fn probabilities(&self, topic: &str, step: u64) -> Vec<f64> {
        let n = self.bias.len();
        let q = self.state.q.get(topic);
        let logits: Vec<f64> = (0..n).map(|i| q.map_or(0.0, |q| q[i]) + self.bias[i]).collect();
        let eps = epsilon(step);
        softmax(&logits, temperature(step)).iter().map(|p| eps / n as f64 + (1.0 - eps) * p).collect()
    }

    fn update_q(&mut self) {
        for (topic, acc) in std::mem::take(&mut self.state.acc) {
            let seen: Vec<usize> = (0..acc.len()).filter(|&i| acc[i].1 > 0).collect();
            let means: Vec<f64> = seen.iter().map(|&i| acc[i].0 / acc[i].1 as f64).collect();
            let q = self.state.q.entry(topic).or_insert_with(|| vec![0.0; acc.len()]);
            for (&i, z) in seen.iter().zip(zscores(&means)) {
                q[i] = Q_DECAY * q[i] + (1.0 - Q_DECAY) * z;
            }
        }
    }
}

impl Router for Lrpo {
    type Config = Config;

    fn new(config: Config, languages: Vec<String>) -> Result<Self, String> {
        if let Some(l) = config.bias.keys().find(|l| !languages.contains(l)) {
            return Err(format!("bias names `{l}`, which is not one of the run's languages {languages:?}"));
        }
        let bias = languages.iter().map(|l| config.bias.get(l).copied().unwrap_or(0.0)).collect();
        let rng = SplitMix64::new(config.seed);
        let state =
            State { languages, q: BTreeMap::new(), acc: BTreeMap::new(), steps: 0, last_step: None, rng };
        Ok(Lrpo { bias, state })
    }

    fn choose(&mut self, request: &ChooseRequest) -> Result<Vec<String>, String> {
        let k = request.k as usize;
        let mut out = vec![request.question_language.clone(); k.min(KEEP_ORIGINAL)];
        let probs = self.probabilities(&topic_key(request.topic.as_deref()), request.step);
        let rng = &mut self.state.rng;
        while out.len() < k {
            let i = rng.weighted_index(&probs).ok_or("selection probabilities are not finite")?;
            out.push(self.state.languages[i].clone());
        }
        Ok(out)
    }

    /// Feedback for languages that are not arms (a question language outside the run's list) is ignored.
    fn update(&mut self, step: u64, feedback: &[Feedback]) -> Result<(), String> {
        let n = self.state.languages.len();
        for fb in feedback {
            if !fb.reward.is_finite() {
                return Err(format!("reward {} for {} is not finite", fb.reward, fb.language));
            }
            let Some(i) = self.state.languages.iter().position(|l| *l == fb.language) else { continue };
            let acc = self.state.acc.entry(topic_key(Some(&fb.topic))).or_insert_with(|| vec![(0.0, 0); n]);
            acc[i].0 += f64::from(fb.reward);
            acc[i].1 += 1;
        }
        if self.state.last_step != Some(step) {
            self.state.last_step = Some(step);
            self.state.steps += 1;
        }
        if self.state.steps >= UPDATE_EVERY {
            self.update_q();
            self.state.steps = 0;
        }
        Ok(())
    }

    fn save_state(&self) -> Vec<u8> {
        encode_state("lrpo-softmax", 1, &self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: State = decode_state("lrpo-softmax", 1, bytes)?;
        check_state_rows(&s.languages, &self.state.languages, s.q.values().map(Vec::as_slice))?;
        if s.acc.values().any(|a| a.len() != s.languages.len()) {
            return Err("state has an accumulator row of the wrong length".into());
        }
        self.state = s;
        Ok(())
    }
}

babelrl_sdk::export_router!(Lrpo);

#[cfg(test)]
mod tests;
