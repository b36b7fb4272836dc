//! Reward plugins: load a `reward`-world component, configure it, score groups, and check what it
//! returns. A plugin that traps is re-instantiated (and re-configured) before its next call.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::Sample;
use super::bindings::reward::{Reward, RewardPre};
use super::limits::{Capabilities, PluginLimits};
use super::runtime::{World, check_world};
use super::sandbox::{PluginState, Sandbox, check_output, guest_message};
use super::services::HostServices;
use crate::Result;

struct Live {
    store: Store<PluginState>,
    bindings: Reward,
}

/// A loaded reward plugin. Not `Sync`: one caller scores at a time (`&mut self`).
pub struct RewardPlugin {
    sandbox: Sandbox,
    pre: RewardPre<PluginState>,
    config_json: String,
    live: Option<Live>,
    /// How many times the plugin was re-instantiated after a failure.
    restarts: u64,
    /// Time of the last successful instantiate + configure.
    pub(crate) last_start: Duration,
}

impl RewardPlugin {
    /// Loads the component at `path` as reward plugin `name`, links it against the host (WASI with only
    /// `caps`, plus `services`), instantiates it and calls `configure(config_json)`.
    ///
    /// Errors name the plugin: unreadable file, not a component, wrong world, missing imports, a
    /// `configure` that fails or breaks a limit.
    pub fn load(
        path: &Path,
        name: &str,
        config_json: &str,
        limits: &PluginLimits,
        caps: &Capabilities,
        services: Arc<dyn HostServices>,
    ) -> Result<RewardPlugin> {
        let sandbox = Sandbox::new(name, limits, caps, services)?;
        let component = sandbox.rt.load(path, name, limits)?;
        check_world(&component, &sandbox.rt.engine, World::Reward, name)?;
        let linker = sandbox.linker()?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            sandbox.error(format!("cannot be linked: {e:#} (built against another plugin ABI?)"))
        })?;
        let pre = RewardPre::new(pre).map_err(|e| {
            sandbox.error(format!("its exports do not match the babelrl:plugin@0.1.0 reward world: {e:#}"))
        })?;
        let mut plugin = RewardPlugin {
            sandbox,
            pre,
            config_json: config_json.to_string(),
            live: None,
            restarts: 0,
            last_start: Duration::ZERO,
        };
        plugin.start()?;
        Ok(plugin)
    }

    /// The plugin's name, as used in errors and logs.
    pub fn name(&self) -> &str {
        &self.sandbox.name
    }

    /// The limits in force.
    pub fn limits(&self) -> &PluginLimits {
        &self.sandbox.limits
    }

    /// How many times the plugin has been re-instantiated after a failed call.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Instantiates afresh and runs `configure`.
    fn start(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let mut store = self.sandbox.new_store();
        let bindings = self.sandbox.call(&mut store, "instantiation", |s| self.pre.instantiate(s))?;
        let config = &self.config_json;
        let configured =
            self.sandbox.call(&mut store, "configure", |s| bindings.call_configure(s, config))?;
        if let Err(message) = configured {
            check_output(&self.sandbox, "configure", message.len())?;
            return Err(self
                .sandbox
                .error(format!("configure returned an error: {}", guest_message(&message))));
        }
        self.live = Some(Live { store, bindings });
        self.last_start = t0.elapsed();
        Ok(())
    }

    /// Scores one group: one `Option<f32>` per sample, in order (`None`: the plugin gives no score).
    ///
    /// Fails, naming the plugin, when it breaks a limit, traps, returns an error, returns the wrong
    /// number of scores or a NaN/infinite score. After a trap the next call runs on a fresh instance.
    pub fn score(&mut self, group: &[Sample]) -> Result<Vec<Option<f32>>> {
        if self.live.is_none() {
            self.restarts += 1;
            self.start()?;
        }
        let live = self.live.as_mut().expect("started above");
        let out = self.sandbox.call(&mut live.store, "score", |s| live.bindings.call_score(s, group));
        let scores = match out {
            Ok(Ok(scores)) => scores,
            Ok(Err(message)) => {
                check_output(&self.sandbox, "score", message.len())?;
                return Err(self
                    .sandbox
                    .error(format!("score returned an error: {}", guest_message(&message))));
            }
            Err(e) => {
                self.live = None;
                return Err(e);
            }
        };
        check_output(&self.sandbox, "score", scores.len() * 8)?;
        check_scores(&self.sandbox, &scores, group.len())?;
        Ok(scores)
    }
}

/// One score per sample, each finite or `None`.
fn check_scores(sandbox: &Sandbox, scores: &[Option<f32>], samples: usize) -> Result<()> {
    if scores.len() != samples {
        return Err(sandbox.error(format!("score returned {} scores for {samples} samples", scores.len())));
    }
    for (i, s) in scores.iter().enumerate() {
        if let Some(v) = s {
            if v.is_nan() {
                return Err(sandbox.error(format!("score returned NaN for sample {i}")));
            }
            if v.is_infinite() {
                let sign = if *v > 0.0 { "+" } else { "-" };
                return Err(sandbox.error(format!("score returned {sign}inf for sample {i}")));
            }
        }
    }
    Ok(())
}

impl std::fmt::Debug for RewardPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardPlugin")
            .field("name", &self.sandbox.name)
            .field("restarts", &self.restarts)
            .finish()
    }
}
