//! The shared wasmtime engines (one with fuel metering, one without), the epoch ticker thread of each,
//! and loading components: format checks, world checks and the on-disk cache of compiled code.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::cache;
use super::limits::PluginLimits;
use super::precheck::{self, CompileLimits};
use crate::{Error, Result};

/// Length of one epoch tick: the resolution of plugin deadlines. The epoch counts ticks of wall time
/// since the ticker started, not wake-ups of the ticker (see [`spawn_ticker`]).
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// One wasmtime engine with its compiled-component memo. Engines live for the whole process.
pub(crate) struct Runtime {
    pub(crate) engine: Engine,
    fuel: bool,
    loaded: Mutex<HashMap<[u8; 32], Component>>,
}

static PLAIN: OnceLock<Runtime> = OnceLock::new();
static FUELED: OnceLock<Runtime> = OnceLock::new();

/// The engine for plugins with (`fuel = true`) or without fuel metering; created, with its ticker
/// thread, on first use.
pub(crate) fn runtime(fuel: bool) -> Result<&'static Runtime> {
    let cell = if fuel { &FUELED } else { &PLAIN };
    if let Some(rt) = cell.get() {
        return Ok(rt);
    }
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true).consume_fuel(fuel);
    let engine = Engine::new(&config)
        .map_err(|e| Error::Plugin { plugin: "(engine)".into(), message: format!("wasmtime: {e}") })?;
    let rt = cell.get_or_init(|| {
        spawn_ticker(&engine);
        Runtime { engine, fuel, loaded: Mutex::new(HashMap::new()) }
    });
    Ok(rt)
}

/// Keeps the engine's epoch equal to the number of [`TICK`]s elapsed since the thread started, waking
/// about every tick for the life of the process (one thread per engine). A wake-up that comes late (a
/// loaded machine, timer slack) advances the epoch by every tick it missed: counting wake-ups instead
/// would make a deadline of N ticks last N late wake-ups, far past N milliseconds.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("babelrl-plugin-epoch".into()).spawn(move || {
        let start = Instant::now();
        let mut epoch: u128 = 0;
        while let Some(engine) = weak.upgrade() {
            let due = start.elapsed().as_nanos() / TICK.as_nanos();
            while epoch < due {
                engine.increment_epoch();
                epoch += 1;
            }
            drop(engine);
            std::thread::sleep(TICK);
        }
    });
    if let Err(e) = spawned {
        // Without a ticker deadlines never fire; say so loudly rather than failing every load.
        log::error!("could not start the plugin epoch thread, plugin deadlines are not enforced: {e}");
    }
}

/// Which world a component exports, judged by its export names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `babelrl:plugin/reward`: `configure` and `score`.
    Reward,
    /// `babelrl:plugin/router`: `configure`, `choose`, `update`, `save-state`, `load-state`.
    Router,
}

impl World {
    /// The world's name in the WIT file.
    pub fn name(self) -> &'static str {
        match self {
            World::Reward => "reward",
            World::Router => "router",
        }
    }

    /// The functions a component of this world must export.
    pub fn exports(self) -> &'static [&'static str] {
        match self {
            World::Reward => &["configure", "score"],
            World::Router => &["configure", "choose", "update", "save-state", "load-state"],
        }
    }

    fn matches(self, names: &[String]) -> bool {
        self.exports().iter().all(|e| names.iter().any(|n| n == e))
    }
}

/// The names a component exports, sorted.
pub(crate) fn export_names(component: &Component, engine: &Engine) -> Vec<String> {
    let mut names: Vec<String> =
        component.component_type().exports(engine).map(|(n, _)| n.to_string()).collect();
    names.sort();
    names
}

/// The world the component at `path` implements (`None`: neither), and all its export names. Fails,
/// naming `path`, when the file is unreadable, not a valid component, or past `limits`'s
/// `max_component_mib` or the structural limits checked before compiling.
pub fn inspect(path: &Path, limits: &PluginLimits) -> Result<(Option<World>, Vec<String>)> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    limits.validate().map_err(|message| Error::Plugin { plugin: name.clone(), message })?;
    let rt = runtime(false)?;
    let component = rt.load(path, &name, limits)?;
    let names = export_names(&component, &rt.engine);
    Ok(([World::Reward, World::Router].into_iter().find(|w| w.matches(&names)), names))
}

/// Refuses a component that does not export `want`'s functions, naming what it does export.
pub(crate) fn check_world(component: &Component, engine: &Engine, want: World, plugin: &str) -> Result<()> {
    let names = export_names(component, engine);
    if want.matches(&names) {
        return Ok(());
    }
    let listed = if names.is_empty() { "nothing".to_string() } else { names.join(", ") };
    let other = [World::Reward, World::Router].into_iter().find(|w| *w != want && w.matches(&names));
    let message = match other {
        Some(w) => format!(
            "wrong world: exports {listed} (the `{}` world), not the `{}` world ({}); load it as a {} plugin",
            w.name(),
            want.name(),
            want.exports().join(", "),
            w.name()
        ),
        None => format!(
            "wrong world: exports {listed}, but a {} plugin must export {}",
            want.name(),
            want.exports().join(", ")
        ),
    };
    Err(Error::Plugin { plugin: plugin.into(), message })
}

impl Runtime {
    /// Reads, checks and compiles the component at `path`, using the in-process memo and the on-disk
    /// cache (`$BABELRL_CACHE/plugins`, see [`super::cache`]) so a component is compiled once per engine
    /// build. A file over `max_component_mib` is refused before it is read; one past the structural
    /// [`CompileLimits`] before it is compiled.
    pub(crate) fn load(&self, path: &Path, plugin: &str, limits: &PluginLimits) -> Result<Component> {
        let refuse = |message: String| Error::Plugin { plugin: plugin.into(), message };
        let cap = limits.max_component_bytes();
        let too_big = |size: u64| {
            refuse(format!(
                "{} is {size} bytes, over the cap of {} MiB on component files (max_component_mib)",
                path.display(),
                limits.max_component_mib
            ))
        };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if size > cap {
            return Err(too_big(size));
        }
        // Read at most one byte past the cap, in case the file grows between the two looks.
        let mut bytes = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(file, cap + 1), &mut bytes)
            .map_err(|e| Error::io(path, e))?;
        if bytes.len() as u64 > cap {
            return Err(too_big(bytes.len() as u64));
        }
        self.load_bytes(&bytes, path, plugin)
    }

    /// [`Runtime::load`] on bytes already in memory (`path` is only used in messages).
    pub(crate) fn load_bytes(&self, bytes: &[u8], path: &Path, plugin: &str) -> Result<Component> {
        let refuse = |message: String| Error::Plugin { plugin: plugin.into(), message };
        if !bytes.starts_with(b"\0asm") {
            return Err(refuse(format!(
                "{} is not a component: not WebAssembly at all (no \\0asm header)",
                path.display()
            )));
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(refuse(format!(
                "{} is not a component: it is a core WebAssembly module; build for wasm32-wasip2 \
                 (or wrap it with `wasm-tools component new`)",
                path.display()
            )));
        }
        // A component's header is the magic, version 0x0d and layer 1.
        if bytes.get(4..8) != Some(&[0x0d, 0, 1, 0]) {
            return Err(refuse(format!(
                "{} is not a component: unknown WebAssembly version/layer",
                path.display()
            )));
        }
        let key = self.key(bytes);
        if let Some(c) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let component = match cache::read(&self.engine, &key) {
            Some(c) => c,
            None => {
                precheck::check(bytes, &CompileLimits::DEFAULT).map_err(|why| {
                    refuse(match why.strip_prefix("malformed: ") {
                        Some(e) => format!("{} is not a valid component: {e}", path.display()),
                        None => format!("{} refused: {why}", path.display()),
                    })
                })?;
                let c = Component::new(&self.engine, bytes)
                    .map_err(|e| refuse(format!("{} is not a valid component: {e:#}", path.display())))?;
                cache::write(&key, &c);
                c
            }
        };
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(key, component.clone());
        Ok(component)
    }

    /// sha256 of the wasm bytes, the engine's version, wasmtime's compatibility hash and the flavour.
    fn key(&self, bytes: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(bytes);
        h.update(concat!("\0babelrl-", env!("CARGO_PKG_VERSION")).as_bytes());
        // The engine's compatibility hash covers the wasmtime version and every codegen setting (fuel
        // metering included), exactly what decides whether compiled code can be reused.
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut compat);
        h.update(b"\0wasmtime-compat-");
        h.update(std::hash::Hasher::finish(&compat).to_le_bytes());
        h.update(if self.fuel { &b"\0fuel"[..] } else { &b"\0nofuel"[..] });
        h.finalize().into()
    }
}

/// Shared, cheaply cloned plugin name used in every error.
pub(crate) type Name = Arc<str>;
