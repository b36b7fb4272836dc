//! Several reward plugins combined per run with weights, as TRL's `reward_funcs` / `reward_weights`:
//! the reward of a sample is the weighted sum of the plugins' scores, where a `None` score is skipped
//! (TRL turns `None` into NaN and sums with `nansum`). A sample no plugin scored gets 0, as in TRL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Sample;
use super::limits::{Capabilities, PluginLimits};
use super::reward::RewardPlugin;
use super::services::HostServices;
use crate::{Error, Result};

/// What a [`RewardSet`] does when one plugin fails on a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail the whole group with the plugin's error (the default: a broken reward should stop a run).
    #[default]
    Fail,
    /// Treat the failing plugin's scores for this group as `None` (skipped in the sum), log the error
    /// and report it in [`GroupRewards::skipped`]. The plugin serves the next group afresh.
    Skip,
}

/// One reward plugin of a run, as written in the run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    /// Name used in logs, metrics and errors; unique within the run.
    pub name: String,
    /// The component file (`.wasm`); relative paths are taken from the run config's directory.
    pub path: PathBuf,
    /// Weight of this reward in the sum.
    #[serde(default = "one")]
    pub weight: f32,
    /// The plugin's own settings, passed to its `configure` as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Resource limits per call.
    #[serde(default)]
    pub limits: PluginLimits,
    /// Capabilities granted (none by default).
    #[serde(default)]
    pub capabilities: Capabilities,
}

fn one() -> f32 {
    1.0
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The reward part of a TOML run file (`docs/plugins-host.md`): `on_error` and the `[[reward]]` tables.
/// Other sections of the run file are left to their own readers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunRewards {
    /// What a failing plugin does to its group (default `fail`).
    #[serde(default)]
    pub on_error: OnError,
    /// The `[[reward]]` tables, in order (`[[rewards]]` is read too).
    #[serde(default, rename = "reward", alias = "rewards")]
    pub rewards: Vec<RewardSpec>,
}

impl RunRewards {
    /// Parses and checks the reward part of a run file: at least one `[[reward]]`, names unique,
    /// weights finite, limits valid ([`PluginLimits::validate`]). `path` is named in every error.
    ///
    /// ```
    /// # use babelrl::plugin::RunRewards;
    /// let run = RunRewards::from_toml(
    ///     "[[reward]]\nname = \"em\"\npath = \"exact_match.wasm\"\nlimits = { deadline_ms = 500 }\n",
    ///     std::path::Path::new("run.toml"),
    /// )?;
    /// assert_eq!((run.rewards[0].weight, run.rewards[0].limits.deadline_ms), (1.0, 500));
    /// # Ok::<(), babelrl::Error>(())
    /// ```
    pub fn from_toml(text: &str, path: &Path) -> Result<RunRewards> {
        let bad = |message: String| Error::Config { path: path.to_path_buf(), message };
        let run: RunRewards = toml::from_str(text).map_err(|e| bad(format!("invalid run file: {e}")))?;
        if run.rewards.is_empty() {
            return Err(bad("no [[reward]] table: a run needs at least one reward plugin".into()));
        }
        for (i, spec) in run.rewards.iter().enumerate() {
            let at = format!("reward[{i}] (`{}`)", spec.name);
            if !spec.weight.is_finite() {
                return Err(bad(format!("{at}: weight {} is not finite", spec.weight)));
            }
            if run.rewards[..i].iter().any(|s| s.name == spec.name) {
                return Err(bad(format!("{at}: two rewards share this name")));
            }
            spec.limits.validate().map_err(|m| bad(format!("{at}: {m}")))?;
        }
        Ok(run)
    }
}

/// The rewards of one group.
#[derive(Debug)]
pub struct GroupRewards {
    /// Weighted sum per sample over the plugins that scored it (0 where none did).
    pub total: Vec<f32>,
    /// Each plugin's raw scores (plugin order), for metrics.
    pub per_plugin: Vec<Vec<Option<f32>>>,
    /// Errors of plugins skipped for this group (`on_error = "skip"` only).
    pub skipped: Vec<Error>,
}

/// Reward plugins with weights, scored together.
#[derive(Debug)]
pub struct RewardSet {
    plugins: Vec<RewardPlugin>,
    weights: Vec<f32>,
    on_error: OnError,
}

impl RewardSet {
    /// A set from loaded plugins and their weights. Names must be unique and weights finite.
    pub fn new(members: Vec<(RewardPlugin, f32)>, on_error: OnError) -> Result<RewardSet> {
        if members.is_empty() {
            return Err(Error::Input("a reward set needs at least one reward plugin".into()));
        }
        let mut plugins = Vec::with_capacity(members.len());
        let mut weights = Vec::with_capacity(members.len());
        for (p, w) in members {
            if !w.is_finite() {
                return Err(Error::Plugin {
                    plugin: p.name().into(),
                    message: format!("weight {w} is not finite"),
                });
            }
            if plugins.iter().any(|q: &RewardPlugin| q.name() == p.name()) {
                return Err(Error::Plugin {
                    plugin: p.name().into(),
                    message: "two reward plugins share this name".into(),
                });
            }
            plugins.push(p);
            weights.push(w);
        }
        Ok(RewardSet { plugins, weights, on_error })
    }

    /// Loads every plugin of `specs` (paths relative to `base_dir`) with the run's `services`.
    pub fn load(
        specs: &[RewardSpec],
        on_error: OnError,
        base_dir: &Path,
        services: Arc<dyn HostServices>,
    ) -> Result<RewardSet> {
        let mut members = Vec::with_capacity(specs.len());
        for spec in specs {
            let path = base_dir.join(&spec.path);
            let config = serde_json::to_string(&spec.config).expect("a JSON value serializes");
            let plugin = RewardPlugin::load(
                &path,
                &spec.name,
                &config,
                &spec.limits,
                &spec.capabilities,
                services.clone(),
            )?;
            members.push((plugin, spec.weight));
        }
        RewardSet::new(members, on_error)
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// The weights, in plugin order.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// Scores one group with every plugin and combines the scores.
    pub fn score(&mut self, group: &[Sample]) -> Result<GroupRewards> {
        let mut per_plugin = Vec::with_capacity(self.plugins.len());
        let mut skipped = Vec::new();
        for plugin in &mut self.plugins {
            match plugin.score(group) {
                Ok(scores) => per_plugin.push(scores),
                Err(e) if self.on_error == OnError::Skip => {
                    log::warn!("skipping a reward for this group: {e}");
                    skipped.push(e);
                    per_plugin.push(vec![None; group.len()]);
                }
                Err(e) => return Err(e),
            }
        }
        let total = combine(&per_plugin, &self.weights, group.len());
        Ok(GroupRewards { total, per_plugin, skipped })
    }
}

/// `total[i] = Σ_j weights[j] · scores[j][i]` over the plugins `j` with a score for sample `i` (TRL's
/// `nansum` of weighted rewards); 0 for a sample no plugin scored.
pub fn combine(scores: &[Vec<Option<f32>>], weights: &[f32], samples: usize) -> Vec<f32> {
    (0..samples).map(|i| scores.iter().zip(weights).filter_map(|(s, w)| s[i].map(|v| w * v)).sum()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_is_a_weighted_nansum() {
        let scores = vec![vec![Some(1.0), None, Some(0.5), None], vec![Some(2.0), Some(4.0), None, None]];
        let total = combine(&scores, &[0.5, 2.0], 4);
        // Sample 0: 0.5·1 + 2·2; sample 1: only the second plugin; sample 2: only the first; sample 3: none.
        assert_eq!(total, vec![4.5, 8.0, 0.25, 0.0]);
    }

    #[test]
    fn spec_refuses_unknown_fields() {
        let bad = r#"{"name": "a", "path": "a.wasm", "wieght": 2}"#;
        let e = serde_json::from_str::<RewardSpec>(bad).unwrap_err().to_string();
        assert!(e.contains("wieght"), "{e}");
        let bad_limit = r#"{"name": "a", "path": "a.wasm", "limits": {"deadline": 5}}"#;
        assert!(serde_json::from_str::<RewardSpec>(bad_limit).is_err());
        let ok = r#"{"name": "a", "path": "a.wasm", "limits": {"deadline_ms": 5}, "capabilities": {"clock": true}}"#;
        let spec: RewardSpec = serde_json::from_str(ok).unwrap();
        assert_eq!((spec.weight, spec.limits.deadline_ms, spec.limits.memory_mib), (1.0, 5, 128));
        assert!(spec.capabilities.clock && !spec.capabilities.random && spec.capabilities.env.is_empty());
    }
}
