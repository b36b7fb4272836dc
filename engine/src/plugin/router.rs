//! Router plugins: load a `router`-world component and drive it (configure, choose, update, save and
//! load state), checking every answer. After a trap the router is re-instantiated, re-configured and
//! given back the last state it saved or loaded, so it loses at most the learning since then.

use std::path::Path;
use std::sync::Arc;

use wasmtime::Store;

use super::bindings::reward::babelrl::plugin::types::{ChooseRequest, Feedback};
use super::bindings::router::{Router, RouterPre};
use super::limits::{Capabilities, PluginLimits};
use super::runtime::{World, check_world};
use super::sandbox::{PluginState, Sandbox, check_output, guest_message};
use super::services::HostServices;
use super::text::sanitize;
use crate::Result;

struct Live {
    store: Store<PluginState>,
    bindings: Router,
}

/// A loaded router plugin.
pub struct RouterPlugin {
    sandbox: Sandbox,
    pre: RouterPre<PluginState>,
    config_json: String,
    languages: Vec<String>,
    /// The last state the router saved or accepted, replayed after a re-instantiation.
    last_state: Option<Vec<u8>>,
    live: Option<Live>,
    restarts: u64,
}

impl RouterPlugin {
    /// Loads the component at `path` as router `name` and calls `configure(config_json, languages)`.
    pub fn load(
        path: &Path,
        name: &str,
        config_json: &str,
        languages: &[String],
        limits: &PluginLimits,
        caps: &Capabilities,
        services: Arc<dyn HostServices>,
    ) -> Result<RouterPlugin> {
        let sandbox = Sandbox::new(name, limits, caps, services)?;
        if languages.is_empty() {
            return Err(sandbox.error("a router needs at least one language"));
        }
        let component = sandbox.rt.load(path, name, limits)?;
        check_world(&component, &sandbox.rt.engine, World::Router, name)?;
        let linker = sandbox.linker()?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            sandbox.error(format!("cannot be linked: {e:#} (built against another plugin ABI?)"))
        })?;
        let pre = RouterPre::new(pre).map_err(|e| {
            sandbox.error(format!("its exports do not match the babelrl:plugin@0.1.0 router world: {e:#}"))
        })?;
        let mut router = RouterPlugin {
            sandbox,
            pre,
            config_json: config_json.to_string(),
            languages: languages.to_vec(),
            last_state: None,
            live: None,
            restarts: 0,
        };
        router.start()?;
        Ok(router)
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.sandbox.name
    }

    /// The languages it routes between.
    pub fn languages(&self) -> &[String] {
        &self.languages
    }

    /// How many times the router has been re-instantiated after a failed call.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Instantiates, configures and (when there is one) reloads the last known state.
    fn start(&mut self) -> Result<()> {
        let mut store = self.sandbox.new_store();
        let bindings = self.sandbox.call(&mut store, "instantiation", |s| self.pre.instantiate(s))?;
        let (config, languages) = (&self.config_json, &self.languages);
        let configured =
            self.sandbox.call(&mut store, "configure", |s| bindings.call_configure(s, config, languages))?;
        if let Err(message) = configured {
            check_output(&self.sandbox, "configure", message.len())?;
            return Err(self
                .sandbox
                .error(format!("configure returned an error: {}", guest_message(&message))));
        }
        if let Some(state) = &self.last_state {
            let loaded =
                self.sandbox.call(&mut store, "load-state", |s| bindings.call_load_state(s, state))?;
            if let Err(message) = loaded {
                return Err(self.sandbox.error(format!(
                    "refused its own last state after a restart: {}",
                    guest_message(&message)
                )));
            }
        }
        self.live = Some(Live { store, bindings });
        Ok(())
    }

    /// Runs one call on a live instance (starting one if needed); drops the instance on failure.
    fn with_live<R>(
        &mut self,
        what: &str,
        f: impl FnOnce(&Router, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if self.live.is_none() {
            self.restarts += 1;
            self.start()?;
        }
        let live = self.live.as_mut().expect("started above");
        let out = self.sandbox.call(&mut live.store, what, |s| f(&live.bindings, s));
        if out.is_err() {
            self.live = None;
        }
        out
    }

    /// The `request.k` languages to roll the question out in. Each must be one of [`Self::languages`].
    pub fn choose(&mut self, request: &ChooseRequest) -> Result<Vec<String>> {
        let chosen = match self.with_live("choose", |b, s| b.call_choose(s, request))? {
            Ok(c) => c,
            Err(message) => {
                check_output(&self.sandbox, "choose", message.len())?;
                return Err(self
                    .sandbox
                    .error(format!("choose returned an error: {}", guest_message(&message))));
            }
        };
        check_output(&self.sandbox, "choose", chosen.iter().map(|l| l.len() + 8).sum())?;
        if chosen.len() != request.k as usize {
            return Err(self.sandbox.error(format!(
                "choose returned {} languages for k = {} (question \"{}\")",
                chosen.len(),
                request.k,
                sanitize(&request.question_id)
            )));
        }
        if let Some((i, bad)) = chosen.iter().enumerate().find(|(_, l)| !self.languages.contains(l)) {
            return Err(self.sandbox.error(format!(
                "choose returned language \"{}\" at position {i}, which is not one of this run's languages ({})",
                guest_message(bad),
                sanitize(&self.languages.join(", "))
            )));
        }
        Ok(chosen)
    }

    /// Feeds back the rewards of one step.
    pub fn update(&mut self, step: u64, feedback: &[Feedback]) -> Result<()> {
        match self.with_live("update", |b, s| b.call_update(s, step, feedback))? {
            Ok(()) => Ok(()),
            Err(message) => {
                check_output(&self.sandbox, "update", message.len())?;
                Err(self.sandbox.error(format!("update returned an error: {}", guest_message(&message))))
            }
        }
    }

    /// The router's state, for a checkpoint.
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let state = self.with_live("save-state", |b, s| b.call_save_state(s))?;
        check_output(&self.sandbox, "save-state", state.len())?;
        self.last_state = Some(state.clone());
        Ok(state)
    }

    /// Restores a state from a checkpoint. If the router refuses it (or traps), it is re-instantiated
    /// with its previous state, so a bad checkpoint never leaves it half-loaded.
    pub fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let refused = match self.with_live("load-state", |b, s| b.call_load_state(s, state)) {
            Ok(Ok(())) => {
                self.last_state = Some(state.to_vec());
                return Ok(());
            }
            Ok(Err(message)) => {
                check_output(&self.sandbox, "load-state", message.len())?;
                self.sandbox.error(format!(
                    "load-state refused a state of {} bytes: {}",
                    state.len(),
                    guest_message(&message)
                ))
            }
            Err(e) => e,
        };
        self.live = None;
        Err(refused)
    }
}

impl std::fmt::Debug for RouterPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterPlugin")
            .field("name", &self.sandbox.name)
            .field("restarts", &self.restarts)
            .finish()
    }
}
