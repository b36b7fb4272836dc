//! One plugin's sandbox: the store data (WASI context with no ambient capabilities, memory limiter,
//! per-call counters, captured output), the host functions it imports, and the per-call guard that
//! arms the deadline and fuel, runs a call, and turns whatever went wrong into a message naming it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::reward::babelrl::plugin::{host, types};
use super::capture::{Captured, LogPipe, Stream};
use super::limiter::{MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, MemoryCap};
use super::limits::{Capabilities, PluginLimits};
use super::runtime::{Name, Runtime, TICK};
use super::services::HostServices;
use super::text::sanitize;
use crate::{Error, Result};

/// Everything a plugin's store holds.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    name: Name,
    services: Arc<dyn HostServices>,
    limits: PluginLimits,
    log_to_log: bool,
    captured: Arc<Mutex<Captured>>,
    // Per-call bookkeeping, reset by `begin_call`.
    started: Instant,
    host_time: Duration,
    host_calls: u32,
    texts: u64,
    /// A host-enforced limit the plugin broke (the host function trapped with this message).
    violation: Option<String>,
    /// Set by the epoch callback when the deadline passed: the plugin's own time in the call.
    timed_out: Option<Duration>,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl PluginState {
    fn begin_call(&mut self) {
        self.started = Instant::now();
        self.host_time = Duration::ZERO;
        self.host_calls = 0;
        self.texts = 0;
        self.violation = None;
        self.timed_out = None;
        self.memory.refused = None;
        self.captured.lock().unwrap_or_else(|p| p.into_inner()).reset();
    }

    /// The plugin's own time so far in this call (wall time minus time inside host services).
    fn guest_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.host_time)
    }

    /// Counts one host call; traps the guest once it passes `max_host_calls`.
    fn count_call(&mut self, func: &str) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.host_calls > self.limits.max_host_calls {
            let message = format!(
                "called `{func}` (and other host functions) more than {} times in one call (max_host_calls)",
                self.limits.max_host_calls
            );
            self.violation = Some(message.clone());
            return Err(wasmtime::Error::msg(message));
        }
        Ok(())
    }

    /// Counts texts sent to host services; traps the guest once it passes `max_embed_texts`.
    fn count_texts(&mut self, func: &str, n: usize) -> wasmtime::Result<()> {
        self.texts += n as u64;
        if self.texts > u64::from(self.limits.max_embed_texts) {
            let message = format!(
                "sent more than {} texts to `{func}` in one call (max_embed_texts; this call asked for {n})",
                self.limits.max_embed_texts
            );
            self.violation = Some(message.clone());
            return Err(wasmtime::Error::msg(message));
        }
        Ok(())
    }

    /// Sends this call's captured stdout/stderr to the log, when the plugin may log.
    fn flush_output(&mut self) {
        if !self.log_to_log {
            return;
        }
        let c = self.captured.lock().unwrap_or_else(|p| p.into_inner());
        let lines = |stream: &str, bytes: &[u8]| {
            for line in String::from_utf8_lossy(bytes).lines().filter(|l| !l.is_empty()) {
                log::info!(target: "babelrl::plugin", "plugin `{}` {stream}: {}", self.name, sanitize(line));
            }
        };
        for (stream, captured) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
            let (head, skipped, tail) = captured.parts();
            if skipped == 0 {
                lines(stream, &[head, &tail].concat());
                continue;
            }
            lines(stream, head);
            log::warn!(
                target: "babelrl::plugin",
                "plugin `{}` {stream}: ... {skipped} bytes dropped (max_log_bytes = {}), the last {} bytes follow",
                self.name,
                self.limits.max_log_bytes,
                tail.len()
            );
            lines(stream, &tail);
        }
        if c.log_dropped > 0 {
            log::warn!(
                target: "babelrl::plugin",
                "plugin `{}`: {} bytes of log messages dropped (max_log_bytes = {})",
                self.name,
                c.log_dropped,
                self.limits.max_log_bytes
            );
        }
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn embed(&mut self, texts: Vec<String>) -> wasmtime::Result<std::result::Result<Vec<Vec<f32>>, String>> {
        self.count_call("embed")?;
        self.count_texts("embed", texts.len())?;
        let t0 = Instant::now();
        let out = self.services.embed(&texts);
        self.host_time += t0.elapsed();
        Ok(out.and_then(|v| {
            if v.len() == texts.len() {
                Ok(v)
            } else {
                Err(format!("host error: encoder returned {} vectors for {} texts", v.len(), texts.len()))
            }
        }))
    }

    fn reward_model_score(
        &mut self,
        prompts: Vec<String>,
        completions: Vec<String>,
    ) -> wasmtime::Result<std::result::Result<Vec<f32>, String>> {
        self.count_call("reward-model-score")?;
        self.count_texts("reward-model-score", prompts.len().max(completions.len()))?;
        if prompts.len() != completions.len() {
            return Ok(Err(format!(
                "reward-model-score needs as many prompts as completions (got {} and {})",
                prompts.len(),
                completions.len()
            )));
        }
        let t0 = Instant::now();
        let out = self.services.reward_model_score(&prompts, &completions);
        self.host_time += t0.elapsed();
        Ok(out.and_then(|v| {
            if v.len() == prompts.len() {
                Ok(v)
            } else {
                Err(format!(
                    "host error: reward model returned {} scores for {} pairs",
                    v.len(),
                    prompts.len()
                ))
            }
        }))
    }

    fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        self.count_call("log")?;
        let keep = self.captured.lock().unwrap_or_else(|p| p.into_inner()).admit_log(message.len());
        if keep == 0 {
            return Ok(());
        }
        let mut end = keep;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let level = match level {
            types::LogLevel::Error => log::Level::Error,
            types::LogLevel::Warn => log::Level::Warn,
            types::LogLevel::Info => log::Level::Info,
            types::LogLevel::Debug => log::Level::Debug,
            types::LogLevel::Trace => log::Level::Trace,
        };
        log::log!(target: "babelrl::plugin", level, "plugin `{}`: {}", self.name, sanitize(&message[..end]));
        Ok(())
    }
}

/// Frozen clock for plugins without the `clock` capability: always the Unix epoch / instant 0.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The per-plugin settings every store and call of that plugin uses.
pub(crate) struct Sandbox {
    pub(crate) name: Name,
    pub(crate) limits: PluginLimits,
    pub(crate) caps: Capabilities,
    pub(crate) services: Arc<dyn HostServices>,
    pub(crate) rt: &'static Runtime,
}

impl Sandbox {
    /// Checks the limits and picks the engine (fuel metering or not).
    pub(crate) fn new(
        name: &str,
        limits: &PluginLimits,
        caps: &Capabilities,
        services: Arc<dyn HostServices>,
    ) -> Result<Sandbox> {
        limits.validate().map_err(|message| Error::Plugin {
            plugin: name.into(),
            message: format!("bad limits: {message}"),
        })?;
        let rt = super::runtime::runtime(limits.fuel.is_some())?;
        // The name may come from a file name the plugin's author chose: it appears in every log line.
        let name = sanitize(name).into();
        Ok(Sandbox { name, limits: limits.clone(), caps: caps.clone(), services, rt })
    }

    /// An error naming this plugin.
    pub(crate) fn error(&self, message: impl Into<String>) -> Error {
        Error::Plugin { plugin: self.name.to_string(), message: message.into() }
    }

    /// A linker with the host interface and WASI (sleeping refused) for this runtime.
    pub(crate) fn linker(&self) -> Result<Linker<PluginState>> {
        let mut linker: Linker<PluginState> = Linker::new(&self.rt.engine);
        let setup = (|| -> wasmtime::Result<()> {
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
            // Both worlds import the same `host` interface: linking it through `reward` serves routers too.
            super::bindings::reward::Reward::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
            // A sleeping guest blocks the host thread where no epoch can interrupt it: refuse sleeps.
            linker.allow_shadowing(true);
            let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
            for func in ["subscribe-duration", "subscribe-instant"] {
                clock.func_new(func, move |mut store, _, _, _| {
                    let message = format!(
                        "tried to sleep (wasi:clocks/monotonic-clock.{func}), which plugins may not do"
                    );
                    store.data_mut().violation = Some(message.clone());
                    Err(wasmtime::Error::msg(message))
                })?;
            }
            linker.allow_shadowing(false);
            Ok(())
        })();
        setup.map_err(|e| self.error(format!("could not set up the WASI linker: {e:#}")))?;
        Ok(linker)
    }

    /// A fresh store: empty WASI context plus only the granted capabilities.
    pub(crate) fn new_store(&self) -> Store<PluginState> {
        let captured = Arc::new(Mutex::new(Captured {
            cap: usize::try_from(self.limits.max_log_bytes).unwrap_or(usize::MAX),
            ..Captured::default()
        }));
        let mut b = WasiCtxBuilder::new();
        b.stdout(LogPipe { shared: captured.clone(), stream: Stream::Stdout });
        b.stderr(LogPipe { shared: captured.clone(), stream: Stream::Stderr });
        b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        b.max_random_size(1 << 20);
        for name in &self.caps.env {
            if let Ok(value) = std::env::var(name) {
                b.env(name, value);
            }
        }
        if !self.caps.clock {
            b.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        if !self.caps.random {
            b.secure_random(wasmtime_wasi::Deterministic::new(vec![0]));
            b.insecure_random(wasmtime_wasi::Deterministic::new(vec![0]));
            b.insecure_random_seed(0);
        }
        let state = PluginState {
            wasi: b.build(),
            table: ResourceTable::new(),
            memory: MemoryCap::new(self.limits.memory_bytes()),
            name: self.name.clone(),
            services: self.services.clone(),
            limits: self.limits.clone(),
            log_to_log: self.caps.stdout_log,
            captured,
            started: Instant::now(),
            host_time: Duration::ZERO,
            host_calls: 0,
            texts: 0,
            violation: None,
            timed_out: None,
        };
        let mut store = Store::new(&self.rt.engine, state);
        store.limiter(|s| &mut s.memory);
        let deadline = Duration::from_millis(self.limits.deadline_ms);
        store.epoch_deadline_callback(move |mut ctx| {
            let s = ctx.data_mut();
            let used = s.guest_time();
            if used < deadline {
                return Ok(UpdateDeadline::Continue(ticks(deadline - used)));
            }
            s.timed_out = Some(used);
            Ok(UpdateDeadline::Interrupt)
        });
        store
    }

    /// Runs `f` (one call into the plugin) under this plugin's deadline, fuel and counters. On failure
    /// the message says what the plugin did; the caller must then drop the instance (it may be poisoned).
    pub(crate) fn call<R>(
        &self,
        store: &mut Store<PluginState>,
        what: &str,
        f: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        store.data_mut().begin_call();
        store.set_epoch_deadline(ticks(Duration::from_millis(self.limits.deadline_ms)));
        if let Some(fuel) = self.limits.fuel {
            store.set_fuel(fuel).map_err(|e| self.error(format!("could not set fuel: {e}")))?;
        }
        let out = f(store);
        store.data_mut().flush_output();
        out.map_err(|e| self.error(format!("{what}: {}", self.describe(store.data(), &e))))
    }

    /// What went wrong in a failed call, most specific cause first.
    fn describe(&self, s: &PluginState, e: &wasmtime::Error) -> String {
        if let Some(v) = &s.violation {
            return v.clone();
        }
        if let Some(used) = s.timed_out {
            return format!(
                "timed out after {} ms (deadline_ms = {})",
                used.as_millis(),
                self.limits.deadline_ms
            );
        }
        let trap = e.downcast_ref::<Trap>();
        let what = match trap {
            Some(Trap::OutOfFuel) => {
                return format!("ran out of fuel ({} units per call)", self.limits.fuel.unwrap_or(0));
            }
            Some(Trap::StackOverflow) => "call stack exhausted (runaway recursion?)".to_string(),
            Some(t) => t.to_string(),
            None => format!("{e:#}"),
        };
        let what = sanitize(&what);
        // The last of stderr: kept even when the guest spent max_log_bytes before it panicked.
        let stderr = {
            let c = s.captured.lock().unwrap_or_else(|p| p.into_inner());
            c.stderr
                .last(400)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(sanitize)
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let mut message = match s.memory.refusal(self.limits.memory_mib) {
            Some(refusal) if trap.is_some() => format!("{refusal}, then trapped: {what}"),
            Some(refusal) => format!("{refusal}, then failed: {what}"),
            None if trap.is_some() => format!("trapped: {what}"),
            None if what.contains("resource limit exceeded") => format!(
                "failed: {what} (a plugin may create at most {MAX_INSTANCES} instances, {MAX_TABLES} tables \
                 and {MAX_MEMORIES} memories)"
            ),
            None => format!("failed: {what}"),
        };
        if !stderr.is_empty() {
            message.push_str(&format!(" (stderr: {stderr})"));
        }
        message
    }
}

/// Epoch ticks covering `d` (at least one, rounded up).
fn ticks(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1)
}

/// The size of a call's output as the host counts it against `max_output_bytes`.
pub(crate) fn check_output(sandbox: &Sandbox, what: &str, bytes: usize) -> Result<()> {
    if bytes as u64 > sandbox.limits.max_output_bytes {
        return Err(sandbox.error(format!(
            "{what}: output of {bytes} bytes exceeds the cap of {} bytes (max_output_bytes)",
            sandbox.limits.max_output_bytes
        )));
    }
    Ok(())
}

/// A guest-returned error message, shortened so a hostile plugin cannot flood the error path, and with
/// control characters escaped so it cannot act on a terminal.
pub(crate) fn guest_message(message: &str) -> String {
    const MAX: usize = 2_000;
    if message.len() <= MAX {
        return sanitize(message).into_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", sanitize(&message[..end]), message.len())
}
